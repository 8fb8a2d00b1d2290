// Package cliflags parses command lines whose flags may come before or
// after the positional arguments, like Heptapod's argparse-based commands.
package cliflags

import "flag"

// Parse parses args with fs, allowing flags after positional arguments,
// and returns the positional arguments in order.
func Parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) > 0 {
			pos = append(pos, args[0])
			args = args[1:]
		}
	}
	return pos, nil
}

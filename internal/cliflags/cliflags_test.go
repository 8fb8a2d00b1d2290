package cliflags

import (
	"flag"
	"io"
	"testing"
)

func TestParseInterleaved(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	n := fs.Int("n", 0, "")
	v := fs.Bool("v", false, "")
	pos, err := Parse(fs, []string{"-n", "2", "a", "-v", "b"})
	if err != nil || *n != 2 || !*v || len(pos) != 2 || pos[0] != "a" || pos[1] != "b" {
		t.Fatalf("%v %d %v %v", pos, *n, *v, err)
	}
	if _, err := Parse(fs, []string{"a", "-bogus"}); err == nil {
		t.Fatal("unknown flag accepted")
	}
}

package config

import (
	"regexp"
	"strings"
)

// runnerLocator finds the line of a key inside the i-th [[runners]] entry by
// reading the text: toml's metadata keeps one position per dotted key, so
// every [[runners]] entry would report the line of the last one.
type runnerLocator struct {
	lines  []string
	starts []int // 0-based line index of each [[runners]] header
}

var (
	runnersHeader = regexp.MustCompile(`^\s*\[\[\s*runners\s*\]\]`)
	anyHeader     = regexp.MustCompile(`^\s*\[\[?\s*([^\]]+?)\s*\]\]?`)
)

func newRunnerLocator(data string) *runnerLocator {
	l := &runnerLocator{lines: strings.Split(data, "\n")}
	for i, line := range l.lines {
		if runnersHeader.MatchString(line) {
			l.starts = append(l.starts, i)
		}
	}
	return l
}

// line returns the 1-based line of sub-table path (e.g. ["local_docker","host"])
// within runners entry i, or 0.
func (l *runnerLocator) line(i int, path []string) int {
	if l == nil || i >= len(l.starts) || len(path) == 0 {
		return 0
	}
	end := len(l.lines)
	if i+1 < len(l.starts) {
		end = l.starts[i+1]
	}
	table := "runners"
	want := "runners"
	if len(path) > 1 {
		want += "." + strings.Join(path[:len(path)-1], ".")
	}
	key := path[len(path)-1]
	keyRe := regexp.MustCompile(`^\s*"?` + regexp.QuoteMeta(key) + `"?\s*=`)
	for n := l.starts[i] + 1; n < end; n++ {
		line := l.lines[n]
		if m := anyHeader.FindStringSubmatch(line); m != nil {
			table = strings.ReplaceAll(m[1], " ", "")
			if table == want+"."+key {
				return n + 1 // the key is a sub-table: point at its header
			}
			continue
		}
		if table == want && keyRe.MatchString(line) {
			return n + 1
		}
	}
	return 0
}

var runnerKeyRe = regexp.MustCompile(`^runners\[(\d+)\]\.(.+)$`)

// firstTable is the 1-based line of the first table header [name] or
// [name.…], or 0.
func (l *runnerLocator) firstTable(name string) int {
	re := regexp.MustCompile(`^\s*\[\s*` + regexp.QuoteMeta(name) + `\s*[.\]]`)
	for n, line := range l.lines {
		if re.MatchString(line) {
			return n + 1
		}
	}
	return 0
}

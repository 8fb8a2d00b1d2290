package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/internal/atomicfile"
)

// runnerSection is what registration writes for one runner.
type runnerSection struct {
	Name            string
	URL             string
	ID              int64
	Token           string
	TokenObtainedAt time.Time
	TokenExpiresAt  *time.Time
	Executor        string
	Limit           int
	// Executor keys, as [runners.<table>] key → value, or top-level
	// runner keys (cc_*) when table is "".
	Keys   []kv
	Tables map[string][]kv
}

type kv struct {
	key string
	val any
}

// tomlValue renders a string, bool, int or []string as TOML.
func tomlValue(v any) string {
	switch x := v.(type) {
	case string:
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		enc.Encode(x) // JSON string escapes are valid TOML basic-string escapes
		return strings.TrimSpace(b.String())
	case bool:
		return fmt.Sprint(x)
	case int, int64:
		return fmt.Sprint(x)
	case []string:
		parts := make([]string, len(x))
		for i, s := range x {
			parts[i] = tomlValue(s)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	panic(fmt.Sprintf("unsupported TOML value %T", v))
}

func (r runnerSection) render() []byte {
	var b bytes.Buffer
	line := func(indent, k string, v any) { fmt.Fprintf(&b, "%s%s = %s\n", indent, k, tomlValue(v)) }
	b.WriteString("[[runners]]\n")
	line("  ", "name", r.Name)
	line("  ", "url", r.URL)
	if r.ID > 0 {
		line("  ", "id", r.ID)
	}
	line("  ", "token", r.Token)
	fmt.Fprintf(&b, "  token_obtained_at = %s\n", r.TokenObtainedAt.UTC().Format(time.RFC3339))
	if r.TokenExpiresAt != nil {
		fmt.Fprintf(&b, "  token_expires_at = %s\n", r.TokenExpiresAt.UTC().Format(time.RFC3339))
	}
	line("  ", "executor", r.Executor)
	if r.Limit > 0 {
		line("  ", "limit", r.Limit)
	}
	for _, p := range r.Keys {
		line("  ", p.key, p.val)
	}
	tables := make([]string, 0, len(r.Tables))
	for t := range r.Tables {
		tables = append(tables, t)
	}
	sort.Strings(tables)
	for _, t := range tables {
		fmt.Fprintf(&b, "  [runners.%s]\n", t)
		for _, p := range r.Tables[t] {
			line("    ", p.key, p.val)
		}
	}
	return b.Bytes()
}

// newFile is the content of a configuration file that does not exist yet.
func newFile(concurrent int, stateFile string, r runnerSection) []byte {
	var b bytes.Buffer
	b.WriteString("# paas-runner configuration, written by paas-runner-register.\n")
	fmt.Fprintf(&b, "concurrent = %d\n", concurrent)
	fmt.Fprintf(&b, "state_file = %s\n", tomlValue(stateFile))
	b.WriteString("\n")
	b.Write(r.render())
	return b.Bytes()
}

// appendRunner returns existing with the runner appended: every byte of
// existing is kept.
func appendRunner(existing []byte, r runnerSection) []byte {
	out := append([]byte(nil), existing...)
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	if len(out) > 0 {
		out = append(out, '\n')
	}
	return append(out, r.render()...)
}

// writeConfig validates data as a configuration and replaces path
// atomically, mode 0600: it holds runner tokens. A file readable by its
// group only (0640 root:<the daemon's group>, systemd's
// ConfigurationDirectory setup) keeps that mode and group, or the daemon
// could no longer read it. Run as root, the file keeps its owner and group
// (the daemon's user, under systemd), and a new file gets those of its
// directory when that is not root's (/etc/paas-runner, made by the
// tmpfiles.d snippet): a root-owned 0600 file is one the daemon cannot
// read. tightened is the old mode when it let others read the file (0
// otherwise), for the caller to say so.
func writeConfig(path string, data []byte) (tightened os.FileMode, err error) {
	if _, err := config.Parse(path, data, config.Options{}); err != nil {
		var es config.Errors
		// a file whose last runner was unregistered is fine
		if !errors.As(err, &es) || len(es) != 1 || !strings.HasPrefix(es[0].Msg, "no [[runners]]") {
			return 0, fmt.Errorf("the resulting configuration would be invalid:\n%w", err)
		}
	}
	perm, uid, gid := os.FileMode(0o600), -1, -1
	root := os.Geteuid() == 0
	if fi, err := os.Stat(path); err == nil {
		st, _ := fi.Sys().(*syscall.Stat_t)
		switch m := fi.Mode().Perm(); {
		case m&0o004 == 0 && m&0o040 != 0:
			perm = 0o640
			if st != nil {
				gid = int(st.Gid)
			}
		case m&0o077 != 0:
			tightened = m
		}
		if root && st != nil {
			uid, gid = int(st.Uid), int(st.Gid)
		}
	} else if dir, err := os.Stat(filepath.Dir(path)); err == nil && root {
		if st, ok := dir.Sys().(*syscall.Stat_t); ok && st.Uid != 0 {
			uid, gid = int(st.Uid), int(st.Gid)
		}
	}
	return tightened, atomicfile.WriteFileOwner(path, data, perm, uid, gid)
}

// modeNote tells that writeConfig made path private.
func modeNote(path string, old os.FileMode) string {
	if old == 0 {
		return ""
	}
	return fmt.Sprintf("Note: %s was mode %04o, readable by others than its owner; it is now 0600, as it holds runner tokens.\n", path, old)
}

var (
	runnersHeaderRe = regexp.MustCompile(`^\s*\[\[\s*runners\s*\]\]\s*(#.*)?$`)
	tableHeaderRe   = regexp.MustCompile(`^\s*\[\[?\s*([A-Za-z0-9_.\-"]+)\s*\]\]?\s*(#.*)?$`)
)

// removeRunner cuts the index-th [[runners]] section out of data: from its
// header to the next header that is not one of its sub-tables. Everything
// else is kept byte for byte.
func removeRunner(data []byte, index int) ([]byte, error) {
	lines := strings.SplitAfter(string(data), "\n")
	start, n := -1, -1
	for i, l := range lines {
		if runnersHeaderRe.MatchString(strings.TrimRight(l, "\r\n")) {
			n++
			if n == index {
				start = i
				break
			}
		}
	}
	if start < 0 {
		return nil, errors.New("runner section not found")
	}
	end := len(lines)
	for i := start + 1; i < len(lines); i++ {
		m := tableHeaderRe.FindStringSubmatch(strings.TrimRight(lines[i], "\r\n"))
		if m == nil {
			continue
		}
		if runnersHeaderRe.MatchString(strings.TrimRight(lines[i], "\r\n")) || !strings.HasPrefix(m[1], "runners.") {
			end = i
			break
		}
	}
	// comments and blank lines at its end introduce what follows: keep them
	for end > start+1 && isBlankOrComment(lines[end-1]) {
		end--
	}
	// drop the blank lines that separated it from what came before; keep
	// one between what came before and what follows
	for start > 0 && strings.TrimSpace(lines[start-1]) == "" {
		start--
	}
	rest := lines[end:]
	for len(rest) > 0 && strings.TrimSpace(rest[0]) == "" {
		rest = rest[1:]
	}
	out := append([]string(nil), lines[:start]...)
	if start > 0 && len(rest) > 0 {
		out = append(out, "\n")
	}
	out = append(out, rest...)
	return []byte(strings.Join(out, "")), nil
}

func isBlankOrComment(l string) bool {
	t := strings.TrimSpace(l)
	return t == "" || strings.HasPrefix(t, "#")
}

// giveToDirOwner gives the files of paths that root owns to the owner of
// dir when that is not root: run as root, registration must not leave in
// the daemon's state directory (/var/lib/paas-runner, owned by its user)
// files the daemon cannot open (systemd does not chown a StateDirectory
// whose top is owned right). Not root, or dir root's, it does nothing.
func giveToDirOwner(dir string, paths []string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	d, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || d.Uid == 0 {
		return nil
	}
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if err != nil {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid == 0 && fi.Mode().IsRegular() {
			if err := os.Chown(p, int(d.Uid), int(d.Gid)); err != nil {
				return err
			}
		}
	}
	return nil
}

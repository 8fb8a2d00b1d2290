package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// Every command the binaries accept, and every flag, is in README.md. The
// commands and flags are read from the code (go/ast): the verb switch of
// run, the flags each verb's function defines, the guard's flag table,
// the sub-verbs compared with pos[0] or switched on, and the same for
// paas-runner-register.

func readmeText(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func parseDir(t *testing.T, dir string) map[string]*ast.FuncDecl {
	t.Helper()
	fset := token.NewFileSet()
	funcs := map[string]*ast.FuncDecl{}
	paths, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			if fn, ok := d.(*ast.FuncDecl); ok && fn.Recv == nil {
				funcs[fn.Name.Name] = fn
			}
		}
	}
	return funcs
}

func stringLit(e ast.Expr) (string, bool) {
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(lit.Value)
	return s, err == nil
}

// verbSwitch returns, for the switch on args[0] in fn, each verb and the
// function its case calls.
func verbSwitch(t *testing.T, fn *ast.FuncDecl) map[string]string {
	t.Helper()
	verbs := map[string]string{}
	ast.Inspect(fn.Body, func(n ast.Node) bool {
		sw, ok := n.(*ast.SwitchStmt)
		if !ok {
			return true
		}
		idx, ok := sw.Tag.(*ast.IndexExpr)
		if !ok {
			return true
		}
		if id, ok := idx.X.(*ast.Ident); !ok || id.Name != "args" {
			return true
		}
		for _, st := range sw.Body.List {
			cc := st.(*ast.CaseClause)
			callee := ""
			ast.Inspect(cc, func(n ast.Node) bool {
				if call, ok := n.(*ast.CallExpr); ok && callee == "" {
					if id, ok := call.Fun.(*ast.Ident); ok {
						callee = id.Name
					}
				}
				return true
			})
			for _, e := range cc.List {
				if s, ok := stringLit(e); ok {
					verbs[s] = callee
				}
			}
		}
		return false
	})
	if len(verbs) == 0 {
		t.Fatalf("found no switch on args[0] in %s", fn.Name.Name)
	}
	return verbs
}

var flagMethods = map[string]bool{"String": true, "Bool": true, "Int": true, "Int64": true, "Float64": true, "Duration": true,
	"StringVar": true, "BoolVar": true, "IntVar": true, "Int64Var": true, "Float64Var": true, "DurationVar": true, "Var": true}

// flagNames are the flags fn defines on a flag.FlagSet: fs.String("name", …)
// and fs.StringVar(&v, "name", …).
func flagNames(fn *ast.FuncDecl) []string {
	var names []string
	ast.Inspect(fn.Body, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok || !flagMethods[sel.Sel.Name] {
			return true
		}
		if id, ok := sel.X.(*ast.Ident); !ok || id.Name != "fs" {
			return true
		}
		arg := 0
		if strings.HasSuffix(sel.Sel.Name, "Var") {
			arg = 1
		}
		if arg < len(call.Args) {
			if s, ok := stringLit(call.Args[arg]); ok {
				names = append(names, s)
			}
		}
		return true
	})
	return names
}

// subVerbs are the literals fn compares pos[0] with (pos[0] == "release").
func subVerbs(fn *ast.FuncDecl) []string {
	var out []string
	ast.Inspect(fn.Body, func(n ast.Node) bool {
		be, ok := n.(*ast.BinaryExpr)
		if !ok || be.Op != token.EQL {
			return true
		}
		if idx, ok := be.X.(*ast.IndexExpr); ok {
			if id, ok := idx.X.(*ast.Ident); ok && id.Name == "pos" {
				if s, ok := stringLit(be.Y); ok {
					out = append(out, s)
				}
			}
		}
		return true
	})
	return out
}

// caseLiterals are the string cases of every switch in fn.
func caseLiterals(fn *ast.FuncDecl) []string {
	var out []string
	ast.Inspect(fn.Body, func(n ast.Node) bool {
		if cc, ok := n.(*ast.CaseClause); ok {
			for _, e := range cc.List {
				if s, ok := stringLit(e); ok {
					out = append(out, s)
				}
			}
		}
		return true
	})
	return out
}

// documentedFlag tells whether README shows flag name (as Go's flag
// package takes it, without dashes) as `--name` or `-n`.
func documentedFlag(readme, name string) bool {
	dash := "--"
	if len(name) == 1 {
		dash = "-"
	}
	return regexp.MustCompile("`[^`]*" + regexp.QuoteMeta(dash+name) + `\b`).MatchString(readme)
}

func TestREADMEDocumentsEveryCommand(t *testing.T) {
	readme := readmeText(t)
	funcs := parseDir(t, ".")
	verbs := verbSwitch(t, funcs["run"])
	for _, want := range []string{"exec-fetched-job", "status", "guard"} {
		if _, ok := verbs[want]; !ok {
			t.Fatalf("the verb switch read from run lacks %q: the AST read is broken (%v)", want, verbs)
		}
	}
	var names []string
	for v := range verbs {
		names = append(names, v)
	}
	sort.Strings(names)
	for _, v := range names {
		if !regexp.MustCompile(`paas-runner ` + regexp.QuoteMeta(v) + `\b`).MatchString(readme) {
			t.Errorf("README.md does not show the command `paas-runner %s`", v)
		}
		fn := funcs[verbs[v]]
		if fn == nil {
			t.Errorf("verb %s calls %q, which is not a function of this package", v, verbs[v])
			continue
		}
		for _, f := range flagNames(fn) {
			if !documentedFlag(readme, f) {
				t.Errorf("README.md does not document `paas-runner %s` flag --%s", v, f)
			}
		}
		for _, s := range subVerbs(fn) {
			if !regexp.MustCompile(`paas-runner ` + regexp.QuoteMeta(v) + ` ` + regexp.QuoteMeta(s) + `\b`).MatchString(readme) {
				t.Errorf("README.md does not show `paas-runner %s %s`", v, s)
			}
		}
	}
	// the daemon's own flags
	flags := flagNames(funcs["parseArgs"])
	if len(flags) < 5 {
		t.Fatalf("found only %v as parseArgs' flags: the AST read is broken", flags)
	}
	for _, f := range flags {
		if !documentedFlag(readme, f) {
			t.Errorf("README.md does not document the flag --%s of `paas-runner CONFIG`", f)
		}
	}
	// the guard's argparse-style flags
	for _, f := range guardFlags {
		for _, n := range f.names {
			if !strings.Contains(readme, "`"+n+"`") {
				t.Errorf("README.md does not document `paas-runner guard` flag %s", n)
			}
		}
	}
	// pool's operations are guard.PoolOp's
	gfuncs := parseDir(t, filepath.Join("..", "..", "guard"))
	ops := caseLiterals(gfuncs["PoolOp"])
	if len(ops) < 4 {
		t.Fatalf("found only %v as guard.PoolOp's operations", ops)
	}
	for _, op := range ops {
		if !regexp.MustCompile("`paas-runner pool [^`]*\\b" + regexp.QuoteMeta(op) + `\b`).MatchString(readme) {
			t.Errorf("README.md does not show `paas-runner pool %s`", op)
		}
	}
	// Heptapod's entry point, answered under the name gitlab-runner
	if !strings.Contains(readme, "gitlab-runner exec-fetched-job") {
		t.Error("README.md does not say that paas-runner answers `gitlab-runner exec-fetched-job`")
	}
}

func TestREADMEDocumentsEveryRegisterCommand(t *testing.T) {
	readme := readmeText(t)
	funcs := parseDir(t, filepath.Join("..", "paas-runner-register"))
	fn := funcs["run"]
	if fn == nil {
		t.Fatal("paas-runner-register has no func run")
	}
	verbs := verbSwitch(t, fn)
	for v := range verbs {
		if strings.HasPrefix(v, "-") {
			if !documentedFlag(readme, strings.TrimLeft(v, "-")) && !strings.Contains(readme, "`"+v+"`") {
				t.Errorf("README.md does not document `paas-runner-register %s`", v)
			}
			continue
		}
		if !regexp.MustCompile(`paas-runner-register ` + regexp.QuoteMeta(v) + `\b`).MatchString(readme) {
			t.Errorf("README.md does not show `paas-runner-register %s`", v)
		}
	}
	var flags []string
	for _, f := range funcs {
		flags = append(flags, flagNames(f)...)
	}
	if len(flags) < 10 {
		t.Fatalf("found only %v as paas-runner-register's flags", flags)
	}
	for _, f := range flags {
		if !documentedFlag(readme, f) {
			t.Errorf("README.md does not document paas-runner-register's flag --%s", f)
		}
	}
}

// reloadRow is a row of README's configuration reference: its keys, in
// the TOML table of its section, and its reload cell.
type reloadRow struct {
	table  string
	keys   []string
	reload string
	line   int
}

var (
	backtickRe  = regexp.MustCompile("`([^`]+)`")
	tomlTableRe = regexp.MustCompile(`^\[\[?([A-Za-z0-9_.-]+)\]\]?$`)
)

func readmeReloadRows(t *testing.T, readme string) []reloadRow {
	t.Helper()
	var rows []reloadRow
	in, table := false, ""
	for i, l := range strings.Split(readme, "\n") {
		switch {
		case l == "## Configuration reference":
			in = true
			continue
		case strings.HasPrefix(l, "## "):
			in = false
		}
		if !in {
			continue
		}
		if h, ok := strings.CutPrefix(l, "### "); ok {
			switch {
			case strings.HasPrefix(h, "Top-level"):
				table = ""
			case strings.Contains(h, "`cc_*`"):
				table = "runners"
			default:
				if m := backtickRe.FindStringSubmatch(h); m != nil && tomlTableRe.MatchString(m[1]) {
					table = tomlTableRe.FindStringSubmatch(m[1])[1]
				}
			}
			continue
		}
		if !strings.HasPrefix(l, "| `") {
			continue
		}
		cells := strings.Split(l, " | ")
		if len(cells) < 5 {
			continue
		}
		r := reloadRow{table: table, reload: strings.TrimSpace(cells[3]), line: i + 1}
		for _, m := range backtickRe.FindAllStringSubmatch(cells[0], -1) {
			k := m[1]
			if tm := tomlTableRe.FindStringSubmatch(k); tm != nil {
				k = strings.TrimPrefix(tm[1], table+".")
			}
			r.keys = append(r.keys, k)
		}
		rows = append(rows, r)
	}
	if len(rows) < 50 {
		t.Fatalf("found only %d rows in README's configuration reference", len(rows))
	}
	return rows
}

// restartNames are the names reload.go logs as needing a restart: the first
// argument of each diff(…) call in fn, and the literals appended to keys.
func restartNames(fn *ast.FuncDecl) []string {
	var out []string
	ast.Inspect(fn.Body, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok || len(call.Args) == 0 {
			return true
		}
		switch f := call.Fun.(type) {
		case *ast.Ident:
			if f.Name == "diff" {
				if s, ok := stringLit(call.Args[0]); ok {
					out = append(out, s)
				}
			}
			if f.Name == "append" && len(call.Args) == 2 {
				if s, ok := stringLit(call.Args[1]); ok {
					out = append(out, s)
				}
			}
		}
		return true
	})
	return out
}

// The reload column agrees with what a reload does: a key reload.go reports
// as needing a restart is documented "restart", and a key documented "live"
// is not one of them.
func TestREADMEReloadColumn(t *testing.T) {
	readme := readmeText(t)
	rows := readmeReloadRows(t, readme)
	funcs := parseDir(t, ".")
	// name as logged → the README rows it covers (table, key; key "" for
	// every row of a table)
	type ref struct{ table, key string }
	covers := map[string][]ref{
		// reload.go logs tls_ca_file; the key is tls-ca-file
		"runners.tls_ca_file":                {{"runners", "tls-ca-file"}},
		"runners.local_docker":               {{"runners", "local_docker"}, {"runners.local_docker", ""}},
		"runners.docker, cache and job keys": {{"runners", "docker"}, {"runners", "cache"}, {"runners.docker", ""}, {"runners.cache", ""}},
		"guards.pools (names and locks)":     {{"guards.pools", "name"}, {"guards.pools", "locks"}},
		"guards.git":                         {{"guards", "git"}, {"guards.git", ""}},
		"quota_computation":                  {{"", "quota_computation"}, {"quota_computation", ""}},
		"runners.cc_*":                       {{"runners", "cc_*"}},
	}
	var restart []ref
	add := func(prefix string, names []string) {
		if len(names) < 2 {
			t.Fatalf("found only %v as restart names in reload.go: the AST read is broken", names)
		}
		for _, n := range names {
			full := prefix + n
			if c, ok := covers[full]; ok {
				restart = append(restart, c...)
				continue
			}
			tb, k := "", full
			if i := strings.LastIndexByte(full, '.'); i >= 0 {
				tb, k = full[:i], full[i+1:]
			}
			restart = append(restart, ref{tb, k})
		}
	}
	add("", restartNames(funcs["topRestartKeys"]))
	add("runners.", restartNames(funcs["runnerRestartKeys"]))
	add("", restartNames(funcs["guardRestartKeys"]))
	matches := func(r reloadRow, x ref) bool {
		if r.table != x.table {
			return false
		}
		if x.key == "" {
			return true
		}
		for _, k := range r.keys {
			if k == x.key || (x.key == "cc_*" && strings.HasPrefix(k, "cc_")) {
				return true
			}
		}
		return false
	}
	for _, x := range restart {
		found := false
		for _, r := range rows {
			if !matches(r, x) {
				continue
			}
			found = true
			if x.key != "" && r.reload != "restart" {
				t.Errorf("README.md:%d: %s: reload says %q, but a reload reports it as needing a restart", r.line, strings.TrimPrefix(x.table+"."+x.key, "."), r.reload)
			}
			if x.key == "" && r.reload == "live" {
				t.Errorf("README.md:%d: %s.%v is documented live, but a reload reports its table as needing a restart", r.line, x.table, r.keys)
			}
		}
		if !found {
			t.Errorf("a reload reports %s as needing a restart, and README's configuration reference has no row for it", strings.TrimPrefix(x.table+"."+x.key, "."))
		}
	}
}

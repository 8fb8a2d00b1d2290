package config

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// The README's "Configuration reference" must name every key the loader
// accepts, in the section of its table, and each default it writes as a TOML
// value must be the loader's. The accepted keys are not written down here:
// they are what the loader itself decodes (every fieldSet decodeFields is
// given, walked over a file with every table), the keys it forwards to the
// inner runner, and the [runners.docker] keys ParseDocker knows.

// readmeFreeTables are tables whose keys are the user's names (lock names,
// environment variables) or are forwarded as a whole: the loader accepts any
// key there, so only the table itself is documented.
var readmeFreeTables = map[string]bool{"guards.pools.locks": true, "runners.cache": true}

// readmeFullConfig has every table the loader knows, so that walking it
// visits every fieldSet.
const readmeFullConfig = `
state_file = "state.json"
[quota_computation]
reference_runner = "local"
[[runners]]
name = "local"
url = "https://gitlab.example.com"
token = "localtok-0123"
executor = "local-docker"
  [runners.local_docker]
  host = "unix:///var/run/docker.sock"
  [runners.docker]
  image = "busybox"
  [runners.cache]
  Type = "s3"
  [runners.cache.s3]
  BucketName = "b"
[guards]
  [guards.git]
  branch = "main"
[[guards.pools]]
name = "envs"
  [guards.pools.locks]
  env-1 = "x"
`

var indexRe = regexp.MustCompile(`\[\d+\]`)

// acceptedKeys walks the loader: table ("" for the top level, "runners",
// "runners.local_docker", …) → the keys it accepts there.
func acceptedKeys(t *testing.T) map[string]map[string]bool {
	t.Helper()
	tables := map[string]map[string]bool{}
	add := func(table, key string) {
		if tables[table] == nil {
			tables[table] = map[string]bool{}
		}
		tables[table][key] = true
	}
	subTables := map[string]bool{} // table.key whose value is a table the loader decodes key by key
	_, _ = parse("full.toml", []byte(readmeFullConfig), Options{}, func(table string, fields fieldSet) {
		table = indexRe.ReplaceAllString(table, "")
		if tables[table] == nil {
			tables[table] = map[string]bool{}
		}
		for k, dst := range fields {
			add(table, k)
			switch dst.(type) {
			case *map[string]toml.Primitive, *[]map[string]toml.Primitive, *toml.Primitive:
				subTables[strings.TrimPrefix(table+"."+k, ".")] = true
			}
		}
	})
	for st := range subTables {
		if _, walked := tables[st]; !walked && !readmeFreeTables[st] {
			t.Errorf("the loader decodes table %s key by key, but readmeFullConfig has no [%s]: add it (or list it in readmeFreeTables if its keys are the user's names)", st, st)
		}
	}
	for k := range innerKeys {
		add("runners", k)
	}
	for k := range acceptedRunnerKeys {
		add("runners", k)
	}
	for _, k := range dockerKeys(t) {
		add("runners.docker", k)
	}
	for _, want := range []string{"", "runners", "runners.local_docker", "runners.docker", "quota_computation", "guards", "guards.git", "guards.pools"} {
		if len(tables[want]) == 0 {
			t.Fatalf("walking the loader found no keys in table %q: the walk is broken", want)
		}
	}
	return tables
}

// dockerKeys are the [runners.docker] keys ParseDocker accepts: the cases
// of its switch (read from docker.go) and the keys it warns about.
func dockerKeys(t *testing.T) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "docker.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, decl := range f.Decls {
		fn, ok := decl.(*ast.FuncDecl)
		if !ok || fn.Name.Name != "ParseDocker" {
			continue
		}
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			if cc, ok := n.(*ast.CaseClause); ok {
				for _, e := range cc.List {
					if lit, ok := e.(*ast.BasicLit); ok && lit.Kind == token.STRING {
						s, _ := strconv.Unquote(lit.Value)
						seen[s] = true
					}
				}
			}
			return true
		})
	}
	for k := range dockerIgnored {
		seen[k] = true
	}
	for _, k := range dockerNotImplemented {
		seen[k] = true
	}
	var keys []string
	for k := range seen {
		// the AST read is only trusted for keys ParseDocker does accept
		_, probs := ParseDocker(map[string]any{k: nil})
		for _, p := range probs {
			if strings.HasPrefix(p.Msg, "unknown key") {
				t.Fatalf("docker.go's switch has case %q, which ParseDocker refuses as unknown: the AST read is wrong", k)
			}
		}
		keys = append(keys, k)
	}
	if _, probs := ParseDocker(map[string]any{"no_such_key_readme": nil}); len(probs) == 0 || !strings.HasPrefix(probs[0].Msg, "unknown key") {
		t.Fatal("ParseDocker accepts an unknown key: dockerKeys cannot tell which keys exist")
	}
	sort.Strings(keys)
	if len(keys) < 20 {
		t.Fatalf("found only %d [runners.docker] keys in docker.go: %v", len(keys), keys)
	}
	return keys
}

// refRow is one row of a reference table.
type refRow struct {
	table   string
	keys    []string
	def     string // the default cell as written
	exec    string // the executor cell
	line    int
	heading string
}

var (
	backtickRe = regexp.MustCompile("`([^`]+)`")
	tableRe    = regexp.MustCompile(`^\[\[?([A-Za-z0-9_.-]+)\]\]?$`)
)

// readmeReference reads the rows of the tables of README's "Configuration
// reference" section, each with the TOML table its subsection is about.
func readmeReference(t *testing.T) []refRow {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	start := -1
	for i, l := range lines {
		if l == "## Configuration reference" {
			start = i
			break
		}
	}
	if start < 0 {
		t.Fatal(`README.md has no "## Configuration reference" section`)
	}
	var rows []refRow
	table, heading, known := "", "", false
	for i := start + 1; i < len(lines); i++ {
		l := lines[i]
		if strings.HasPrefix(l, "## ") {
			break
		}
		if h, ok := strings.CutPrefix(l, "### "); ok {
			heading, known = h, true
			switch {
			case strings.HasPrefix(h, "Top-level"):
				table = ""
			case strings.Contains(h, "`cc_*`"):
				table = "runners"
			default:
				m := backtickRe.FindStringSubmatch(h)
				if m == nil || !tableRe.MatchString(m[1]) {
					t.Errorf("README.md:%d: heading %q names no TOML table (such as `[runners.docker]`)", i+1, h)
					known = false
					continue
				}
				table = tableRe.FindStringSubmatch(m[1])[1]
			}
			continue
		}
		if !strings.HasPrefix(l, "| `") || !known {
			continue
		}
		cells := splitRow(l)
		if len(cells) != 5 {
			t.Errorf("README.md:%d: a reference row has %d cells, want 5 (key, default, executor, reload, meaning)", i+1, len(cells))
			continue
		}
		r := refRow{table: table, def: strings.TrimSpace(cells[1]), exec: strings.TrimSpace(cells[2]), line: i + 1, heading: heading}
		for _, m := range backtickRe.FindAllStringSubmatch(cells[0], -1) {
			k := m[1]
			if strings.Contains(k, "…") {
				continue // "`cc_…` keys": a pointer to another table
			}
			if tm := tableRe.FindStringSubmatch(k); tm != nil {
				k = tm[1]
				if table != "" {
					k = strings.TrimPrefix(k, table+".")
				}
			}
			r.keys = append(r.keys, k)
		}
		rows = append(rows, r)
	}
	if len(rows) == 0 {
		t.Fatal("README.md's configuration reference has no table rows")
	}
	return rows
}

// splitRow splits a Markdown table row on the pipes that are not escaped.
func splitRow(l string) []string {
	l = strings.TrimSpace(l)
	l = strings.TrimPrefix(strings.TrimSuffix(l, "|"), "|")
	var cells []string
	var b strings.Builder
	for i := 0; i < len(l); i++ {
		switch {
		case l[i] == '\\' && i+1 < len(l) && l[i+1] == '|':
			b.WriteByte('|')
			i++
		case l[i] == '|':
			cells = append(cells, b.String())
			b.Reset()
		default:
			b.WriteByte(l[i])
		}
	}
	return append(cells, b.String())
}

func TestREADMEReferenceHasEveryKey(t *testing.T) {
	accepted := acceptedKeys(t)
	documented := map[string]map[string]int{}
	for _, r := range readmeReference(t) {
		if documented[r.table] == nil {
			documented[r.table] = map[string]int{}
		}
		for _, k := range r.keys {
			documented[r.table][k] = r.line
		}
	}
	var tables []string
	for tb := range accepted {
		tables = append(tables, tb)
	}
	sort.Strings(tables)
	for _, tb := range tables {
		var keys []string
		for k := range accepted[tb] {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if _, ok := documented[tb][k]; !ok {
				t.Errorf("README.md's configuration reference does not document %s (add a row to its table's section)", fullKey(tb, k))
			}
		}
	}
	// and nothing documented that the loader refuses
	for tb, keys := range documented {
		if readmeFreeTables[tb] {
			continue
		}
		for k, line := range keys {
			if !accepted[tb][k] {
				t.Errorf("README.md:%d documents %s, which the loader does not accept", line, fullKey(tb, k))
			}
		}
	}
}

func fullKey(table, key string) string {
	if table == "" {
		return key
	}
	return table + "." + key
}

// readmeBase is a valid configuration with every table, and a place for
// one more key in each; a key set to its documented default must change
// nothing in what the loader returns.
const readmeBase = `state_file = "state.json"
{}
[[runners]]
name = "local"
url = "https://gitlab.example.com"
token = "localtok-0123"
executor = "local-docker"
{runners}
  [runners.local_docker]
{runners.local_docker}
[[runners]]
name = "clever"
url = "https://gitlab.example.com"
token = "clevetok-0123"
executor = "clever-docker"
inner_image = "registry.example.com/paas-runner-host:1"
cc_orga_id = "orga_readme"
cc_token = "clever-token"
{clever}
[guards]
{guards}
  [guards.git]
{guards.git}
[[guards.pools]]
name = "envs"
{guards.pools}
  [guards.pools.locks]
  env-1 = "region=eu-west-1"
`

func readmeConfig(t *testing.T, table, line string) *Config {
	t.Helper()
	slot := "{" + table + "}"
	if table == "runners" && strings.HasPrefix(line, "cc_") {
		slot = "{clever}"
	}
	text := readmeBase
	if !strings.Contains(text, slot) {
		return nil
	}
	text = strings.Replace(text, slot, line, 1)
	text = regexp.MustCompile(`(?m)^\{[a-z._]*\}$`).ReplaceAllString(text, "")
	c, err := Parse("readme.toml", []byte(text), Options{})
	if err != nil {
		t.Errorf("%s = …: the loader refuses it: %v", fullKey(table, line), err)
		return nil
	}
	c.Path, c.lines = "", nil
	return c
}

// tomlLiteral returns the value of a default cell written as one TOML
// value in backticks (`3`, `"par"`, `true`); ok is false for words.
func tomlLiteral(cell string) (string, any, bool) {
	m := regexp.MustCompile("^`([^`]+)`$").FindStringSubmatch(cell)
	if m == nil {
		return "", nil, false
	}
	var v struct{ V any }
	if _, err := toml.Decode("V = "+m[1], &v); err != nil {
		return "", nil, false
	}
	return m[1], v.V, true
}

func TestREADMEReferenceDefaults(t *testing.T) {
	base := readmeConfig(t, "", "")
	if base == nil {
		t.Fatal("readmeBase does not load")
	}
	emptyDocker, _ := ParseDocker(map[string]any{})
	checked := 0
	for _, r := range readmeReference(t) {
		lit, val, ok := tomlLiteral(r.def)
		if !ok {
			continue
		}
		for _, k := range r.keys {
			switch r.table {
			case "runners.docker":
				d, probs := ParseDocker(map[string]any{k: val})
				if len(probs) > 0 || !reflect.DeepEqual(d, emptyDocker) {
					t.Errorf("README.md:%d: [runners.docker] %s: documented default %s is not the parser's (%v %v)", r.line, k, lit, probs, d)
				}
				checked++
			case "runners.cache":
				// forwarded as written: the defaults are the inner runner's
				// (readme_ext_test.go checks them against jobrunner)
			default:
				c := readmeConfig(t, r.table, k+" = "+lit)
				if c == nil {
					t.Errorf("README.md:%d: cannot check the default of %s", r.line, fullKey(r.table, k))
					continue
				}
				if !reflect.DeepEqual(c, base) {
					t.Errorf("README.md:%d: %s: the documented default %s is not the loader's: setting it changes the configuration", r.line, fullKey(r.table, k), lit)
				}
				checked++
			}
		}
	}
	t.Logf("%d documented defaults checked", checked)
	// a change of the table format must not make this test check nothing
	if checked < 30 {
		t.Errorf("only %d documented defaults were checked: is the default column still written as TOML values?", checked)
	}
}

// The defaults test must be able to fail: a wrong default is caught.
func TestREADMEReferenceDefaultsCanFail(t *testing.T) {
	base := readmeConfig(t, "", "")
	if base == nil {
		t.Fatal("readmeBase does not load")
	}
	for _, c := range []struct{ table, line string }{
		{"", "concurrent = 51"}, {"runners", "unhealthy_interval = 3599"}, {"runners", `cc_zone = "rbx"`},
		{"guards", `lease_margin = "11m"`}, {"guards.git", `branch = "master"`}, {"guards.pools", "supersede = true"},
		{"runners.local_docker", `network_mode = "bridge"`},
	} {
		if reflect.DeepEqual(readmeConfig(t, c.table, c.line), base) {
			t.Errorf("[%s] %s changes nothing: the defaults test would not notice a wrong default", c.table, c.line)
		}
	}
}

// ReadmeDefaultCell is the default cell of key (a full key such as
// runners.cache.max_age) in README's configuration reference, for the
// defaults the loader forwards and another package applies
// (readme_ext_test.go).
func ReadmeDefaultCell(t *testing.T, key string) string {
	t.Helper()
	for _, r := range readmeReference(t) {
		for _, k := range r.keys {
			if fullKey(r.table, k) == key {
				return r.def
			}
		}
	}
	t.Fatalf("README.md's configuration reference has no row for %s", key)
	return ""
}

// The executor column: a key documented for one executor is refused, naming
// that executor, on a runner of the other; a key documented for all is
// accepted on both.
func TestREADMEReferenceExecutors(t *testing.T) {
	other := map[string]string{"local-docker": "clever-docker", "clever-docker": "local-docker"}
	checked := 0
	for _, r := range readmeReference(t) {
		if r.table != "runners" && r.table != "runners.local_docker" {
			continue
		}
		for _, k := range r.keys {
			switch r.exec {
			case "local-docker", "clever-docker":
				entry := k + ` = "x"`
				if r.table == "runners.local_docker" {
					entry = "[runners.local_docker]\n" + entry
				} else if k == "local_docker" {
					entry = "[runners.local_docker]"
				}
				_, err := Parse("readme.toml", []byte(runnerOf(other[r.exec], entry)), Options{})
				if err == nil || !strings.Contains(err.Error(), "only for executor "+r.exec) {
					t.Errorf("README.md:%d: %s is documented for %s only, but a %s runner with it gives %v", r.line, fullKey(r.table, k), r.exec, other[r.exec], err)
				}
				checked++
			case "all":
				if lit, _, ok := tomlLiteral(r.def); ok {
					for _, ex := range []string{"local-docker", "clever-docker"} {
						if _, err := Parse("readme.toml", []byte(runnerOf(ex, k+" = "+lit)), Options{}); err != nil {
							t.Errorf("README.md:%d: %s is documented for all executors, but a %s runner with it gives %v", r.line, fullKey(r.table, k), ex, err)
						}
					}
					checked++
				}
			}
		}
	}
	t.Logf("%d executor cells checked", checked)
	if checked < 25 {
		t.Errorf("only %d executor cells were checked", checked)
	}
}

// runnerOf is a valid file with one runner of executor ex, plus entry
// (keys, then maybe a sub-table) at the end of its [[runners]] entry.
func runnerOf(ex, entry string) string {
	extra := ""
	if ex == "clever-docker" {
		extra = "inner_image = \"registry.example.com/paas-runner-host:1\"\ncc_orga_id = \"orga_readme\"\ncc_token = \"clever-token\"\n"
	}
	return "state_file = \"state.json\"\n[[runners]]\nname = \"r\"\nurl = \"https://gitlab.example.com\"\ntoken = \"runrtok-0123\"\nexecutor = \"" + ex + "\"\n" + extra + entry + "\n"
}

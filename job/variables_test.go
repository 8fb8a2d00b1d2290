package job

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestExpandLikeGitLabRunner(t *testing.T) {
	vars := Variables{{Key: "A", Value: "x"}, {Key: "B_1", Value: "y"}, {Key: "A", Value: "z"}, {Key: "REF", Value: "<$A>"}}
	for in, want := range map[string]string{
		"":             "",
		"plain":        "plain",
		"$A":           "z",
		"${A}":         "z",
		"$A$B_1":       "zy",
		"${B_1}/$A-$C": "y/z-",
		"ab$$cd":       "ab$cd", // $$ is a literal $
		"$$A":          "$A",
		"$":            "$",
		"tail$":        "tail$",
		"${}":          "",
		"${A":          "A",  // the unclosed brace goes with the $
		"a$-b":         "ab", // $- is a special parameter: empty
		"a$ b":         "a b",
		"$1${?}x$*":    "x",
		"$REF":         "<$A>", // one pass: values are not expanded again
	} {
		if got := vars.Expand(in); got != want {
			t.Errorf("Expand(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestExpandedOnePass(t *testing.T) {
	vars := Variables{
		{Key: "HOST", Value: "example.com"},
		{Key: "URL", Value: "https://$HOST/x"},
		{Key: "NEXT", Value: "$URL/y"},
		{Key: "LIT", Value: "$HOST", Raw: true},
		{Key: "SELF", Value: "[$SELF]"},
		{Key: "PRICE", Value: "5$$"},
	}
	got := map[string]string{}
	for _, v := range vars.Expanded() {
		got[v.Key] = v.Value
	}
	want := map[string]string{
		"HOST": "example.com", "URL": "https://example.com/x",
		"NEXT": "https://$HOST/x/y", // against the raw value of URL
		"LIT":  "$HOST", "SELF": "[[$SELF]]", "PRICE": "5$",
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s = %q, want %q", k, got[k], w)
		}
	}
	if vars[1].Value != "https://$HOST/x" {
		t.Error("Expanded changed its receiver")
	}
}

// A: $A$A$A$A$A$A$A$A (and a chain of such variables) grows exponentially
// with recursive expansion; one pass makes it 8 copies of the raw value.
func TestExpandSelfReferenceBounded(t *testing.T) {
	raw := strings.Repeat("$A", 8)
	vars := Variables{{Key: "A", Value: raw}}
	for i := 0; i < 30; i++ {
		vars = append(vars, Variable{Key: "A", Value: raw}) // redefinitions change nothing
	}
	vars = append(vars, Variable{Key: "B", Value: strings.Repeat("$A", 8)}, Variable{Key: "C", Value: strings.Repeat("$B", 8)})
	if got := vars.Expand("$A"); got != raw {
		t.Fatalf("Expand($A) = %d bytes, want the raw value", len(got))
	}
	ex := vars.Expanded()
	if got := ex.Get("A"); got != strings.Repeat(raw, 8) {
		t.Fatalf("expanded A is %d bytes, want %d", len(got), 8*len(raw))
	}
	if got := ex.Get("C"); got != strings.Repeat("$A", 64) {
		t.Fatalf("expanded C is %d bytes", len(got))
	}
	// an image name expanded against the expanded variables (as the
	// inner runner does) stays polynomial too
	if got := ex.Expand("$C$C"); len(got) != 2*len(ex.Get("C")) {
		t.Fatalf("%d bytes", len(got))
	}
}

// Packages decoding the variables on their own (executors) get the same
// tolerance as Parse.
func TestVariablesDecodeTolerant(t *testing.T) {
	var p struct {
		Variables Variables `json:"variables"`
	}
	raw := `{"variables":[{"key":"N","value":3,"public":"true","masked":false},{"key":"E","value":null,"public":true,"masked":false,"file":1},
		{"key":"T","value":true,"public":false,"masked":"false","raw":"true","unknown":"x"}]}`
	if err := json.Unmarshal([]byte(raw), &p); err != nil {
		t.Fatal(err)
	}
	vs := p.Variables
	if vs.Get("N") != "3" || !vs[0].Public || vs.Get("E") != "" || !vs[1].File || vs.Get("T") != "true" || !vs[2].Raw || vs[2].Masked {
		t.Fatalf("%+v", vs)
	}
	for _, bad := range []string{`[{"key":"A","value":{}}]`, `[{"key":"A","value":"x","masked":"maybe"}]`} {
		var v Variables
		if err := json.Unmarshal([]byte(bad), &v); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

package job

import (
	"os"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	a, err := Parse([]byte(`{"id":7,"token":"tok","variables":[{"key":"A","value":"1","public":true,"masked":false}],"extra":{"kept":true}}`))
	if err != nil {
		t.Fatal(err)
	}
	if a.ID != 7 || a.Token != "tok" || a.Payload.Variables.Get("A") != "1" {
		t.Fatalf("parsed %+v", a)
	}
	if string(a.Raw) == "" || !strings.Contains(string(a.Raw), `"extra"`) {
		t.Fatal("raw payload must keep unknown fields")
	}
	for _, bad := range []string{`{`, `{"token":"x"}`, `{"id":3}`, `[]`, `{"id":-1,"token":"x"}`} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("Parse(%s) accepted", bad)
		}
	}
}

func TestExpandMatchesOsExpand(t *testing.T) {
	vars := Variables{{Key: "A", Value: "x"}, {Key: "B_1", Value: "y"}, {Key: "A", Value: "z"}}
	m := func(k string) string { return vars.Get(k) }
	for _, s := range []string{"", "plain", "$A", "${A}", "$A$B_1", "${B_1}/$A-$C", "$", "$$", "${}", "${A", "a$-b", "$1", "${?}x", "tail$"} {
		if got, want := vars.Expand(s), os.Expand(s, m); got != want {
			t.Errorf("Expand(%q) = %q, os.Expand gives %q", s, got, want)
		}
	}
}

func TestExpandRecursiveAndRaw(t *testing.T) {
	vars := Variables{
		{Key: "HOST", Value: "example.com"},
		{Key: "URL", Value: "https://$HOST/x"},
		{Key: "LIT", Value: "$HOST", Raw: true},
		{Key: "LOOP", Value: "$LOOP!"},
	}
	if got := vars.Expand("$URL"); got != "https://example.com/x" {
		t.Errorf("recursive: %q", got)
	}
	if got := vars.Expand("$LIT"); got != "$HOST" {
		t.Errorf("raw: %q", got)
	}
	if got := vars.Expand("$LOOP"); len(got) == 0 || len(got) > 100 {
		t.Errorf("self reference must stop: %q", got)
	}
}

func TestIsFinal(t *testing.T) {
	for s, want := range map[string]bool{"running": false, "canceling": false, "success": true, "failed": true, "canceled": true} {
		if IsFinal(s) != want {
			t.Errorf("IsFinal(%s)", s)
		}
	}
}

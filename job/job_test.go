package job

import (
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

func TestIsFinal(t *testing.T) {
	for s, want := range map[string]bool{"running": false, "canceling": false, "success": true, "failed": true, "canceled": true} {
		if IsFinal(s) != want {
			t.Errorf("IsFinal(%s)", s)
		}
	}
}

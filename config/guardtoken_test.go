package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const guardTokenHead = `state_file = "/tmp/s.json"
[[runners]]
url = "https://gitlab.example"
token = "glrt-abc"
executor = "local-docker"
`

func TestGuardAPIToken(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "guard.token"), []byte("glpat-from-file\n"), 0o600)
	for _, c := range []struct{ body, want string }{
		{`guard_api_token = "glpat-inline"` + "\n", "glpat-inline"},
		{`guard_api_token_file = "guard.token"` + "\n", "glpat-from-file"},
		{`guard_api_token_env = "PAAS_TEST_GUARD_TOKEN"` + "\n", "glpat-from-env"},
		{"", ""},
	} {
		t.Setenv("PAAS_TEST_GUARD_TOKEN", "glpat-from-env")
		p := filepath.Join(dir, "config.toml")
		os.WriteFile(p, []byte(guardTokenHead+c.body), 0o600)
		cfg, err := Load(p, execs)
		if err != nil {
			t.Fatalf("%q: %v", c.body, err)
		}
		if got := cfg.Runners[0].GuardAPIToken; got != c.want {
			t.Fatalf("%q: guard_api_token %q, want %q", c.body, got, c.want)
		}
	}
	for _, c := range []struct{ body, want string }{
		{`guard_api_token_file = "/nonexistent/g"` + "\n", ":6: runners[0].guard_api_token_file: cannot read /nonexistent/g: no such file or directory"},
		{`guard_api_token = "a"` + "\n" + `guard_api_token_file = "guard.token"` + "\n", "runners[0].guard_api_token_file: set only one of guard_api_token, guard_api_token_file"},
	} {
		p := filepath.Join(dir, "config.toml")
		os.WriteFile(p, []byte(guardTokenHead+c.body), 0o600)
		_, err := Load(p, execs)
		var es Errors
		if !errors.As(err, &es) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: want %q, got %v", c.body, c.want, err)
		}
	}
}

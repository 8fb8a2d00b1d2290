package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const cleverHead = `state_file = "/tmp/s.json"
[[runners]]
url = "https://gitlab.example"
token = "glrt-abc"
executor = "clever-docker"
`

func loadClever(t *testing.T, body string) (*Config, string, error) {
	t.Helper()
	p := write(t, cleverHead+body)
	c, err := Load(p, execs)
	return c, p, err
}

func TestCleverSecretsFromFileAndEnv(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "cc.token"), []byte("from-file-token\n"), 0o600)
	t.Setenv("PAAS_TEST_ATTR_TOKEN", "from-env-token")
	p := filepath.Join(dir, "config.toml")
	os.WriteFile(p, []byte(cleverHead+`inner_image = "img"
cc_multi_tenant = true
cc_token_file = "cc.token"
cc_gitlab_namespace_attributes_token_env = "PAAS_TEST_ATTR_TOKEN"
`), 0o600)
	c, err := Load(p, execs)
	if err != nil {
		t.Fatal(err)
	}
	cl := c.Runners[0].Clever
	if cl.Token != "from-file-token" || cl.NamespaceAttributesToken != "from-env-token" {
		t.Fatalf("secrets %q %q", cl.Token, cl.NamespaceAttributesToken)
	}
	for k := range c.Runners[0].Inner {
		if strings.HasPrefix(k, "cc_") {
			t.Fatalf("%s forwarded", k)
		}
	}
	// fixed organisation with the token from the environment
	t.Setenv("PAAS_TEST_CC_TOKEN", "env-cc")
	c, _, err = loadClever(t, "inner_image = \"img\"\ncc_orga_id = \"orga_1\"\ncc_token_env = \"PAAS_TEST_CC_TOKEN\"\n")
	if err != nil || c.Runners[0].Clever.Token != "env-cc" {
		t.Fatalf("%v %+v", err, c)
	}
}

func TestCleverBadInput(t *testing.T) {
	t.Setenv("PAAS_TEST_EMPTY", "")
	for _, c := range []struct{ body, want string }{
		{`cc_orga_id = "o"` + "\n" + `cc_token = "t"` + "\n", `: runners[0].inner_image: required for clever-docker`},
		{"inner_image = \"i\"\ncc_token = \"t\"\n", "runners[0].cc_orga_id: required unless cc_multi_tenant = true"},
		{"inner_image = \"i\"\ncc_orga_id = \"o\"\n", "runners[0].cc_token: required unless cc_multi_tenant = true (or cc_token_file, cc_token_env)"},
		{"inner_image = \"i\"\ncc_orga_id = \"o\"\ncc_token = \"t\"\ncc_token_file = \"/x\"\n", ":9: runners[0].cc_token_file: set only one of cc_token, cc_token_file"},
		{"inner_image = \"i\"\ncc_orga_id = \"o\"\ncc_token_file = \"/nonexistent/cc\"\n", ":8: runners[0].cc_token_file: cannot read /nonexistent/cc: no such file or directory"},
		{"inner_image = \"i\"\ncc_orga_id = \"o\"\ncc_token_env = \"PAAS_TEST_EMPTY\"\n", ":8: runners[0].cc_token_env: the environment variable PAAS_TEST_EMPTY is not set or empty"},
		{"inner_image = \"i\"\ncc_multi_tenant = true\n", "runners[0].cc_gitlab_namespace_attributes_token: required with cc_multi_tenant = true"},
		{"inner_image = \"i\"\ncc_orga_id = \"o\"\ncc_token = \"t\"\ncc_api_url = \"api.clever-cloud.com\"\n", `:9: runners[0].cc_api_url: "api.clever-cloud.com" is not an http:// or https:// URL`},
		{"inner_image = \"i\"\ncc_orga_id = \"o\"\ncc_token = \"t\"\ncc_zone = \"\"\n", ":9: runners[0].cc_zone: must not be empty"},
		{"inner_image = \"i\"\ncc_orga_id = \"o\"\ncc_token = \"t\"\ncc_auth_scheme = \"basic\"\n", `runners[0].cc_auth_scheme: "basic": want token or bearer`},
		// README: "a UUID"; refused with the other errors, at its line
		{"inner_image = \"i\"\ncc_orga_id = \"o\"\ncc_token = \"t\"\ncc_instance_variant_uuid = \"nope\"\n", `:9: runners[0].cc_instance_variant_uuid: "nope" is not a UUID`},
	} {
		_, p, err := loadClever(t, c.body)
		var es Errors
		if !errors.As(err, &es) {
			t.Fatalf("%q: want Errors, got %v", c.body, err)
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: missing %q in:\n%s", c.body, c.want, strings.ReplaceAll(err.Error(), p, "<p>"))
		}
	}
}

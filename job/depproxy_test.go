package job

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestSplitDockerDomain(t *testing.T) {
	for in, want := range map[string][2]string{
		"ubuntu":                        {"docker.io", "library/ubuntu"},
		"debian:bullseye":               {"docker.io", "library/debian:bullseye"},
		"tutum/wordpress":               {"docker.io", "tutum/wordpress"},
		"Foo/bar":                       {"Foo", "bar"},
		"127.0.0.1:8000/x":              {"127.0.0.1:8000", "x"},
		"localhost/x":                   {"localhost", "x"},
		"index.docker.io/library/a":     {"docker.io", "library/a"},
		"index.docker.io/a":             {"docker.io", "library/a"},
		"docker.io/library/postgres:13": {"docker.io", "library/postgres:13"},
		"registry.example.com/g/p:1":    {"registry.example.com", "g/p:1"},
	} {
		d, r := SplitDockerDomain(in)
		if d != want[0] || r != want[1] {
			t.Errorf("%s: got %s %s, want %v", in, d, r, want)
		}
	}
}

func TestUseDependencyProxy(t *testing.T) {
	raw := json.RawMessage(`{"id":1,"token":"t","extra":{"kept":1},
 "variables":[{"key":"CI_DEPENDENCY_PROXY_GROUP_IMAGE_PREFIX","value":"gitlab.example:443/grp/dependency_proxy/containers"},
              {"key":"PG","value":"postgres"}],
 "image":{"name":"debian:bullseye","entrypoint":["/bin/sh"]},
 "services":[{"name":"nginx:latest"},{"name":"heptapod/heptapod:latest"},{"name":"tutum/wordpress","alias":""},
             {"name":"$PG:13","alias":"db"},{"name":"registry.example.com/own/svc:1"},{"alias":"noname"},
             {"name":"docker.io/library/postgres:13"}]}`)
	out, err := UseDependencyProxy(raw)
	if err != nil {
		t.Fatal(err)
	}
	var p struct {
		Extra    map[string]int `json:"extra"`
		Image    map[string]any `json:"image"`
		Services []map[string]any
	}
	json.Unmarshal(out, &p)
	const pre = "gitlab.example:443/grp/dependency_proxy/containers/"
	if p.Image["name"] != pre+"library/debian:bullseye" || p.Image["entrypoint"] == nil || p.Extra["kept"] != 1 {
		t.Errorf("image %v extra %v", p.Image, p.Extra)
	}
	want := []struct{ name, alias string }{
		{pre + "library/nginx:latest", "nginx"},
		{pre + "heptapod/heptapod:latest", "heptapod-heptapod"},
		{pre + "tutum/wordpress", "tutum-wordpress"},
		{pre + "library/postgres:13", "db"},
		{"registry.example.com/own/svc:1", ""},
		{"", "noname"},
		{pre + "library/postgres:13", "docker.io-library-postgres"},
	}
	for i, w := range want {
		name, _ := p.Services[i]["name"].(string)
		alias, _ := p.Services[i]["alias"].(string)
		if name != w.name || alias != w.alias {
			t.Errorf("service %d: %q %q, want %q %q", i, name, alias, w.name, w.alias)
		}
	}
	// no prefix: unchanged bytes
	plain := json.RawMessage(`{"id":1,"image":{"name":"debian"}}`)
	if out, _ := UseDependencyProxy(plain); string(out) != string(plain) {
		t.Errorf("rewritten without prefix: %s", out)
	}
}

// A self-referencing variable in an image name costs the daemon bounded
// work: one expansion of each value, one of the name.
func TestUseDependencyProxyBoundedExpansion(t *testing.T) {
	self := `$A$A$A$A$A$A$A$A`
	raw := json.RawMessage(`{"id":1,"token":"t",
 "variables":[{"key":"CI_DEPENDENCY_PROXY_GROUP_IMAGE_PREFIX","value":"dp.example/grp"},{"key":"A","value":"` + self + `"},
              {"key":"LIT","value":"a$$b"}],
 "image":{"name":"img$A"},
 "services":[{"name":"svc$A$A"},{"name":"$LIT"}]}`)
	out, err := UseDependencyProxy(raw)
	if err != nil {
		t.Fatal(err)
	}
	var p struct {
		Image    map[string]any `json:"image"`
		Services []map[string]any
	}
	json.Unmarshal(out, &p)
	eight := strings.Repeat(self, 8)
	if p.Image["name"] != "dp.example/grp/library/img"+eight {
		t.Errorf("image %d bytes", len(p.Image["name"].(string)))
	}
	if p.Services[0]["name"] != "dp.example/grp/library/svc"+eight+eight {
		t.Errorf("service %d bytes", len(p.Services[0]["name"].(string)))
	}
	if p.Services[1]["name"] != "dp.example/grp/library/a$b" {
		t.Errorf("$$ is a literal $: %v", p.Services[1]["name"])
	}
}

func TestUseDependencyProxyNumericVariable(t *testing.T) {
	raw := []byte(`{"variables":[{"key":"CI_DEPENDENCY_PROXY_GROUP_IMAGE_PREFIX","value":"gitlab.example.com:443/g/dependency_proxy/containers"},{"key":"RETRIES","value":3}],"image":{"name":"alpine"}}`)
	out, err := UseDependencyProxy(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `"gitlab.example.com:443/g/dependency_proxy/containers/library/alpine"`) {
		t.Fatalf("not rewritten: %s", out)
	}
}

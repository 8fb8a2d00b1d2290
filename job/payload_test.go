package job

import (
	"os"
	"strings"
	"testing"
)

// A payload shaped as GitLab's entities send it (lib/api/entities/ci/
// job_request/*.rb): nulls where Rails has nil, absent keys, empty arrays,
// keys this runner does not know, and image: docker: user as a number.
func TestParseGitLabShapedPayload(t *testing.T) {
	raw, err := os.ReadFile("testdata/gitlab-payload.json")
	if err != nil {
		t.Fatal(err)
	}
	a, err := Parse(raw)
	if err != nil {
		t.Fatalf("a payload GitLab sends is refused: %v", err)
	}
	p := a.Payload
	if a.ID != 8812345 || a.Token == "" || p.GitInfo.RepoObjectFormat != "sha256" || len(p.GitInfo.Refspecs) != 2 || p.GitInfo.Depth != 0 {
		t.Fatalf("git_info: %+v", p.GitInfo)
	}
	if got := p.Image.ExecutorOpts.Docker; got.User != "1000" || got.Platform != "linux/amd64" {
		t.Fatalf("image executor_opts: %+v", got)
	}
	if p.Image.Name != "ruby:3.3" || len(p.Image.PullPolicy) != 1 || p.Image.Entrypoint != nil {
		t.Fatalf("image: %+v", p.Image)
	}
	if len(p.Services) != 2 || p.Services[0].Alias != "" || p.Services[0].Ports[0].Number != 5432 ||
		p.Services[1].Alias != "cache, redis-cache" || len(p.Services[1].Command) != 2 || p.Services[0].Variables.Get("POSTGRES_HOST_AUTH_METHOD") != "trust" {
		t.Fatalf("services: %+v", p.Services)
	}
	if v, ok := p.Variables.Lookup("CI_COMMIT_BEFORE_SHA"); !ok || v != "" {
		t.Fatalf("a null variable value: %q %v", v, ok)
	}
	if !p.Variables[2].File || !p.Variables[3].Raw || p.Variables[1].File {
		t.Fatalf("variables: %+v", p.Variables)
	}
	if len(p.Steps) != 2 || p.Steps[1].Script != nil || !p.Steps[1].AllowFailure || p.Steps[1].When != "always" {
		t.Fatalf("steps: %+v", p.Steps)
	}
	if p.Dependencies[0].ArtifactsFile == nil || p.Dependencies[0].ArtifactsFile.Size != 13631488 || p.Dependencies[1].ArtifactsFile != nil {
		t.Fatalf("dependencies: %+v", p.Dependencies)
	}
	if p.Artifacts[0].ExpireIn != "" || p.Artifacts[1].Format != "gzip" || len(p.Cache) != 1 || len(p.Hooks) != 1 {
		t.Fatalf("artifacts, cache, hooks: %+v %+v %+v", p.Artifacts, p.Cache, p.Hooks)
	}
	if len(p.Features.TokenMaskPrefixes) != 2 || len(p.Features.FailureReasons) != 2 {
		t.Fatalf("features: %+v", p.Features)
	}
	if !strings.Contains(string(a.Raw), "a_field_from_a_newer_gitlab") {
		t.Fatal("the raw payload lost an unknown key")
	}
}

func TestDockerOptsUser(t *testing.T) {
	for in, want := range map[string]string{
		`{"docker":{"user":"www-data"}}`: "www-data", `{"docker":{"user":"1000:1000"}}`: "1000:1000",
		`{"docker":{"user":0}}`: "0", `{"docker":{"user":null}}`: "", `{"docker":null}`: "", `{}`: "", `null`: "",
	} {
		a, err := Parse([]byte(`{"id":1,"token":"t","image":{"name":"x","executor_opts":` + in + `}}`))
		if err != nil {
			t.Errorf("%s: %v", in, err)
			continue
		}
		if got := a.Payload.Image.ExecutorOpts.Docker.User; got != want {
			t.Errorf("%s: user %q, want %q", in, got, want)
		}
	}
	for _, bad := range []string{`{"docker":{"user":1.5}}`, `{"docker":{"user":[]}}`, `{"docker":{"platform":3}}`} {
		if _, err := Parse([]byte(`{"id":1,"token":"t","image":{"name":"x","executor_opts":` + bad + `}}`)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

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
	for _, bad := range []string{`{"docker":{"user":1.5}}`, `{"docker":{"user":[]}}`, `{"docker":{"platform":{}}}`} {
		if _, err := Parse([]byte(`{"id":1,"token":"t","image":{"name":"x","executor_opts":` + bad + `}}`)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

// Values of the right meaning but another JSON type (numbers as strings,
// a string as a number, "true") are converted to the field's type rather
// than making the whole job unusable.
func TestParseConvertsMismatchedScalars(t *testing.T) {
	raw := `{"id":"42","token":"tok","unknown":{"x":"1"},
		"job_info":{"id":"42","name":"build","project_id":"7","pipeline_id":"9","namespace_id":"3","time_in_queue_seconds":"1.5"},
		"git_info":{"depth":"20","refspecs":["+refs/heads/main:refs/remotes/origin/main"],"protected":"true"},
		"runner_info":{"timeout":"3600"},
		"variables":[{"key":"N","value":12,"public":"true","masked":false},{"key":"B","value":true,"public":true,"masked":"false"}],
		"steps":[{"name":"script","script":["true"],"timeout":3600.0,"when":"on_success","allow_failure":"false"}],
		"image":{"name":"alpine","ports":[{"number":"8080"}],"executor_opts":{"docker":{"platform":"linux/amd64","user":"1000"}}},
		"services":[{"name":"db","alias":5,"ports":[{"number":"5432","protocol":"tcp"}]}],
		"dependencies":[{"id":"5","name":"build","token":"t","artifacts_file":{"filename":"a.zip","size":"123"}}]}`
	a, err := Parse([]byte(raw))
	if err != nil {
		t.Fatalf("refused: %v", err)
	}
	p := a.Payload
	if a.ID != 42 || p.JobInfo.ProjectID != 7 || p.JobInfo.PipelineID != 9 || p.RunnerInfo.Timeout != 3600 || p.GitInfo.Depth != 20 || !p.GitInfo.Protected {
		t.Fatalf("numbers: %+v %+v %+v", p.JobInfo, p.RunnerInfo, p.GitInfo)
	}
	if p.Variables.Get("N") != "12" || p.Variables.Get("B") != "true" || !p.Variables[0].Public {
		t.Fatalf("variables: %+v", p.Variables)
	}
	if p.Steps[0].Timeout != 3600 || p.Image.Ports[0].Number != 8080 || p.Services[0].Ports[0].Number != 5432 || p.Services[0].Alias != "5" {
		t.Fatalf("steps, ports: %+v %+v %+v", p.Steps, p.Image, p.Services)
	}
	if p.Dependencies[0].ID != 5 || p.Dependencies[0].ArtifactsFile.Size != 123 {
		t.Fatalf("dependencies: %+v", p.Dependencies)
	}
	// the raw payload is kept as GitLab sent it
	if !strings.Contains(string(a.Raw), `"id":"42"`) {
		t.Fatal("raw payload changed")
	}
	// what does not convert is still refused
	for _, bad := range []string{`{"id":"x","token":"t"}`, `{"id":1,"token":"t","runner_info":{"timeout":"an hour"}}`, `{"id":1,"token":"t","steps":{"name":"script"}}`} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

package jobrunner

import (
	"archive/zip"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
	"gitlab.com/paas-runner/paas-runner/internal/testca"
)

func newCA(t *testing.T) *testca.CA {
	t.Helper()
	ca, err := testca.New()
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// A GitLab behind a private CA: with tls-ca-file the clone (and its
// submodule), the log, the artifacts both ways and the final update all go
// over TLS, and the job's script finds the CA in CI_SERVER_TLS_CA_FILE.
func TestPrivateCAJobEndToEnd(t *testing.T) {
	if cli == nil {
		t.Skip("no Docker engine")
	}
	ca := newCA(t)
	var depData []byte
	{
		var buf bytes.Buffer
		zw := zip.NewWriter(&buf)
		w, _ := zw.Create("dep/from-build.txt")
		w.Write([]byte("artifact of the build job\n"))
		zw.Close()
		depData = buf.Bytes()
	}
	j := runJob(t, jobSpec{
		ca: ca,
		script: []string{"cat lib/LIBFILE", "cat dep/from-build.txt", `grep -c "BEGIN CERTIFICATE" "$CI_SERVER_TLS_CA_FILE"`,
			"mkdir out", "echo made over TLS > out/result.txt"},
		vars: []map[string]any{{"key": "GIT_SUBMODULE_STRATEGY", "value": "normal", "public": true, "masked": false}},
		setup: func(gl *coordinatortest.Server, q *coordinatortest.Job) {
			cfg, err := ca.ServerConfig()
			if err != nil {
				t.Fatal(err)
			}
			repo, sha := localdockertest.GitServerTLS(t, q.Token, true, cfg)
			if !strings.HasPrefix(repo, "https://") {
				t.Fatalf("repo %s", repo)
			}
			gi := q.Payload["git_info"].(map[string]any)
			gi["repo_url"], gi["sha"] = repo, sha
			build := gl.AddRunning("")
			gl.SetArtifacts(build.ID, depData)
			q.Payload["dependencies"] = []map[string]any{{"id": build.ID, "name": "build", "token": q.Token,
				"artifacts_file": map[string]any{"filename": "artifacts.zip", "size": len(depData)}}}
			q.Payload["artifacts"] = []map[string]any{{"name": "result", "paths": []string{"out/"}, "when": "on_success",
				"artifact_type": "archive", "artifact_format": "zip"}}
		},
	})
	tr := string(j.Trace)
	if j.Status != "success" {
		t.Fatalf("%s (%s)\n%s", j.Status, j.FailureReason, tr)
	}
	for _, want := range []string{"daemon line\n", "hello from the submodule", "artifact of the build job", "\n1\n"} {
		if !strings.Contains(tr, want) {
			t.Errorf("log lacks %q:\n%s", want, tr)
		}
	}
	a, ok := j.Artifacts["archive"]
	if !ok || !bytes.Contains(a.Data, []byte("out/result.txt")) {
		t.Errorf("artifacts %+v", j.Artifacts)
	}
	if n := len(j.Updates); n == 0 || j.Updates[n-1]["state"] != "success" {
		t.Errorf("updates %v", j.Updates)
	}
}

// Without the CA the inner runner stops at once with a message naming
// tls-ca-file, before it makes anything, instead of retrying every log
// append and update until GitLab's timeout.
func TestPrivateCAMissingFailsFast(t *testing.T) {
	if cli == nil {
		t.Skip("no Docker engine")
	}
	start := time.Now()
	j, err := runJobErr(t, jobSpec{ca: newCA(t), withoutCA: true, script: []string{"echo must not run"}}, cli, "/builds")
	if err == nil || !strings.Contains(err.Error(), "tls-ca-file") || !strings.Contains(err.Error(), "not trusted") {
		t.Fatalf("Run: %v, want an error naming tls-ca-file", err)
	}
	if d := time.Since(start); d > time.Minute {
		t.Errorf("took %v", d)
	}
	if strings.Contains(string(j.Trace), "must not run") || j.Status != "running" {
		t.Errorf("job %s, log %q", j.Status, j.Trace)
	}
	assertNothingLeft(t, j.ID)
}

// A CA that did not sign GitLab's certificate is refused as clearly.
func TestPrivateCAWrongCA(t *testing.T) {
	if cli == nil {
		t.Skip("no Docker engine")
	}
	other := newCA(t)
	_, err := runJobErr(t, jobSpec{ca: newCA(t), script: []string{"true"},
		config: func(rc *RunnerConfig) { rc.TLSCA = other.PEM }}, cli, "/builds")
	if err == nil || !strings.Contains(err.Error(), "tls-ca-file does not hold the CA") {
		t.Fatalf("Run: %v", err)
	}
}

func TestLoadConfigTLSCAFile(t *testing.T) {
	ca := newCA(t)
	dir := t.TempDir()
	if _, err := ca.WriteFile(dir, "ca.pem"); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "runner.toml")
	os.WriteFile(p, []byte("[[runners]]\nurl = \"https://gitlab.example\"\ntls-ca-file = \"ca.pem\"\n"), 0o600)
	rc, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if rc.TLSCAFile != filepath.Join(dir, "ca.pem") || !bytes.Equal(rc.TLSCA, ca.PEM) {
		t.Fatalf("tls-ca-file %q, %d bytes", rc.TLSCAFile, len(rc.TLSCA))
	}
	os.WriteFile(filepath.Join(dir, "ca.pem"), []byte("not a certificate"), 0o644)
	if _, err := LoadConfig(p); err == nil || !strings.Contains(err.Error(), "tls-ca-file") || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("bad CA file: %v", err)
	}
	os.Remove(filepath.Join(dir, "ca.pem"))
	if _, err := LoadConfig(p); err == nil || !strings.Contains(err.Error(), "tls-ca-file") {
		t.Fatalf("missing CA file: %v", err)
	}
}

package main_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
	"gitlab.com/paas-runner/paas-runner/internal/testca"
)

// A GitLab behind a private CA: with tls-ca-file the daemon and the inner
// runner on a local-docker host (the default image) run a job to success
// over TLS — clone, log, final update.
func TestLocalDockerPrivateCA(t *testing.T) {
	cli := dockerInner(t)
	jobImage := busyboxTag
	if err := localdockertest.BuildBusyboxImage(context.Background(), cli, jobImage); err != nil {
		t.Fatal(err)
	}
	ca, err := testca.New()
	if err != nil {
		t.Fatal(err)
	}
	gl := coordinatortest.NewTLS(t, ca)
	dir := t.TempDir()
	caFile, err := ca.WriteFile(dir, "gitlab-ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	tok := "glrt-ldtls-0123456789"
	gl.AddRunner(tok)
	cfg := filepath.Join(dir, "config.toml")
	conf := fmt.Sprintf("concurrent = 2\ncheck_interval = 0.1\nstate_file = %q\n\n[[runners]]\nname = \"tls\"\nurl = %q\ntoken = %q\nexecutor = \"local-docker\"\ntls-ca-file = %q\n%s\n",
		filepath.Join(dir, "state.json"), gl.URL, tok, caFile, hostNetworkNoPull)
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: dir, config: cfg, gl: gl}
	cleanRunner(t, cli, config.RunnerID(tok))
	p := e.start("")
	jobToken := "glcbt-tls-job-token-0001"
	srvCfg, err := ca.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	repo, sha := localdockertest.GitServerTLS(t, jobToken, false, srvCfg)
	q := gl.Enqueue(tok, map[string]any{
		"token": jobToken,
		"image": map[string]any{"name": jobImage},
		"git_info": map[string]any{"repo_url": repo, "ref": "main", "sha": sha, "ref_type": "branch", "depth": 1,
			"refspecs": []string{"+refs/heads/main:refs/remotes/origin/main"}},
		"steps":     []map[string]any{{"name": "script", "script": []string{"cat README", `grep -c "BEGIN CERTIFICATE" "$CI_SERVER_TLS_CA_FILE"`}, "timeout": 600, "when": "on_success"}},
		"variables": []map[string]any{{"key": "CI_JOB_TOKEN", "value": jobToken, "public": false, "masked": true}},
	})
	gl.WaitFor(procWait, "the job to end", func(s *coordinatortest.Server) bool { return jobFinal(s.StatusOf(q.ID)) })
	got := gl.Job(q.ID)
	tr := string(got.Trace)
	if got.Status != "success" {
		t.Fatalf("job %s (%s):\n%s", got.Status, got.FailureReason, tr)
	}
	for _, want := range []string{"paas-runner: host ready", "hello from the repository", "\n1\n", "Job succeeded"} {
		if !strings.Contains(tr, want) {
			t.Errorf("log lacks %q:\n%s", want, tr)
		}
	}
	waitNoHosts(t, cli, config.RunnerID(tok))
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

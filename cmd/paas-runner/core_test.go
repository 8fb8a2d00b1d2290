package main_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

// Test knobs (PAAS_RUNNER_RETRY_MIN, the test executor's variables) exist
// only in test builds: a production binary does not read them.
func TestProductionBuildHasNoTestKnobs(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "paas-runner")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, knob := range []string{"PAAS_RUNNER_RETRY_MIN", "PAAS_RUNNER_TEST_EXECUTOR_DIR", "PAAS_RUNNER_PIPEGUARD_INTERVAL"} {
		if bytes.Contains(data, []byte(knob)) {
			t.Errorf("the production binary reads %s", knob)
		}
	}
}

// A configuration readable by others than its owner (it holds tokens) is
// warned about once at start; a 0600 one is not.
func TestConfigPermissionWarning(t *testing.T) {
	gl := coordinatortest.New(t)
	gl.AddRunner("glrt-perm-0123456789")
	dir := t.TempDir()
	hosts := filepath.Join(dir, "hosts")
	os.Mkdir(hosts, 0o700)
	p := filepath.Join(dir, "config.toml")
	body := fmt.Sprintf("state_file = %q\ncheck_interval = 0.05\n[[runners]]\nurl = %q\ntoken = \"glrt-perm-0123456789\"\nexecutor = \"test-dir\"\n",
		filepath.Join(dir, "state.json"), gl.URL)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, 0o644) // whatever the umask
	env := []string{"PAAS_RUNNER_TEST_EXECUTOR_DIR=" + hosts}
	code, stderr := runOnce(t, env, "--poll-cycles", "1", p)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if n := strings.Count(stderr, "readable by group and others (mode 0644)"); n != 1 {
		t.Fatalf("%d warnings:\n%s", n, stderr)
	}
	if !strings.Contains(stderr, "chmod 600 "+p) {
		t.Fatalf("no advice:\n%s", stderr)
	}
	os.Chmod(p, 0o600)
	if _, stderr := runOnce(t, env, "--poll-cycles", "1", p); strings.Contains(stderr, "readable by") {
		t.Fatalf("warning for a 0600 file:\n%s", stderr)
	}
	if st := gl.Count("POST /api/v4/jobs/request"); st == 0 {
		t.Fatal("the daemon never polled")
	}
}

// The daemon asks for jobs with two-phase commit and confirms each once
// it is durable: a job runs, and GitLab saw it pending until confirmed.
func TestTwoPhaseCommitAdvertised(t *testing.T) {
	e := newEnv(t, "")
	e.gl.AckTimeout = procWait
	p := e.start("")
	j := e.gl.Enqueue("", nil)
	e.waitFile(filepath.Join(e.hosts, e.hostName(j.ID)+".launched"))
	got := e.gl.Job(j.ID)
	if got.Status != "running" || got.WaitingAck || len(got.Updates) == 0 || got.Updates[0]["state"] != "running" {
		t.Fatalf("job %+v", got)
	}
	if !e.gl.TwoPhase(e.token) {
		t.Fatal("two_phase_job_commit not advertised")
	}
	e.gl.Finish(j.ID, "success")
	p.signal(15)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

package main_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
)

// The guard shipped into job containers, for real: the daemon provisions a
// local-docker host on its default base image (this static binary), whose
// inner runner puts itself into the busybox job container as
// gitlab-job-guard; the job's script calls it against the fake GitLab's
// pipelines API, from the job's CI variables. An older conflicting pipeline
// with -x: exit 7 and gitlab-job-guard's line, the job failed with exit
// code 7; none: exit 0, the job succeeds (also as `paas-runner guard`).
// (The guard's progress dots go to stderr, without a newline: they may
// start any line of the log.)
func TestShippedGuardInJobScript(t *testing.T) {
	cli := dockerInner(t)
	if err := localdockertest.BuildBusyboxImage(context.Background(), cli, busyboxTag); err != nil {
		t.Fatal(err)
	}
	tok := fmt.Sprintf("glrt-ldguard-%d-0123456789", os.Getpid()) // per process: runs in other checkouts share the engine
	gl, dir, cfg := localDockerConfig(t, "concurrent = 2\ncheck_interval = 0.1",
		ldRunner{tok, "name = \"guard-ship\"\n" + hostNetworkNoPull + "\n  network_mode = \"host\""})
	e := &env{t: t, dir: dir, config: cfg, gl: gl}
	cleanRunner(t, cli, config.RunnerID(tok))
	const apiToken = "glpat-shipped-guard-0123456789"
	gl.AddAPIToken(apiToken, "read_api")
	older := gl.AddPipeline(41, "main", "running")
	own := gl.AddPipeline(41, "main", "running")
	alone := gl.AddPipeline(42, "main", "running")
	p := e.start("")
	job := func(project, pipeline int64, script ...string) *coordinatortest.Job {
		return gl.Enqueue(tok, map[string]any{
			"image": map[string]any{"name": busyboxTag},
			"steps": []map[string]any{{"name": "script", "script": script, "timeout": 600, "when": "on_success"}},
			"variables": []map[string]any{
				{"key": "GIT_STRATEGY", "value": "none", "public": true},
				{"key": "CI_API_V4_URL", "value": gl.URL + "/api/v4", "public": true},
				{"key": "CI_PROJECT_ID", "value": strconv.FormatInt(project, 10), "public": true},
				{"key": "CI_PIPELINE_ID", "value": strconv.FormatInt(pipeline, 10), "public": true},
				{"key": "PRIVATE_TOKEN", "value": apiToken, "public": false, "masked": true},
			}})
	}
	conflict := job(41, own, "gitlab-job-guard -x -c '^main$'", "echo not reached")
	free := job(42, alone, "gitlab-job-guard -x -c '^main$'", "paas-runner guard --no-wait --guard-ref-regex '^main$' && echo alias proceeded")
	gl.WaitFor(procWait, "both jobs to end", func(s *coordinatortest.Server) bool {
		return jobFinal(s.StatusOf(conflict.ID)) && jobFinal(s.StatusOf(free.ID))
	})

	c := gl.Job(conflict.ID)
	tr := string(c.Trace)
	if c.Status != "failed" || c.FailureReason != "script_failure" || c.ExitCode != 7 {
		t.Errorf("conflicting job: %s %s exit %d\n%s", c.Status, c.FailureReason, c.ExitCode, tr)
	}
	for _, want := range []string{fmt.Sprintf("Pipeline #%d running", older), "paas-runner-guard MainProcess[",
		"1 other pipelines in (running) state.. Exiting on request.", "ERROR: Job failed: exit code 7"} {
		if !strings.Contains(tr, want) {
			t.Errorf("conflicting job's log lacks %q:\n%s", want, tr)
		}
	}
	if strings.Contains(tr, "echo not reached") || strings.Contains(tr, fmt.Sprintf("Pipeline #%d ", own)) {
		t.Errorf("conflicting job's log:\n%s", tr)
	}

	f := gl.Job(free.ID)
	tr = string(f.Trace)
	if f.Status != "success" || f.ExitCode != 0 {
		t.Errorf("job with no conflict: %s exit %d\n%s", f.Status, f.ExitCode, tr)
	}
	if n := strings.Count(tr, "No other conflicting pipelines detected, proceeding ..."); n != 2 || !strings.Contains(tr, "alias proceeded\n") {
		t.Errorf("job with no conflict: %d proceeding lines:\n%s", n, tr)
	}
	for _, j := range []coordinatortest.Job{c, f} {
		if strings.Contains(string(j.Trace), apiToken) || strings.Contains(string(j.Trace), "not provided") {
			t.Errorf("job %d's log:\n%s", j.ID, j.Trace)
		}
	}
	waitNoHosts(t, cli, config.RunnerID(tok))
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// Called as gitlab-job-guard (the name the inner runner ships it under),
// the binary is `paas-runner guard`: same arguments, exit codes and lines.
func TestGuardUnderItsName(t *testing.T) {
	srv := coordinatortest.New(t)
	srv.AddAPIToken("glpat-named", "read_api")
	old := srv.AddPipeline(7, "11-old", "running")
	own := srv.AddPipeline(7, "12-mine", "running")
	link := filepath.Join(t.TempDir(), "gitlab-job-guard")
	if err := os.Symlink(binary, link); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (int, string) {
		cmd := exec.Command(link, args...)
		cmd.Env = append(os.Environ(), "CI_API_V4_URL="+srv.URL+"/api/v4", "CI_PROJECT_ID=7",
			fmt.Sprintf("CI_PIPELINE_ID=%d", own), "PRIVATE_TOKEN=glpat-named")
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return cmd.ProcessState.ExitCode(), string(out)
	}
	if code, out := run("-x"); code != 7 || !strings.Contains(out, fmt.Sprintf("Pipeline #%d running", old)) ||
		!strings.Contains(out, "1 other pipelines in (running) state.. Exiting on request.") {
		t.Fatalf("exit %d\n%s", code, out)
	}
	if code, out := run("-x", "-c", "^main$"); code != 0 || !strings.Contains(out, "No other conflicting pipelines detected, proceeding ...") {
		t.Fatalf("exit %d\n%s", code, out)
	}
	if code, out := run("--help"); code != 0 || !strings.Contains(out, "usage: paas-runner guard") {
		t.Fatalf("exit %d\n%s", code, out)
	}
}

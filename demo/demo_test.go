package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
)

// The demo is what a newcomer runs first: it must pass as it is, and it
// checks itself (every job as expected, no token in any log, nothing
// left).
func TestDemo(t *testing.T) {
	cli, err := localdockertest.Client()
	if err != nil {
		if localdockertest.Required() {
			t.Fatalf("no Docker engine: %v", err)
		}
		t.Skip("no Docker engine")
	}
	cli.Close()
	bin := filepath.Join(t.TempDir(), "paas-runner")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-X gitlab.com/paas-runner/paas-runner/internal/version.Version=demo-test", "-o", bin, "../cmd/paas-runner")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building paas-runner: %v\n%s", err, out)
	}
	var out, errb bytes.Buffer
	var secrets []string
	code := runDemo([]string{"--binary", bin}, &out, &errb, &secrets)
	if code != 0 {
		t.Fatalf("demo exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	for _, want := range []string{"queued → running", "host ready after", "running → failed (script_failure)", "AS EXPECTED", "ended as expected"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if len(secrets) != 1+len(pipeline()) {
		t.Fatalf("%d tokens of the run known, want the runner's and %d jobs'", len(secrets), len(pipeline()))
	}
	if l := leaked(out.String()+errb.String(), secrets); len(l) > 0 {
		t.Errorf("%d tokens in the demo's output:\n%s", len(l), out.String())
	}
}

// leaked finds a token whole or by a piece of 12 characters, not by its
// shortened form.
func TestLeaked(t *testing.T) {
	toks := []string{"glrt-0123456789abcdef", "glcbt-fedcba9876543210"}
	for text, want := range map[string]int{"runner glrt-01234567, job glcbt-fedcba98": 0, "x 3456789abcde y": 1,
		"glcbt-fedcba9876543210 and glrt-0123456789abcdef": 2} {
		if got := len(leaked(text, toks)); got != want {
			t.Errorf("leaked(%q): %d, want %d", text, got, want)
		}
	}
}

// The demo's guard check fails a run where the lock or the pool did not
// do their job.
func TestGuardProblems(t *testing.T) {
	jobs := pipeline()
	logs := map[string]string{
		"deploy-eu": "deploying with production\n",
		"deploy-us": "paas-runner: waiting for lock production (held by job 5…)\npaas-runner: locks acquired after 4s\ndeploying with production\n",
		"review-1":  "pool lock env-a: region=eu-west-1\n",
		"review-2":  "pool lock env-b: region=us-east-1\n",
	}
	got := func() []coordinatortest.Job {
		var js []coordinatortest.Job
		for _, s := range jobs {
			js = append(js, coordinatortest.Job{Trace: []byte(logs[s.name])})
		}
		return js
	}
	if p := guardProblems(jobs, got()); len(p) != 0 {
		t.Fatalf("a good run refused: %v", p)
	}
	logs["review-2"] = "pool lock env-a: region=eu-west-1\n"
	logs["deploy-us"] = "deploying with production\n"
	if p := guardProblems(jobs, got()); len(p) != 2 {
		t.Fatalf("problems %v, want the shared pool lock and no wait", p)
	}
}

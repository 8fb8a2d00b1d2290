package jobrunner

import (
	"slices"
	"strings"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

// Engine-free tests of the script and step logic: the fake engine
// (fakedocker_test.go) runs each container's command with the host's sh.

func runFake(t *testing.T, spec jobSpec) (coordinatortest.Job, *fakeDocker) {
	t.Helper()
	f := newFakeDocker(t.TempDir(), jobImage)
	j := runJobWith(t, spec, f, f.root)
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.containers) != 0 || len(f.volumes) != 0 {
		t.Errorf("left behind: %d containers, %d volumes", len(f.containers), len(f.volumes))
	}
	return j, f
}

func envHas(c *fakeContainer, kv string) bool { return slices.Contains(c.cfg.Env, kv) }

func TestStepsScriptThenAfterScript(t *testing.T) {
	j, f := runFake(t, jobSpec{
		script: []string{"echo one", "cat README", "false | cat", "echo never"},
		after:  []string{"echo after: $CI_JOB_STATUS", "exit 9"},
	})
	tr := string(j.Trace)
	if j.Status != "failed" || j.FailureReason != "script_failure" || j.ExitCode != 1 {
		t.Fatalf("%s %s %d\n%s", j.Status, j.FailureReason, j.ExitCode, tr)
	}
	for _, want := range []string{"$ echo one", "\none\n", "hello from the repository", "$ false | cat", "\nafter: failed\n",
		"WARNING: after_script failed, but job will continue unaffected: exit code 9"} {
		if !strings.Contains(tr, want) {
			t.Errorf("log lacks %q:\n%s", want, tr)
		}
	}
	if strings.Contains(tr, "\nnever\n") {
		t.Errorf("ran past the failure:\n%s", tr)
	}
	cs := f.created()
	if len(cs) != 2 {
		t.Fatalf("%d containers", len(cs))
	}
	script, after := cs[0], cs[1]
	for _, c := range cs {
		// the image's ENTRYPOINT is kept (nil), the shell detection is the
		// command, the script comes on stdin
		if c.cfg.Entrypoint != nil || !slices.Equal(c.cfg.Cmd, shellCommand()) || !c.cfg.OpenStdin || !c.cfg.StdinOnce || c.cfg.User != "" || c.platform != nil {
			t.Errorf("container config %+v platform %v", c.cfg, c.platform)
		}
	}
	s := f.scriptOf(script)
	if !strings.HasPrefix(s, "if (set -o pipefail)") || !strings.Contains(s, "set -o errexit\n") || !strings.Contains(s, "< /dev/null\nexit 0\n") || strings.Contains(s, "xtrace") {
		t.Errorf("script:\n%s", s)
	}
	if envHas(script, "CI_JOB_STATUS=failed") || !envHas(after, "CI_JOB_STATUS=failed") {
		t.Errorf("CI_JOB_STATUS: script %v after %v", script.cfg.Env, after.cfg.Env)
	}
}

func TestStepsSuccessAndAfterScriptStatus(t *testing.T) {
	j, f := runFake(t, jobSpec{script: []string{"echo fine"}, after: []string{"echo after: $CI_JOB_STATUS"}})
	if tr := string(j.Trace); j.Status != "success" || !strings.Contains(tr, "\nafter: success\n") || !strings.Contains(tr, "Job succeeded") {
		t.Fatalf("%s\n%s", j.Status, tr)
	}
	if cs := f.created(); len(cs) != 2 || !envHas(cs[1], "CI_JOB_STATUS=success") {
		t.Fatalf("%d containers", len(cs))
	}
}

func TestStepsTimeout(t *testing.T) {
	j, f := runFake(t, jobSpec{script: []string{"echo start", "sleep 60", "echo never"}, timeout: 2, after: []string{"echo after: $CI_JOB_STATUS"}})
	tr := string(j.Trace)
	if j.Status != "failed" || j.FailureReason != "job_execution_timeout" || !strings.Contains(tr, "execution took longer than 2 seconds") {
		t.Fatalf("%s %s\n%s", j.Status, j.FailureReason, tr)
	}
	if !strings.Contains(tr, "\nafter: failed\n") || strings.Contains(tr, "\nnever\n") {
		t.Fatalf("log:\n%s", tr)
	}
	if cs := f.created(); !cs[0].stopped {
		t.Error("the script container was not stopped")
	}
}

func TestStepsGracefulCancel(t *testing.T) {
	j, _ := runFake(t, jobSpec{
		script: []string{"echo started", "sleep 120", "echo never"},
		after:  []string{"echo after: $CI_JOB_STATUS"},
		during: func(gl *coordinatortest.Server, id int64) {
			gl.WaitFor(time.Minute, "the script to start", func(s *coordinatortest.Server) bool { return s.TraceContains(id, "started\n") })
			gl.Cancel(id)
		},
	})
	if tr := string(j.Trace); j.Status != "canceled" || !strings.Contains(tr, "\nafter: canceled\n") || strings.Contains(tr, "\nnever\n") {
		t.Fatalf("%s\n%s", j.Status, tr)
	}
}

func TestStepsHardCancelSkipsAfterScript(t *testing.T) {
	j, f := runFake(t, jobSpec{
		script: []string{"echo started", "sleep 120"},
		after:  []string{"echo after"},
		during: func(gl *coordinatortest.Server, id int64) {
			gl.WaitFor(time.Minute, "the script to start", func(s *coordinatortest.Server) bool { return s.TraceContains(id, "started\n") })
			gl.ForceCancel(id)
		},
	})
	if j.Status != "canceled" || strings.Contains(string(j.Trace), "\nafter\n") || len(f.created()) != 1 {
		t.Fatalf("%s, %d containers\n%s", j.Status, len(f.created()), j.Trace)
	}
}

// image: entrypoint, docker: platform and user reach the engine: the
// platform on the pull and the create, the user and entrypoint on the job
// container (not on the pull).
func TestStepsImageOptionsReachTheEngine(t *testing.T) {
	j, f := runFake(t, jobSpec{
		script: []string{"echo hi"},
		vars:   []map[string]any{{"key": "ARCH", "value": "arm64", "public": true}, {"key": "CI_DEBUG_TRACE", "value": "true", "public": true}},
		setup: func(gl *coordinatortest.Server, q *coordinatortest.Job) {
			q.Payload["image"] = map[string]any{"name": jobImage, "pull_policy": []string{"always"},
				"entrypoint":    []string{"/usr/bin/env", "PREP=from-entrypoint"},
				"executor_opts": map[string]any{"docker": map[string]any{"platform": "Linux/${ARCH}/v8", "user": "nobody"}}}
		},
	})
	if len(f.pulls) != 1 || f.pulls[0].Platform != "linux/arm64/v8" {
		t.Fatalf("pulls %+v\n%s", f.pulls, j.Trace)
	}
	cs := f.created()
	if len(cs) != 1 {
		t.Fatalf("%d containers", len(cs))
	}
	c := cs[0]
	if c.platform == nil || c.platform.OS != "linux" || c.platform.Architecture != "arm64" || c.platform.Variant != "v8" {
		t.Errorf("platform %+v", c.platform)
	}
	if c.cfg.User != "nobody" || !slices.Equal(c.cfg.Entrypoint, []string{"/usr/bin/env", "PREP=from-entrypoint"}) {
		t.Errorf("user %q entrypoint %q", c.cfg.User, c.cfg.Entrypoint)
	}
	// the job's entrypoint ran the shell (env sets PREP), with xtrace
	tr := string(j.Trace)
	if !strings.HasPrefix(f.scriptOf(c), "set -o xtrace\n") || !strings.Contains(tr, "+ echo hi\n") || j.Status != "success" {
		t.Errorf("%s\n%s\n%s", j.Status, f.scriptOf(c), tr)
	}
}

// parsePlatform reads what Docker's --platform takes.
func TestParsePlatform(t *testing.T) {
	for in, want := range map[string]string{"": "", "linux/amd64": "linux/amd64", "arm64": "linux/arm64", "linux": "linux", "Linux/ARM/v7": "linux/arm/v7"} {
		p, err := parsePlatform(in)
		if err != nil || platformString(p) != want {
			t.Errorf("%q: %v %v", in, platformString(p), err)
		}
	}
	for _, bad := range []string{"linux/", "/amd64", "a/b/c/d", "linux//v7"} {
		if _, err := parsePlatform(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// image: docker: platform and user are implemented: GitLab is told; the
// services' are not.
func TestFeaturesImageExecutorOpts(t *testing.T) {
	f := Features()
	if !f["image_executor_opts"] || f["service_executor_opts"] {
		t.Fatalf("%v", f)
	}
}

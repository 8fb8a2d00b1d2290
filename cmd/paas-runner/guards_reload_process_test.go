package main_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

// Pools change on reload (local backend), with no hold or waiting job
// dropped: a waiter for any lock of a pool gets a lock added by the reload;
// a removed lock that is held stays with its job, is never granted to its
// waiter (which fails, saying why), and leaves the guards file once
// released; a removed pool's waiter fails, its holder runs to its end; an
// added pool is usable at once.
func TestReloadPoolsProcess(t *testing.T) {
	gl := coordinatortest.New(t)
	pools := func(body string) string {
		return "[guards]\n" + body
	}
	before := pools(`[[guards.pools]]
  name = "aws"
  [guards.pools.locks]
    env-1 = "region=eu-west-1"
[[guards.pools]]
  name = "old"
  [guards.pools.locks]
    o-1 = "old"
`)
	e := gitDaemonEnv(t, gl, "reload", "listen_address = \"127.0.0.1:0\"", before)
	p := e.start("", "--log-format", "json")
	p.waitLog(t, "the start", `"msg":"starting"`)
	launched := func(j *coordinatortest.Job) { e.waitFile(filepath.Join(e.hosts, e.hostName(j.ID)+".launched")) }
	holder := guardedJob(gl, e.token, 100, "PAAS_POOL", "aws/env-1")
	oldHolder := guardedJob(gl, e.token, 101, "PAAS_POOL", "old")
	launched(holder)
	launched(oldHolder)
	named := guardedJob(gl, e.token, 102, "PAAS_POOL", "aws/env-1") // its lock will be removed
	anyAWS := guardedJob(gl, e.token, 103, "PAAS_POOL", "aws")      // gets the added lock
	oldWaiter := guardedJob(gl, e.token, 104, "PAAS_POOL", "old")   // its pool will be removed
	for _, j := range []*coordinatortest.Job{named, anyAWS, oldWaiter} {
		gl.WaitFor(procWait, "waiting", func(s *coordinatortest.Server) bool { return s.TraceContains(j.ID, "paas-runner: waiting for") })
	}

	cfg, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	after := pools(`[[guards.pools]]
  name = "aws"
  [guards.pools.locks]
    env-2 = "region=eu-central-1"
[[guards.pools]]
  name = "gcp"
  [guards.pools.locks]
    g-1 = "zone=europe-west1-b"
`)
	if err := os.WriteFile(e.config, []byte(strings.Replace(string(cfg), before, after, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	p.signal(syscall.SIGHUP)
	p.waitLog(t, "the reload applied", "configuration reloaded")
	launched(anyAWS)
	for _, j := range []*coordinatortest.Job{named, oldWaiter} {
		gl.WaitFor(procWait, "the waiter failed", func(s *coordinatortest.Server) bool { return s.StatusOf(j.ID) == "failed" })
		got := gl.Job(j.ID)
		if got.FailureReason != "script_failure" || !strings.Contains(string(got.Trace), "the runner's configuration changed while the job waited: PAAS_POOL: pool ") {
			t.Fatalf("job %d: %s\n%s", j.ID, got.FailureReason, got.Trace)
		}
	}
	gcp := guardedJob(gl, e.token, 105, "PAAS_POOL", "gcp")
	launched(gcp)
	if _, err := os.Stat(filepath.Join(e.hosts, e.hostName(named.ID)+".host")); err == nil {
		t.Fatal("a host was made for the job whose lock was removed")
	}
	guards := func() string {
		b, err := os.ReadFile(e.state + ".guards")
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	for _, j := range []*coordinatortest.Job{holder, oldHolder} {
		if s := gl.StatusOf(j.ID); s != "running" {
			t.Fatalf("holder %d: %s", j.ID, s)
		}
		if !strings.Contains(guards(), `"job_id":`+strconv.FormatInt(j.ID, 10)) {
			t.Fatalf("holder %d's lock dropped by the reload: %s", j.ID, guards())
		}
	}
	for _, j := range []*coordinatortest.Job{holder, oldHolder, anyAWS, gcp} {
		gl.Finish(j.ID, "success")
	}
	e.waitNoHost()
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	g := guards()
	if strings.Contains(g, `"env-1"`) || strings.Contains(g, `"old"`) || !strings.Contains(g, `"env-2"`) || !strings.Contains(g, `"g-1"`) ||
		strings.Contains(g, `"holder"`) {
		t.Fatalf("guards file after the holders ended: %s", g)
	}
	for k, n := range e.launches() {
		if n != 1 {
			t.Fatalf("%s launched %d times", k, n)
		}
	}
}

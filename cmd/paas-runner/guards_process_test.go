package main_test

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

func lockJob(e *env, pipeline int, lock string) *coordinatortest.Job {
	return e.gl.Enqueue("", map[string]any{
		"job_info": map[string]any{"name": "deploy", "project_id": 1, "pipeline_id": pipeline, "project_full_path": "acme/web"},
		"variables": []map[string]any{
			{"key": "CI_PROJECT_PATH", "value": "acme/web", "public": true},
			{"key": "CI_PROJECT_ROOT_NAMESPACE", "value": "acme", "public": true},
			{"key": "PAAS_LOCK", "value": lock, "public": true},
		}})
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// A job waits for a lock held by another, without a host; the daemon is
// killed (SIGKILL); after the restart the hold and the wait are still there,
// the waiter gets the lock when the holder's host is removed, and nothing
// is launched twice or leaked.
func TestLockSurvivesSIGKILL(t *testing.T) {
	e := newEnv(t, "listen_address = \"127.0.0.1:0\"")
	p := e.start("", "--log-format", "json")
	a := lockJob(e, 230, "production")
	e.waitFile(filepath.Join(e.hosts, e.hostName(a.ID)+".launched"))
	b := lockJob(e, 231, "production")
	want := "waiting for lock production (held by job " + strconv.FormatInt(a.ID, 10) + ", pipeline 230 on main"
	e.gl.WaitFor(procWait, "b waiting", func(s *coordinatortest.Server) bool { return s.TraceContains(b.ID, want) })
	addr := regexp.MustCompile(`"listen_address":"([^"]+)"`).FindStringSubmatch(p.log())
	if addr == nil {
		t.Fatalf("no metrics address:\n%s", p.log())
	}
	var rep struct {
		Holders []struct {
			Job struct {
				JobID int64 `json:"job_id"`
			} `json:"job"`
		} `json:"holders"`
		Waiters []struct {
			Position int `json:"position"`
			Job      struct {
				JobID int64 `json:"job_id"`
			} `json:"job"`
		} `json:"waiters"`
	}
	body := httpGet(t, "http://"+addr[1]+"/debug/locks")
	if err := json.Unmarshal([]byte(body), &rep); err != nil || len(rep.Holders) != 1 || rep.Holders[0].Job.JobID != a.ID ||
		len(rep.Waiters) != 1 || rep.Waiters[0].Job.JobID != b.ID || rep.Waiters[0].Position != 1 {
		t.Fatalf("/debug/locks: %v\n%s", err, body)
	}
	if strings.Contains(body, a.Token) || strings.Contains(body, e.token) {
		t.Fatal("a token in /debug/locks")
	}
	metrics := httpGet(t, "http://"+addr[1]+"/metrics")
	for _, m := range []string{`paas_runner_guard_held{guard="lock:acme/web:production"} 1`, `paas_runner_guard_waiting_jobs{guard="lock:acme/web:production"} 1`} {
		if !strings.Contains(metrics, m) {
			t.Fatalf("metrics lack %s", m)
		}
	}
	p.signal(syscall.SIGKILL)
	p.wait(t)
	if _, err := os.Stat(filepath.Join(e.hosts, e.hostName(b.ID)+".host")); err == nil {
		t.Fatal("a host was made for the waiting job")
	}
	p2 := e.start("")
	e.gl.WaitFor(procWait, "b waiting again", func(s *coordinatortest.Server) bool {
		return strings.Count(s.TraceOf(b.ID), want) >= 2
	})
	if _, err := os.Stat(filepath.Join(e.hosts, e.hostName(b.ID)+".host")); err == nil {
		t.Fatal("a host was made for the waiting job after the restart")
	}
	e.gl.Finish(a.ID, "success")
	e.waitFile(filepath.Join(e.hosts, e.hostName(b.ID)+".launched"))
	if _, err := os.Stat(filepath.Join(e.hosts, e.hostName(a.ID)+".host")); err == nil {
		t.Fatal("b launched before a's host was removed")
	}
	e.gl.Finish(b.ID, "success")
	deadline := time.Now().Add(procWait)
	for {
		if m, _ := filepath.Glob(filepath.Join(e.hosts, "*.host")); len(m) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("hosts not removed")
		}
		time.Sleep(10 * time.Millisecond) // another process removes them
	}
	p2.signal(syscall.SIGTERM)
	if code := p2.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for k, n := range e.launches() {
		if n != 1 {
			t.Fatalf("%s launched %d times", k, n)
		}
	}
	guards, err := os.ReadFile(e.state + ".guards")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(guards), `"holder"`) || !strings.Contains(string(guards), `"waiters":{}`) {
		t.Fatalf("guards file after every job ended: %s", guards)
	}
	if fi, _ := os.Stat(e.state + ".guards"); fi.Mode().Perm() != 0o600 {
		t.Fatalf("guards file mode %v", fi.Mode())
	}
}

// SIGKILL between the claim and the end of provisioning: after the restart
// the job still holds its lock (nobody else gets it), its launch completes
// once, and the lock is released at its end.
func TestLockKilledWhileProvisioning(t *testing.T) {
	e := newEnv(t, "")
	p := e.start("provision")
	a := lockJob(e, 300, "production")
	e.waitFile(filepath.Join(e.hosts, e.hostName(a.ID)+".holding-provision"))
	p.signal(syscall.SIGKILL)
	p.wait(t)
	guards, _ := os.ReadFile(e.state + ".guards")
	if !strings.Contains(string(guards), `"job_id":`+strconv.FormatInt(a.ID, 10)) {
		t.Fatalf("the claim was not durable before provisioning: %s", guards)
	}
	p2 := e.start("")
	b := lockJob(e, 301, "production")
	e.gl.WaitFor(procWait, "b waiting for a", func(s *coordinatortest.Server) bool {
		return s.TraceContains(b.ID, "waiting for lock production (held by job "+strconv.FormatInt(a.ID, 10))
	})
	e.waitFile(filepath.Join(e.hosts, e.hostName(a.ID)+".launched"))
	if _, err := os.Stat(filepath.Join(e.hosts, e.hostName(b.ID)+".host")); err == nil {
		t.Fatal("b got a host while a holds the lock")
	}
	e.gl.Finish(a.ID, "success")
	e.waitFile(filepath.Join(e.hosts, e.hostName(b.ID)+".launched"))
	e.gl.Finish(b.ID, "success")
	deadline := time.Now().Add(procWait)
	for {
		if m, _ := filepath.Glob(filepath.Join(e.hosts, "*.host")); len(m) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("hosts not removed")
		}
		time.Sleep(10 * time.Millisecond) // another process removes them
	}
	p2.signal(syscall.SIGTERM)
	if code := p2.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for k, n := range e.launches() {
		if n != 1 {
			t.Fatalf("%s launched %d times", k, n)
		}
	}
	if guards, _ := os.ReadFile(e.state + ".guards"); strings.Contains(string(guards), `"holder"`) {
		t.Fatalf("a lock still held: %s", guards)
	}
}

// What a new user gets wrong, through the real daemon and GitLab: each
// job fails at once, with the failure reason GitLab shows and a one-line
// message naming the variable in its log; a lock timeout is
// stuck_or_timeout_failure; an older waiting job superseded says by
// which pipeline. None of them is ever given a host.
func TestGuardDeclarationsFailInGitLab(t *testing.T) {
	e := newEnv(t, "[[guards.pools]]\nname = \"aws\"\nnamespaces = [\"acme\"]\n[guards.pools.locks]\nenv-1 = \"region=eu-west-1\"\n")
	p := e.start("")
	holder := guardedJob(e.gl, e.token, 10, "PAAS_LOCK", "production")
	e.waitFile(filepath.Join(e.hosts, e.hostName(holder.ID)+".launched"))
	type want struct {
		job    *coordinatortest.Job
		reason string
		log    string
	}
	many := strings.TrimSuffix(strings.Repeat("l,", 100), ",")
	cases := []want{
		{guardedJob(e.gl, e.token, 11, "PAAS_LOCK", "a,,b"), "script_failure", `PAAS_LOCK: name 2 of "a,,b" is empty`},
		{guardedJob(e.gl, e.token, 12, "PAAS_LOCK", "prod uction"), "script_failure", `PAAS_LOCK: "prod uction": name "prod uction" has the character ' '`},
		{guardedJob(e.gl, e.token, 13, "PAAS_LOCK", many), "script_failure", "PAAS_LOCK names 100 locks: at most 16"},
		{guardedJob(e.gl, e.token, 14, "PAAS_POOL", "gcp"), "script_failure", `PAAS_POOL: pool "gcp" does not exist on this runner`},
		{guardedJob(e.gl, e.token, 15, "PAAS_LOCK", "production", "PAAS_PROCESS_MODE", "oldest-first"), "script_failure",
			`PAAS_PROCESS_MODE: unknown process mode "oldest-first"`},
		{guardedJob(e.gl, e.token, 16, "PAAS_LOCK", "production", "PAAS_LOCK_TIMEOUT", "soon"), "script_failure", `PAAS_LOCK_TIMEOUT: "soon" is not a number of seconds`},
		{guardedJob(e.gl, e.token, 17, "PAAS_LOCK", "production", "PAAS_LOCK_NO_WAIT", "true"), "script_failure",
			"locks not free and PAAS_LOCK_NO_WAIT is set: waiting for lock production (held by job " + strconv.FormatInt(holder.ID, 10) + ", pipeline 10 on main"},
		{guardedJob(e.gl, e.token, 18, "PAAS_LOCK", "production", "PAAS_LOCK_TIMEOUT", "1"), "stuck_or_timeout_failure",
			"gave up after waiting 1s (timeout 1s): still waiting for lock production (held by job " + strconv.FormatInt(holder.ID, 10)},
	}
	other := e.gl.Enqueue(e.token, map[string]any{
		"job_info": map[string]any{"name": "deploy", "project_id": 2, "pipeline_id": 19, "project_full_path": "beta/app"},
		"variables": []map[string]any{{"key": "CI_PROJECT_PATH", "value": "beta/app", "public": true},
			{"key": "CI_PROJECT_ROOT_NAMESPACE", "value": "beta", "public": true}, {"key": "PAAS_POOL", "value": "aws", "public": true}}})
	cases = append(cases, want{other, "script_failure", `PAAS_POOL: pool "aws" is not open to namespace "beta" (allowed: acme)`})
	check := func(cases []want) {
		t.Helper()
		for _, c := range cases {
			e.gl.WaitFor(procWait, "a bad declaration failed", func(s *coordinatortest.Server) bool { return s.StatusOf(c.job.ID) == "failed" })
			got := e.gl.Job(c.job.ID)
			if got.FailureReason != c.reason || !strings.Contains(string(got.Trace), c.log) {
				t.Errorf("job %d: failure reason %q, log:\n%s\nwant %q and %q", c.job.ID, got.FailureReason, got.Trace, c.reason, c.log)
			}
			if _, err := os.Stat(filepath.Join(e.hosts, e.hostName(c.job.ID)+".host")); err == nil || e.launches()[launchKey(e, c.job)] != 0 {
				t.Errorf("job %d was given a host", c.job.ID)
			}
		}
	}
	check(cases)
	// supersede: pipeline 20 waits; pipeline 21, asking to supersede, makes it give way
	older := guardedJob(e.gl, e.token, 20, "PAAS_LOCK", "production")
	e.gl.WaitFor(procWait, "pipeline 20 waiting", func(s *coordinatortest.Server) bool {
		return s.TraceContains(older.ID, "waiting for lock production (held by job "+strconv.FormatInt(holder.ID, 10)+", pipeline 10 on main, since ")
	})
	newer := guardedJob(e.gl, e.token, 21, "PAAS_LOCK", "production", "PAAS_LOCK_SUPERSEDE", "true")
	check([]want{{older, "script_failure", "superseded by pipeline 21"}})
	e.gl.Finish(holder.ID, "success")
	e.waitFile(filepath.Join(e.hosts, e.hostName(newer.ID)+".launched"))
	e.gl.Finish(newer.ID, "success")
	e.waitNoHost()
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

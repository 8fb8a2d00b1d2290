package main_test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

// notifications listens on a socket as systemd does for Type=notify.
type notifications struct {
	t    *testing.T
	msgs chan string
	seen []string
}

func listenNotify(t *testing.T) (*notifications, string) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	n := &notifications{t: t, msgs: make(chan string, 10000)}
	go func() {
		buf := make([]byte, 4096)
		for {
			k, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return
			}
			n.msgs <- string(buf[:k])
		}
	}()
	return n, sock
}

// next returns the first notification from now on that ok accepts.
func (n *notifications) next(what string, ok func(string) bool) string {
	n.t.Helper()
	timeout := time.After(procWait)
	for {
		select {
		case m := <-n.msgs:
			n.seen = append(n.seen, m)
			if ok(m) {
				return m
			}
		case <-timeout:
			n.t.Fatalf("no %s notification; seen %q", what, n.seen)
		}
	}
}

type locksDoc struct {
	Holders []struct {
		Guard string `json:"guard"`
		Job   struct {
			JobID int64 `json:"job_id"`
		} `json:"job"`
	} `json:"holders"`
	Waiters []struct {
		Job struct {
			JobID int64 `json:"job_id"`
		} `json:"job"`
	} `json:"waiters"`
}

// TestReloadUnderLoadWithGuards: while jobs run, hold a lock or a pool's
// lock and wait for them, reloads change concurrent, limit, the log level,
// the tracking rate and the guards' policy, remove a runner whose jobs are
// in flight (one launched, one waiting for a lock), and an invalid file
// comes in between. Nothing tracked is dropped: every job, host, lock and
// waiting job is still there after each reload; the removed runner's jobs
// are still watched and end, their hosts removed; the refused file keeps
// the configuration in force, is counted and told to systemd; every job
// ends as it should, launched once.
func TestReloadUnderLoadWithGuards(t *testing.T) {
	dir := t.TempDir()
	gl := coordinatortest.New(t)
	tokA, tokB := "glrt-rlga-0123456789", "glrt-rlgb-0123456789"
	gl.AddRunner(tokA)
	gl.AddRunner(tokB)
	e := &env{t: t, dir: dir, gl: gl, token: tokA, hosts: filepath.Join(dir, "hosts"), state: filepath.Join(dir, "state.json"),
		config: filepath.Join(dir, "config.toml")}
	os.Mkdir(e.hosts, 0o700)
	runnerA := fmt.Sprintf("[[runners]]\nname = \"a\"\nurl = %q\ntoken = %q\nexecutor = \"test-dir\"\n", gl.URL, tokA)
	runnerB := fmt.Sprintf("[[runners]]\nname = \"b\"\nurl = %q\ntoken = %q\nexecutor = \"test-dir\"\n", gl.URL, tokB)
	guards := "[guards]\nmax_waiting_jobs = %d\nlock_environments = %v\n[[guards.pools]]\nname = \"envs\"\n  [guards.pools.locks]\n  env-a = \"region=eu-west-1\"\n"
	write := func(top, limitA string, withB bool, maxWaiting int, lockEnvs bool) {
		t.Helper()
		body := fmt.Sprintf("%s\ncheck_interval = 0.05\nlisten_address = \"127.0.0.1:0\"\nshutdown_timeout = 20\nstate_file = %q\n\n", top, e.state) +
			fmt.Sprintf(guards, maxWaiting, lockEnvs) + "\n" + runnerA + limitA + "\n"
		if withB {
			body += runnerB
		}
		tmp := filepath.Join(dir, ".config.toml.new")
		if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, e.config); err != nil { // as editors do
			t.Fatal(err)
		}
	}
	write("concurrent = 12\npaas_tracking_requests_per_second = 50", "", true, 100, false)
	notify, sock := listenNotify(t)
	e.extraEnv = []string{"NOTIFY_SOCKET=" + sock}
	p := e.start("", "--log-format", "json")
	notify.next("READY=1", func(m string) bool { return strings.Contains(m, "READY=1") })
	addr := p.metricsAddr(t)
	metrics := func() string { return httpGet(t, "http://"+addr+"/metrics") }

	idB := config.RunnerID(tokB)
	launched := func(runnerID string, id int64) string {
		return filepath.Join(e.hosts, fmt.Sprintf("host-%s-%d.launched", runnerID, id))
	}
	guarded := func(tok, key, value string, pipeline int) *coordinatortest.Job {
		return gl.Enqueue(tok, map[string]any{
			"job_info": map[string]any{"name": "deploy", "project_id": 1, "pipeline_id": pipeline, "project_full_path": "acme/web"},
			"variables": []map[string]any{
				{"key": "CI_PROJECT_PATH", "value": "acme/web", "public": true},
				{"key": "CI_PROJECT_ROOT_NAMESPACE", "value": "acme", "public": true},
				{"key": key, "value": value, "public": true},
			}})
	}
	// runner a: 3 plain jobs, a lock holder and its waiter, a pool lock
	// holder and its waiter; runner b: 2 plain jobs and a lock waiter
	var plainA []int64
	for i := 0; i < 3; i++ {
		plainA = append(plainA, gl.Enqueue(tokA, nil).ID)
	}
	lockHolder := guarded(tokA, "PAAS_LOCK", "production", 400)
	for _, id := range plainA {
		e.waitFile(launched(config.RunnerID(tokA), id))
	}
	e.waitFile(launched(config.RunnerID(tokA), lockHolder.ID))
	lockWaiter := guarded(tokA, "PAAS_LOCK", "production", 401)
	poolHolder := guarded(tokA, "PAAS_POOL", "envs", 402)
	e.waitFile(launched(config.RunnerID(tokA), poolHolder.ID))
	poolWaiter := guarded(tokA, "PAAS_POOL", "envs", 403)
	plainB := []int64{gl.Enqueue(tokB, nil).ID, gl.Enqueue(tokB, nil).ID}
	for _, id := range plainB {
		e.waitFile(launched(idB, id))
	}
	bWaiter := guarded(tokB, "PAAS_LOCK", "production", 404)
	for _, j := range []*coordinatortest.Job{lockWaiter, poolWaiter, bWaiter} {
		gl.WaitFor(procWait, "waiting for its guard", func(s *coordinatortest.Server) bool { return s.TraceContains(j.ID, "paas-runner: waiting for ") })
	}
	all := append(append(append([]int64{}, plainA...), plainB...), lockHolder.ID, lockWaiter.ID, poolHolder.ID, poolWaiter.ID, bWaiter.ID)

	// everything tracked is still there: 12 jobs, the hosts of the 7
	// launched, 2 locks held, 3 jobs waiting
	intact := func(when string) {
		t.Helper()
		doc, body := debugJobs(t, addr)
		if len(doc.Jobs) != len(all) {
			t.Fatalf("%s: %d jobs tracked, want %d: %s", when, len(doc.Jobs), len(all), body)
		}
		waiting := 0
		for _, j := range doc.Jobs {
			if j.State == "acquired" && (strings.HasPrefix(j.WaitingFor, "lock:") || strings.HasPrefix(j.WaitingFor, "pool:")) {
				waiting++
			}
		}
		if waiting != 3 {
			t.Fatalf("%s: %d jobs waiting for guards, want 3: %s", when, waiting, body)
		}
		hosts, _ := filepath.Glob(filepath.Join(e.hosts, "*.host"))
		if len(hosts) != 7 {
			t.Fatalf("%s: %d hosts, want 7: %v", when, len(hosts), hosts)
		}
		var locks locksDoc
		lb := httpGet(t, "http://"+addr+"/debug/locks")
		if err := json.Unmarshal([]byte(lb), &locks); err != nil || len(locks.Holders) != 2 || len(locks.Waiters) != 3 {
			t.Fatalf("%s: /debug/locks: %v %s", when, err, lb)
		}
	}
	intact("before the reloads")

	// 1. the file changes: concurrent, a limit, the log level, the tracking
	// rate and the guards' policy; runner b removed
	write("concurrent = 10\nlog_level = \"debug\"\npaas_tracking_requests_per_second = 20", "limit = 9", false, 50, true)
	p.waitLog(t, "the reload applied", "configuration reloaded", `"concurrent":10`, `"log_level":"debug"`, `"runners_removed":1`)
	p.waitLog(t, "the new values in force", `"configuration in force"`, `"concurrent":10`, `"paas_tracking_requests_per_second":20`, `"max_waiting_jobs":50`, `"guards_policy_applied":true`)
	m := metrics()
	if !metricHas(m, `gitlab_runner_concurrent 10$`) || !metricHas(m, `gitlab_runner_limit\{runner="`+config.RunnerID(tokA)+`",runner_name="a",system_id="r_[^"]+"\} 9$`) ||
		metricHas(m, `gitlab_runner_limit\{runner="`+idB+`"`) || !metricHas(m, `paas_runner_config_reloads_total\{result="ok"\} 1$`) {
		t.Fatalf("metrics after the reload:\n%s", m)
	}
	intact("after removing runner b")

	// 2. an invalid file: refused, counted, told to systemd; nothing changes
	b, _ := os.ReadFile(e.config)
	os.WriteFile(e.config, append(append([]byte{}, b...), "concurrent_typo = 3\n"...), 0o600)
	p.signal(syscall.SIGHUP)
	refused := notify.next("READY=1 after the refused reload", func(m string) bool { return strings.Contains(m, "STATUS=reload failed") })
	if !strings.Contains(refused, "READY=1") || !strings.Contains(refused, "concurrent_typo") {
		t.Fatalf("refused reload told systemd %q", refused)
	}
	p.waitMetricMatch(t, `^paas_runner_config_reloads_total\{result="error"\} [12]$`)
	if m := metrics(); !metricHas(m, `gitlab_runner_concurrent 10$`) {
		t.Fatalf("the refused file changed concurrent:\n%s", m)
	}
	intact("after the refused file")

	// 3. SIGHUP with a valid file: concurrent again, the guards back
	write("concurrent = 11\nlog_level = \"debug\"\npaas_tracking_requests_per_second = 30", "limit = 8", false, 100, false)
	p.signal(syscall.SIGHUP)
	p.waitMetric(t, "gitlab_runner_concurrent 11")
	p.waitLog(t, "the SIGHUP reload applied", `"configuration in force"`, `"concurrent":11`, `"paas_tracking_requests_per_second":30`, `"max_waiting_jobs":100`)
	intact("after the SIGHUP reload")

	// Every job ends as it should: the holders end, their waiters get the
	// lock (the removed runner's one too) and run; the removed runner's
	// launched jobs are still watched and their hosts removed.
	for _, id := range plainB {
		gl.Finish(id, "success")
	}
	gl.Finish(lockHolder.ID, "success")
	gl.Finish(poolHolder.ID, "success")
	e.waitFile(launched(config.RunnerID(tokA), poolWaiter.ID))
	// lock production: the two waiters one after the other, in some order
	next := lockWaiter
	other := bWaiter
	deadline := time.Now().Add(procWait)
	for {
		if _, err := os.Stat(launched(idB, bWaiter.ID)); err == nil {
			next, other = bWaiter, lockWaiter
			break
		}
		if _, err := os.Stat(launched(config.RunnerID(tokA), lockWaiter.ID)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no waiter got lock production; jobs: %s\n%s", httpGet(t, "http://"+addr+"/debug/jobs"), p.log())
		}
		time.Sleep(10 * time.Millisecond) // another process
	}
	gl.Finish(next.ID, "success")
	otherRunner := config.RunnerID(tokA)
	if other == bWaiter {
		otherRunner = idB
	}
	e.waitFile(launched(otherRunner, other.ID))
	gl.Finish(other.ID, "success")
	for _, id := range append(plainA, poolWaiter.ID) {
		gl.Finish(id, "success")
	}
	// (a job leaves /debug/jobs just before its locks are released)
	eventually(t, "every host removed, no job tracked, no lock held", func() (bool, string) {
		hosts, _ := filepath.Glob(filepath.Join(e.hosts, "*.host"))
		doc, body := debugJobs(t, addr)
		var locks locksDoc
		lb := httpGet(t, "http://"+addr+"/debug/locks")
		free := json.Unmarshal([]byte(lb), &locks) == nil && len(locks.Holders) == 0 && len(locks.Waiters) == 0
		return len(hosts) == 0 && len(doc.Jobs) == 0 && free, strings.Join(hosts, " ") + " " + body + " " + lb
	})
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, id := range all {
		if st := gl.Job(id).Status; st != "success" {
			t.Errorf("job %d: %s", id, st)
		}
		if n := gl.Job(id).Acquisitions; n != 1 {
			t.Errorf("job %d acquired %d times", id, n)
		}
	}
	l := e.launches()
	if len(l) != len(all) {
		t.Errorf("%d jobs launched, want %d: %v", len(l), len(all), l)
	}
	for k, n := range l {
		if n != 1 {
			t.Errorf("%s launched %d times", k, n)
		}
	}
	e.noLeak()
}

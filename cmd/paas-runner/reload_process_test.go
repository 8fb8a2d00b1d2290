package main_test

import (
	"fmt"
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

// waitLog waits until the daemon's log has a line containing every part.
func (p *proc) waitLog(t *testing.T, what string, parts ...string) string {
	t.Helper()
	deadline := time.Now().Add(procWait)
	for {
		for _, l := range strings.Split(p.log(), "\n") {
			ok := true
			for _, part := range parts {
				ok = ok && strings.Contains(l, part)
			}
			if ok {
				return l
			}
		}
		select {
		case <-p.done:
			t.Fatalf("the daemon exited before %s:\n%s", what, p.log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s:\n%s", what, p.log())
		}
		// The log comes from another process; there is no event to wait on.
		time.Sleep(10 * time.Millisecond)
	}
}

// waitMetric waits until /metrics has the line want.
func (p *proc) waitMetric(t *testing.T, want string) {
	t.Helper()
	p.waitMetricMatch(t, "^"+regexp.QuoteMeta(want)+"$")
}

// waitMetricMatch waits until a line of /metrics matches the expression.
func (p *proc) waitMetricMatch(t *testing.T, expr string) {
	t.Helper()
	re := regexp.MustCompile("(?m)" + expr)
	addr := regexp.MustCompile(`"listen_address":"([^"]+)"`).FindStringSubmatch(p.waitLog(t, "the metrics address", `"listen_address"`))
	deadline := time.Now().Add(procWait)
	for {
		m := httpGet(t, "http://"+addr[1]+"/metrics")
		if re.MatchString(m) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics lack %s:\n%s", expr, m)
		}
		time.Sleep(10 * time.Millisecond) // another process
	}
}

// metricValue reads one metric from /metrics.
func (p *proc) metricValue(t *testing.T, name string) float64 {
	t.Helper()
	addr := regexp.MustCompile(`"listen_address":"([^"]+)"`).FindStringSubmatch(p.waitLog(t, "the metrics address", `"listen_address"`))
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindStringSubmatch(httpGet(t, "http://"+addr[1]+"/metrics"))
	if m == nil {
		t.Fatalf("no metric %s", name)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// reloadEnv is a daemon with a metrics endpoint and rewritable settings.
func reloadEnv(t *testing.T) (*env, func(top string)) {
	e := newEnv(t, "listen_address = \"127.0.0.1:0\"\nshutdown_timeout = 20")
	orig, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	// write replaces the file as editors do: a new file renamed over it.
	write := func(top string) {
		t.Helper()
		body := strings.Replace(string(orig), "concurrent = 10\n", top+"\n", 1)
		tmp := filepath.Join(e.dir, ".config.toml.new")
		if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, e.config); err != nil {
			t.Fatal(err)
		}
	}
	return e, write
}

// SIGHUP with a valid change: the log level and concurrent change live,
// the jobs in flight are kept and end normally; the daemon does not die.
func TestReloadOnSIGHUP(t *testing.T) {
	e, write := reloadEnv(t)
	p := e.start("", "--log-format", "json")
	p.waitLog(t, "the start", `"msg":"starting"`)
	var ids []int64
	for i := 0; i < 3; i++ {
		ids = append(ids, e.gl.Enqueue("", nil).ID)
	}
	for _, id := range ids {
		e.waitFile(filepath.Join(e.hosts, e.hostName(id)+".launched"))
	}
	if strings.Contains(p.log(), `"level":"debug"`) {
		t.Fatal("debug lines before the reload")
	}
	write("concurrent = 2\nlog_level = \"debug\"\npaas_log_statistics = false")
	p.signal(syscall.SIGHUP)
	p.waitLog(t, "the SIGHUP reload", `"reason":"SIGHUP"`)
	p.waitLog(t, "the reload applied", `configuration reloaded`, `"concurrent":2`, `"log_level":"debug"`)
	p.waitLog(t, "the restart-needed keys", "need a restart", `"paas_log_statistics"`)
	p.waitMetric(t, "paas_runner_concurrent_limit 2")
	p.waitLog(t, "a debug line", `"level":"debug"`, `"configuration in force"`, `"concurrent":2`)
	// Jobs in flight were kept: they end, their hosts are removed.
	for _, id := range ids {
		e.gl.Finish(id, "success")
	}
	p.waitMetric(t, "paas_runner_hosts_removed_total 3")
	// The new limit holds: of 3 new jobs, 2 at most run at once.
	var more []int64
	for i := 0; i < 3; i++ {
		more = append(more, e.gl.Enqueue("", nil).ID)
	}
	e.gl.WaitFor(procWait, "2 running", func(s *coordinatortest.Server) bool {
		n := 0
		s.Each(func(j *coordinatortest.Job) {
			if j.Status == "running" {
				n++
			}
		})
		if n > 2 {
			t.Errorf("%d jobs running with concurrent = 2", n)
		}
		return n == 2
	})
	if got := e.gl.StatusOf(more[2]); got != "pending" {
		t.Fatalf("third job %s with concurrent = 2", got)
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d:\n%s", code, p.log())
	}
}

// An invalid file: the daemon keeps running on the old configuration, logs
// each error with file:line: key, counts it; a valid file later applies.
func TestReloadInvalidFileKeepsRunning(t *testing.T) {
	e, write := reloadEnv(t)
	p := e.start("", "--log-format", "json")
	p.waitLog(t, "the start", `"msg":"starting"`)
	id := e.gl.Enqueue("", nil).ID
	e.waitFile(filepath.Join(e.hosts, e.hostName(id)+".launched"))
	write("concurrent = \"many\"\nno_such_key = 1")
	p.signal(syscall.SIGHUP)
	p.waitLog(t, "the bad value", "configuration reload: "+e.config+":1: concurrent")
	p.waitLog(t, "the unknown key", "configuration reload: "+e.config+":2: no_such_key")
	p.waitLog(t, "the refusal", "configuration reload failed")
	// (the watcher may see the change too: one or two refusals)
	p.waitMetricMatch(t, `^paas_runner_config_reloads_total\{result="error"\} [12]$`)
	p.waitMetric(t, "paas_runner_concurrent_limit 10")
	// Still running, on the old configuration: the job ends, its host goes,
	// a new job runs.
	e.gl.Finish(id, "success")
	id2 := e.gl.Enqueue("", nil).ID
	e.waitFile(filepath.Join(e.hosts, e.hostName(id2)+".launched"))
	e.gl.Finish(id2, "success")
	p.waitMetric(t, "paas_runner_hosts_removed_total 2")
	if strings.Contains(p.log(), "configuration reloaded") {
		t.Fatal("an invalid file was applied")
	}
	const last = "paas_runner_config_last_reload_success_timestamp_seconds"
	started := p.metricValue(t, last)
	if started <= 0 {
		t.Fatalf("%s %v", last, started)
	}
	write("concurrent = 3")
	p.signal(syscall.SIGHUP)
	p.waitMetric(t, "paas_runner_concurrent_limit 3")
	p.waitMetricMatch(t, `^paas_runner_config_reloads_total\{result="ok"\} [12]$`)
	if v := p.metricValue(t, last); v <= started {
		t.Fatalf("%s did not move on a successful reload: %v, then %v", last, started, v)
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d:\n%s", code, p.log())
	}
}

// A change of the file is picked up without a signal, also when the file
// is replaced by a rename (editors) or written in place, and a runner
// added to it starts polling.
func TestReloadOnFileChange(t *testing.T) {
	e, write := reloadEnv(t)
	p := e.start("", "--log-format", "json")
	p.waitLog(t, "the start", `"msg":"starting"`)
	tok := "glrt-added-0123456789"
	e.gl.AddRunner(tok)
	added := e.gl.Enqueue(tok, nil)
	for i := 0; i < 5; i++ {
		write(fmt.Sprintf("concurrent = %d", 4+i))
	}
	// and a runner added by a plain write, in place
	b, _ := os.ReadFile(e.config)
	extra := fmt.Sprintf("\n[[runners]]\nname = \"added\"\nurl = %q\ntoken = %q\nexecutor = \"test-dir\"\n", e.gl.URL, tok)
	if err := os.WriteFile(e.config, append(b, extra...), 0o600); err != nil {
		t.Fatal(err)
	}
	p.waitLog(t, "the watcher's reload", `"reason":"the configuration file changed"`)
	p.waitLog(t, "the reload applied", "configuration reloaded", `"concurrent":8`, `"runners_added":1`)
	p.waitMetric(t, "paas_runner_concurrent_limit 8")
	e.gl.WaitFor(procWait, "the added runner's job taken", func(s *coordinatortest.Server) bool { return s.StatusOf(added.ID) == "running" })
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d:\n%s", code, p.log())
	}
}

func envJob(e *env, pipeline int) *coordinatortest.Job {
	return e.gl.Enqueue("", map[string]any{
		"job_info": map[string]any{"name": "deploy", "project_id": 1, "pipeline_id": pipeline, "project_full_path": "acme/web"},
		"variables": []map[string]any{
			{"key": "CI_PROJECT_PATH", "value": "acme/web", "public": true},
			{"key": "CI_PROJECT_ROOT_NAMESPACE", "value": "acme", "public": true},
			{"key": "CI_ENVIRONMENT_NAME", "value": "production", "public": true},
		}})
}

// The guards' policy changes live: lock_environments turned on by a
// reload makes the next job of an environment take its lock; the job
// running before is not disturbed.
func TestReloadGuardsPolicy(t *testing.T) {
	e, _ := reloadEnv(t)
	p := e.start("", "--log-format", "json")
	p.waitLog(t, "the start", `"msg":"starting"`)
	a := envJob(e, 300)
	e.waitFile(filepath.Join(e.hosts, e.hostName(a.ID)+".launched"))
	held := `^paas_runner_guard_held\{guard="lock:acme/web:environment:production"\} 1$`
	addr := regexp.MustCompile(`"listen_address":"([^"]+)"`).FindStringSubmatch(p.log())
	if m := httpGet(t, "http://"+addr[1]+"/metrics"); regexp.MustCompile("(?m)" + held).MatchString(m) {
		t.Fatal("an environment lock taken with lock_environments = false")
	}
	b, _ := os.ReadFile(e.config)
	if err := os.WriteFile(e.config, append(b, "\n[guards]\nlock_environments = true\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	p.signal(syscall.SIGHUP)
	p.waitLog(t, "the reload applied", "configuration reloaded")
	c := envJob(e, 301)
	e.waitFile(filepath.Join(e.hosts, e.hostName(c.ID)+".launched"))
	p.waitMetricMatch(t, held)
	if s := e.gl.StatusOf(a.ID); s != "running" {
		t.Fatalf("the job running before the reload: %s", s)
	}
	e.gl.Finish(a.ID, "success")
	e.gl.Finish(c.ID, "success")
	p.waitMetric(t, "paas_runner_hosts_removed_total 2")
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d:\n%s", code, p.log())
	}
}

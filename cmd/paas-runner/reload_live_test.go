package main_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// A change of the configuration file is applied live (concurrent, limit,
// log level), coalesced into one reload, and shows in /metrics (the
// runner's gitlab_runner_limit follows the reload); an invalid file keeps
// the running configuration, logs every error and counts it
// (result="error"); keys that need a restart are reported and kept (the
// state file does not move); no job is dropped.
func TestReloadLive(t *testing.T) {
	e := newEnv(t, "listen_address = \"127.0.0.1:0\"\nshutdown_timeout = 20")
	p := e.start("", "--log-format", "json")
	addr := p.metricsAddr(t)
	scrape := func() string { _, b := get(t, "http://"+addr+"/metrics"); return b }
	eventually(t, "ready", func() (bool, string) { c, b := get(t, "http://"+addr+"/readyz"); return c == 200, b })
	j := e.gl.Enqueue("", nil)
	e.waitFile(filepath.Join(e.hosts, e.hostName(j.ID)+".launched"))

	orig, _ := os.ReadFile(e.config)
	next := strings.Replace(string(orig), "concurrent = 10\n", "concurrent = 3\nlog_level = \"debug\"\n", 1) + "limit = 2\n"
	if err := os.WriteFile(e.config, []byte(next), 0o600); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new values in /metrics", func() (bool, string) {
		m := scrape()
		return metricHas(m, `gitlab_runner_concurrent 3$`) && metricHas(m, `gitlab_runner_limit\{runner="[^"]+",runner_name="proc",system_id="r_[^"]+"\} 2$`) &&
			metricHas(m, `paas_runner_config_reloads_total\{result="ok"\} 1$`), m
	})
	if !regexp.MustCompile(`"msg":"configuration reloaded".*"log_level":"debug"`).MatchString(p.log()) {
		t.Fatalf("log level not reloaded:\n%s", p.log())
	}

	// invalid: two errors, both logged; nothing changes
	bad := strings.Replace(next, "concurrent = 3\n", "concurrent = \"many\"\nbogus_key = 1\n", 1)
	os.WriteFile(e.config, []byte(bad), 0o600)
	eventually(t, "the refused reload counted", func() (bool, string) {
		m := scrape()
		return metricHas(m, `paas_runner_config_reloads_total\{result="error"\} 1$`), m
	})
	log := p.log()
	if !strings.Contains(log, "configuration reload failed") || !strings.Contains(log, ": bogus_key") || !strings.Contains(log, ": concurrent") {
		t.Fatalf("refused reload errors not all logged:\n%s", log)
	}
	if m := scrape(); !metricHas(m, `gitlab_runner_concurrent 3$`) || !metricHas(m, `paas_runner_jobs_by_state\{executor="test-dir",runner="[^"]+",state="launched"\} 1$`) {
		t.Fatalf("the refused file changed something:\n%s", m)
	}

	// a key that needs a restart is reported, the rest applied (SIGHUP)
	moved := strings.Replace(next, "concurrent = 3\n", "concurrent = 4\n", 1)
	moved = strings.Replace(moved, `state_file = "`, `state_file = "`+e.dir+`/elsewhere`, 1)
	os.WriteFile(e.config, []byte(moved), 0o600)
	p.signal(syscall.SIGHUP)
	eventually(t, "concurrent 4", func() (bool, string) { m := scrape(); return metricHas(m, `gitlab_runner_concurrent 4$`), m })
	if !regexp.MustCompile(`"msg":"configuration changes that need a restart[^"]*","keys":\["state_file"\]`).MatchString(p.log()) {
		t.Fatalf("state_file change not reported:\n%s", p.log())
	}

	// the job survived every reload and ends normally
	e.gl.Finish(j.ID, "success")
	eventually(t, "the host removed", func() (bool, string) {
		m, _ := filepath.Glob(filepath.Join(e.hosts, "*.host"))
		return len(m) == 0, strings.Join(m, " ")
	})
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if _, err := os.Stat(e.state); err != nil {
		t.Fatal("the state file moved by a reload")
	}
}

// Reloads while many jobs are in flight drop none of them: lowering
// concurrent below the jobs running keeps them all; raising it again lets
// the queued jobs in; every job is launched once and every host removed.
func TestReloadUnderLoad(t *testing.T) {
	e := newEnv(t, "listen_address = \"127.0.0.1:0\"\nshutdown_timeout = 20")
	p := e.start("", "--log-format", "json")
	addr := p.metricsAddr(t)
	orig, _ := os.ReadFile(e.config)
	setConcurrent := func(n string) {
		t.Helper()
		os.WriteFile(e.config, []byte(strings.Replace(string(orig), "concurrent = 10\n", "concurrent = "+n+"\n", 1)), 0o600)
		p.signal(syscall.SIGHUP) // on top of the file event: two reloads at most, same result
		eventually(t, "concurrent "+n, func() (bool, string) {
			_, m := get(t, "http://"+addr+"/metrics")
			return metricHas(m, `gitlab_runner_concurrent `+n+`$`), m
		})
	}
	var ids []int64
	for i := 0; i < 8; i++ {
		ids = append(ids, e.gl.Enqueue("", nil).ID)
	}
	for _, id := range ids {
		e.waitFile(filepath.Join(e.hosts, e.hostName(id)+".launched"))
	}
	setConcurrent("2")
	if doc, body := debugJobs(t, addr); len(doc.Jobs) != 8 {
		t.Fatalf("jobs dropped by the reload: %s", body)
	}
	late := []int64{e.gl.Enqueue("", nil).ID, e.gl.Enqueue("", nil).ID}
	for _, id := range ids[:4] {
		e.gl.Finish(id, "success")
	}
	setConcurrent("10")
	for _, id := range late {
		e.waitFile(filepath.Join(e.hosts, e.hostName(id)+".launched"))
	}
	for _, id := range append(ids[4:], late...) {
		e.gl.Finish(id, "success")
	}
	eventually(t, "every host removed", func() (bool, string) {
		m, _ := filepath.Glob(filepath.Join(e.hosts, "*.host"))
		return len(m) == 0, strings.Join(m, " ")
	})
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for k, n := range e.launches() {
		if n != 1 {
			t.Fatalf("%s launched %d times", k, n)
		}
	}
	if n := len(e.launches()); n != 10 {
		t.Fatalf("%d jobs launched, want 10", n)
	}
	e.noLeak()
}

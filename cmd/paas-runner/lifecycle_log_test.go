package main_test

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Each lifecycle transition of a job is one json log line with job_id,
// runner, executor and, after the acquisition, duration (the time since
// the job was acquired); the end also says how long the job ran.
func TestLifecycleLogLines(t *testing.T) {
	e := newEnv(t, "")
	p := e.start("", "--log-format", "json")
	j := e.gl.Enqueue("", nil)
	e.waitFile(filepath.Join(e.hosts, e.hostName(j.ID)+".launched"))
	e.gl.Finish(j.ID, "success")
	p.waitLog(t, "the host removed", `"msg":"host removed"`)
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	lines := map[string]map[string]any{}
	for _, l := range strings.Split(p.log(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) != nil {
			continue
		}
		if msg, _ := m["msg"].(string); msg != "" {
			if _, seen := lines[msg]; !seen {
				lines[msg] = m
			}
		}
	}
	var last time.Duration
	// acquired → provisioning → launching → launched → decommissioning →
	// removed
	for _, msg := range []string{"job acquired", "provisioning a host", "host ready: launching the job", "job launched", "job finished", "host removed"} {
		m, ok := lines[msg]
		if !ok {
			t.Fatalf("no %q line:\n%s", msg, p.log())
		}
		if m["job_id"] != float64(j.ID) || m["runner"] != "proc" || m["executor"] != "test-dir" {
			t.Errorf("%q: job_id, runner or executor missing or wrong: %v", msg, m)
		}
		if msg == "job acquired" {
			continue
		}
		ds, _ := m["duration"].(string)
		d, err := time.ParseDuration(ds)
		if err != nil || d < last {
			t.Errorf("%q: duration %v (%v), the previous line's %v", msg, m["duration"], err, last)
		}
		last = d
	}
	rs, _ := lines["job finished"]["running"].(string)
	if r, err := time.ParseDuration(rs); err != nil || r <= 0 || r > last {
		t.Errorf("job finished: running %v (%v)", lines["job finished"]["running"], err)
	}
}

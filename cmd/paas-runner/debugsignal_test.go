package main_test

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/config"
)

// SIGUSR1 (--debug-signal) logs each tracked job under the same keys as
// the dispatcher's lines: "runner" is the runner's name (as in `job
// acquired`), its ID is "runner_id"; the ID is not passed off as the name.
func TestDebugSignalNamesTheRunner(t *testing.T) {
	e := newEnv(t, "")
	p := e.start("", "--log-format", "json", "--debug-signal")
	id := e.gl.Enqueue("", nil).ID
	e.waitFile(filepath.Join(e.hosts, e.hostName(id)+".launched"))
	p.signal(syscall.SIGUSR1)
	var line string
	for deadline := time.Now().Add(procWait); line == ""; {
		for _, l := range strings.Split(p.log(), "\n") {
			if strings.Contains(l, `"msg":"tracked job"`) {
				line = l
			}
		}
		if line == "" && time.Now().After(deadline) {
			t.Fatal("SIGUSR1 logged no tracked job")
		}
		time.Sleep(10 * time.Millisecond) // the daemon, another process, logs it
	}
	for _, want := range []string{`"runner":"proc"`, `"runner_id":"` + config.RunnerID(e.token) + `"`} {
		if !strings.Contains(line, want) {
			t.Errorf("the tracked job's line lacks %s: %s", want, line)
		}
	}
	if strings.Contains(line, `"runner_name":"`+config.RunnerID(e.token)+`"`) || strings.Contains(line, e.token) {
		t.Errorf("the tracked job's line names the runner by its ID, or has its token: %s", line)
	}
	e.gl.Finish(id, "success")
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

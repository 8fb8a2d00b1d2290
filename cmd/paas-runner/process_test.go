package main_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
	"gitlab.com/paas-runner/paas-runner/internal/version"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "paas-runner-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "paas-runner")
	// Static (no cgo, so no -race): local-docker puts this very binary in
	// its FROM-scratch host image, where it runs as the inner runner.
	cmd := exec.Command("go", "build", "-tags", "paasrunner_testexec", "-o", binary, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building paas-runner: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	// the host base image built from this test binary
	if cli, err := localdockertest.Client(); err == nil {
		// (by its exact tag: other worktrees' runs have the same version)
		localdockertest.RemoveImage(cli, localdocker.BaseImageTag(version.Version, binary))
		// the test images of this package only: other packages run at once
		localdockertest.RemoveImage(cli, innerTag)
		localdockertest.RemoveImage(cli, busyboxTag)
	}
	os.Exit(code)
}

const procWait = 60 * time.Second

type env struct {
	t        *testing.T
	dir      string
	hosts    string
	config   string
	state    string
	gl       *coordinatortest.Server
	token    string
	extraEnv []string
}

func newEnv(t *testing.T, extra string) *env {
	e := &env{t: t, dir: t.TempDir(), gl: coordinatortest.New(t), token: "glrt-proc-0123456789"}
	e.hosts = filepath.Join(e.dir, "hosts")
	os.Mkdir(e.hosts, 0o700)
	e.state = filepath.Join(e.dir, "state.json")
	e.config = filepath.Join(e.dir, "config.toml")
	e.gl.AddRunner(e.token)
	cfg := fmt.Sprintf(`concurrent = 10
check_interval = 0.05
state_file = %q
%s
[[runners]]
name = "proc"
url = %q
token = %q
executor = "test-dir"
`, e.state, extra, e.gl.URL, e.token)
	if err := os.WriteFile(e.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

type proc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	stderr bytes.Buffer
	done   chan struct{}
	err    error
}

func (e *env) start(hold string, args ...string) *proc {
	e.t.Helper()
	p := &proc{done: make(chan struct{})}
	p.cmd = exec.Command(binary, append(args, e.config)...)
	p.cmd.Env = append(os.Environ(), "PAAS_RUNNER_TEST_EXECUTOR_DIR="+e.hosts, "PAAS_RUNNER_TEST_EXECUTOR_HOLD="+hold, "PAAS_RUNNER_RETRY_MIN=5ms")
	p.cmd.Env = append(p.cmd.Env, e.extraEnv...)
	pipe, _ := p.cmd.StderrPipe()
	if err := p.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			p.mu.Lock()
			p.stderr.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	e.t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
		if e.t.Failed() {
			e.t.Logf("daemon log:\n%s", p.log())
		}
	})
	return p
}

func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// wait returns the exit code.
func (p *proc) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(procWait):
		t.Fatalf("daemon did not exit; log:\n%s", p.log())
	}
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return -int(ws.Signal())
		}
		return ee.ExitCode()
	}
	t.Fatal(p.err)
	return -1
}

func (p *proc) signal(s syscall.Signal) { _ = p.cmd.Process.Signal(s) }

// waitFile waits until path exists: the daemon's test executor creates it.
func (e *env) waitFile(path string) {
	e.t.Helper()
	deadline := time.Now().Add(procWait)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s", path)
		}
		// The file appears from another process; there is no event to wait on.
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *env) hostName(id int64) string {
	return fmt.Sprintf("host-%s-%d", config.RunnerID(e.token), id)
}

func (e *env) launches() map[string]int {
	b, _ := os.ReadFile(filepath.Join(e.hosts, "launches.log"))
	out := map[string]int{}
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" && !strings.HasPrefix(l, "removed ") {
			out[l]++
		}
	}
	return out
}

// checkStateFile asserts the state file is a valid v1 document.
func (e *env) checkStateFile() map[string][]json.RawMessage {
	e.t.Helper()
	b, err := os.ReadFile(e.state)
	if err != nil {
		e.t.Fatalf("state file: %v", err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(b, &doc); err != nil {
		e.t.Fatalf("state file is not JSON: %v\n%s", err, b)
	}
	if string(doc["version"]) != "1" {
		e.t.Fatalf("state version %s", doc["version"])
	}
	fi, _ := os.Stat(e.state)
	if fi.Mode().Perm() != 0o600 {
		e.t.Fatalf("state file mode %v", fi.Mode())
	}
	out := map[string][]json.RawMessage{}
	for _, k := range []string{"launched", "pending", "to_decommission"} {
		var l []json.RawMessage
		json.Unmarshal(doc[k], &l)
		out[k] = l
	}
	return out
}

// noLeak asserts no host file is left.
func (e *env) noLeak() {
	e.t.Helper()
	m, _ := filepath.Glob(filepath.Join(e.hosts, "*.host"))
	if len(m) > 0 {
		e.t.Fatalf("leaked hosts: %v", m)
	}
}

func TestRunJobsAndStopGracefully(t *testing.T) {
	e := newEnv(t, "shutdown_timeout = 20\nlisten_address = \"127.0.0.1:0\"")
	p := e.start("", "--log-format", "json", "--debug-signal")
	var ids []int64
	for i := 0; i < 3; i++ {
		ids = append(ids, e.gl.Enqueue("", nil).ID)
	}
	for _, id := range ids {
		e.waitFile(filepath.Join(e.hosts, e.hostName(id)+".launched"))
		e.gl.Finish(id, "success")
	}
	for _, id := range ids {
		e.gl.WaitFor(procWait, "trace", func(s *coordinatortest.Server) bool { return s.TraceContains(id, "paas-runner: host ready") })
	}
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
	// metrics, read as Prometheus would
	addr := regexp.MustCompile(`"listen_address":"([^"]+)"`).FindStringSubmatch(p.log())
	if addr == nil {
		t.Fatalf("no metrics address in the log:\n%s", p.log())
	}
	wants := []string{"paas_runner_jobs_acquired_total 3", "paas_runner_hosts_removed_total 3", "paas_runner_jobs 0", "paas_runner_tracking_requests_total"}
	var body []byte
	for deadline := time.Now().Add(procWait); ; {
		resp, err := http.Get("http://" + addr[1] + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		missing := ""
		for _, want := range wants {
			if !strings.Contains(string(body), want) {
				missing = want
			}
		}
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics lack %q:\n%s", missing, body)
		}
		time.Sleep(20 * time.Millisecond) // the daemon releases the slot just after removing the host
	}
	// the debug signal lists tracked jobs (none now), without tokens
	p.signal(syscall.SIGUSR1)
	deadline = time.Now().Add(procWait)
	for !strings.Contains(p.log(), `"msg":"tracked jobs"`) {
		if time.Now().After(deadline) {
			t.Fatal("SIGUSR1 logged nothing")
		}
		time.Sleep(10 * time.Millisecond) // the daemon, another process, logs it
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	st := e.checkStateFile()
	if len(st["launched"])+len(st["pending"])+len(st["to_decommission"]) != 0 {
		t.Fatalf("state not empty: %v", st)
	}
	log := p.log()
	if strings.Contains(log, e.gl.Job(ids[0]).Token) || strings.Contains(log, e.token) {
		t.Fatal("a token was logged whole")
	}
	if !strings.Contains(log, `"msg":"serving metrics"`) {
		t.Error("metrics server not started")
	}
	sys, _ := os.ReadFile(filepath.Join(e.dir, ".runner_system_id"))
	if !strings.HasPrefix(string(sys), "r_") {
		t.Errorf("system id %q", sys)
	}
}

// Kill (SIGKILL) or stop (SIGTERM) the daemon at a chosen point, restart it,
// and check: no job launched twice, no host leaked, state file intact.
func TestCrashPoints(t *testing.T) {
	points := []string{"acquired", "provision", "launched", "decommission"}
	for _, point := range points {
		for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
			t.Run(point+"/"+sig.String(), func(t *testing.T) { crashAt(t, point, sig) })
		}
	}
}

func crashAt(t *testing.T, point string, sig syscall.Signal) {
	e := newEnv(t, "shutdown_timeout = 1")
	hold := ""
	if point == "provision" || point == "decommission" {
		hold = point
	}
	p := e.start(hold)
	j := e.gl.Enqueue("", nil)
	name := e.hostName(j.ID)
	switch point {
	case "acquired":
		e.gl.WaitFor(procWait, "acquisition", func(s *coordinatortest.Server) bool {
			n := 0
			s.Each(func(x *coordinatortest.Job) {
				if x.ID == j.ID {
					n = x.Acquisitions
				}
			})
			return n > 0
		})
	case "provision":
		e.waitFile(filepath.Join(e.hosts, name+".holding-provision"))
	case "launched":
		e.waitFile(filepath.Join(e.hosts, name+".launched"))
	case "decommission":
		e.waitFile(filepath.Join(e.hosts, name+".launched"))
		e.gl.Finish(j.ID, "success")
		e.waitFile(filepath.Join(e.hosts, name+".holding-decommission"))
	}
	p.signal(sig)
	code := p.wait(t)
	if sig == syscall.SIGTERM && code != 0 {
		t.Fatalf("SIGTERM: exit %d", code)
	}
	// After a SIGKILL the job may be recorded in the state file or only in
	// its journal (a graceful stop folds the journal in).
	recorded := false
	if b, err := os.ReadFile(e.state + ".journal"); err == nil && len(b) > 0 {
		recorded = sig == syscall.SIGKILL
		if !recorded {
			t.Fatal("a journal left after a graceful stop")
		}
	}
	if _, err := os.Stat(e.state); err == nil {
		st := e.checkStateFile()
		recorded = recorded || len(st["pending"])+len(st["launched"])+len(st["to_decommission"]) > 0
	} else if sig == syscall.SIGTERM {
		t.Fatal("no state file after a graceful stop")
	}
	// Killed between GitLab's answer and the first state write, the job was
	// not confirmed (two-phase commit): GitLab hands it out again after its
	// acknowledgement timeout (TestRandomCrashes); nothing was created for it.

	// restart without holds; finish the job once it runs
	if !recorded && point != "acquired" {
		t.Fatal("the job was not in the state file")
	}
	before := e.gl.Count("POST /api/v4/jobs/request")
	p2 := e.start("")
	e.gl.WaitFor(procWait, "the restarted daemon polling", func(s *coordinatortest.Server) bool {
		return s.CountOf("POST /api/v4/jobs/request") > before
	})
	if recorded && point != "decommission" {
		e.waitFile(filepath.Join(e.hosts, name+".launched"))
		e.gl.Finish(j.ID, "success")
	}
	deadline := time.Now().Add(procWait)
	for {
		m, _ := filepath.Glob(filepath.Join(e.hosts, "*.host"))
		if len(m) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host not removed after restart: %v", m)
		}
		time.Sleep(10 * time.Millisecond) // the daemon, another process, removes it
	}
	p2.signal(syscall.SIGTERM)
	if code := p2.wait(t); code != 0 {
		t.Fatalf("restarted daemon: exit %d", code)
	}
	e.noLeak()
	for k, n := range e.launches() {
		if n != 1 {
			t.Fatalf("%s launched %d times", k, n)
		}
	}
	if got := e.gl.Job(j.ID); got.Acquisitions != 1 {
		t.Fatalf("job acquired %d times", got.Acquisitions)
	}
	st := e.checkStateFile()
	if n := len(st["launched"]) + len(st["pending"]) + len(st["to_decommission"]); n != 0 {
		t.Fatalf("state not empty: %v", st)
	}
	if _, err := os.Stat(e.state + ".journal"); !os.IsNotExist(err) {
		t.Fatal("journal left after a graceful stop")
	}
}

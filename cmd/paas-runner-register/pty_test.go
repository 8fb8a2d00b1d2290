package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
)

// ptyTerm is a program running in a pseudo-terminal, with its output collected.
type ptyTerm struct {
	t       *testing.T
	f       *os.File
	mu      sync.Mutex
	out     bytes.Buffer
	changed chan struct{}
}

func (tm *ptyTerm) read() {
	buf := make([]byte, 4096)
	for {
		n, err := tm.f.Read(buf)
		tm.mu.Lock()
		tm.out.Write(buf[:n])
		close(tm.changed)
		tm.changed = make(chan struct{})
		tm.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// expect waits until the output (since the last expect) contains s.
func (tm *ptyTerm) expect(s string) {
	tm.t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		tm.mu.Lock()
		ok := strings.Contains(tm.out.String(), s)
		ch := tm.changed
		tm.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			tm.t.Fatalf("timed out waiting for %q; screen:\n%s", s, tm.screen())
		}
	}
}

func (tm *ptyTerm) send(line string) { tm.f.Write([]byte(line + "\r")) }

func (tm *ptyTerm) screen() string {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return tm.out.String()
}

func TestInteractiveInTerminal(t *testing.T) {
	gl, dir := setup(t)
	bin := filepath.Join(dir, "paas-runner-register")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	cfg := filepath.Join(dir, "config.toml")
	cmd := exec.Command(bin, "--executor", "local-docker", cfg)
	f, err := pty.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tm := &ptyTerm{t: t, f: f, changed: make(chan struct{})}
	go tm.read()
	tm.expect("State file path [/var/lib/paas-runner/state.json]: ")
	tm.send(filepath.Join(dir, "state.json"))
	tm.expect("Concurrency [10]: ")
	tm.send("-2")
	tm.expect("Invalid answer: \"-2\" is not a positive whole number")
	tm.send("2")
	tm.expect("GitLab URL (for example https://gitlab.example.com): ")
	tm.send(gl.URL)
	tm.expect("Runner token: ")
	tm.send("glrt-good-0123456789")
	tm.expect("Runner name [")
	tm.send("tty-runner")
	tm.expect("Docker host [unix:///var/run/docker.sock]: ")
	tm.send("")
	tm.expect("Runner \"tty-runner\" registered")
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, tm.screen())
	}
	if strings.Contains(tm.screen(), "glrt-good") {
		t.Fatalf("the token was echoed:\n%s", tm.screen())
	}
	data, _ := os.ReadFile(cfg)
	if !strings.Contains(string(data), `name = "tty-runner"`) || !strings.Contains(string(data), "concurrent = 2") {
		t.Fatalf("config:\n%s", data)
	}
}

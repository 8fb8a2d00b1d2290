package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeBin makes a directory of commands for .ci/docker-up.sh: real ones
// linked, fake ones written (a non-root id, a Docker that does not answer).
func fakeBin(t *testing.T, real []string, fake map[string]string) string {
	dir := t.TempDir()
	for _, name := range real {
		p, err := exec.LookPath(name)
		if err != nil {
			t.Skipf("%s: %v", name, err)
		}
		if err := os.Symlink(p, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	for name, body := range fake {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// Not root, `make demo` (docker-up) says exactly what to do: when Docker
// is missing, and when it is there but no engine answers; it installs or
// starts nothing.
func TestDockerUpNotRootSaysWhatToDo(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no busybox-static: the script would ask for it too")
	}
	if _, err := os.Stat("/usr/lib/git-core/git-http-backend"); err != nil {
		t.Skip("no git http-backend")
	}
	id := `case "$1" in -u) echo 1000;; -un) echo alice;; *) echo "uid=1000(alice)";; esac`
	tools := []string{"bash", "grep", "timeout", "seq", "tail", "sleep", "pgrep"}
	script, _ := filepath.Abs("../.ci/docker-up.sh")
	for name, c := range map[string]struct {
		fake map[string]string
		want []string
	}{
		"docker missing": {map[string]string{"id": id, "apt-get": "echo apt-get ran; exit 1"},
			[]string{"missing docker.io and not root", "`sudo make docker-up`", "`sudo apt-get install docker.io`"}},
		"engine down": {map[string]string{"id": id, "docker": "exit 1", "dockerd": "echo dockerd ran; exit 1"},
			[]string{"no Docker engine answers and this user is not root", "`sudo make docker-up`", "`sudo systemctl start docker`", "`sudo usermod -aG docker alice`"}},
	} {
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command(script)
			cmd.Env = []string{"PATH=" + fakeBin(t, tools, c.fake), "HOME=" + t.TempDir()}
			out, err := cmd.CombinedOutput()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Fatalf("exit %v, want 1:\n%s", err, out)
			}
			for _, w := range c.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if strings.Contains(string(out), " ran") {
				t.Errorf("installed or started something:\n%s", out)
			}
		})
	}
}

// .ci/run on a machine without make: not root, it says what to install
// and stops before anything else.
func TestCIRunWantsMake(t *testing.T) {
	id := `case "$1" in -u) echo 1000;; *) echo alice;; esac`
	script, _ := filepath.Abs("../.ci/run")
	cmd := exec.Command("bash", script)
	cmd.Env = []string{"PATH=" + fakeBin(t, []string{"bash", "dirname"}, map[string]string{"id": id, "go": "echo go ran"}), "HOME=" + t.TempDir()}
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit %v, want 1:\n%s", err, out)
	}
	if !strings.Contains(string(out), "make is missing and this user is not root: sudo apt-get install make") || strings.Contains(string(out), "go ran") {
		t.Fatalf("output:\n%s", out)
	}
}

package main_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

// runOnce runs the daemon to completion and returns its exit code and stderr.
func runOnce(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, stderr.String()
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	hosts := filepath.Join(dir, "hosts")
	os.Mkdir(hosts, 0o700)
	env := []string{"PAAS_RUNNER_TEST_EXECUTOR_DIR=" + hosts}
	state := filepath.Join(dir, "state.json")
	good := fmt.Sprintf("state_file = %q\ncheck_interval = 0.05\n[[runners]]\nurl = \"http://127.0.0.1:1\"\ntoken = \"glrt-bad-0123456789\"\nexecutor = \"test-dir\"\n", state)
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o600)
		return p
	}
	cases := []struct {
		name, config, want string
		stateBody          string // written to state_file before the run
		args               []string
	}{
		{name: "malformed", config: "concurrent = \n", want: "malformed.toml:1: invalid TOML"},
		{name: "unknown key", config: good + "colour = \"blue\"\n", want: "unknown key.toml:7: runners[0].colour: unknown key"},
		{name: "wrong type", config: "concurrent = \"many\"\n" + good, want: "wrong type.toml:1: concurrent: wrong type"},
		{name: "missing token", config: strings.Replace(good, "token = \"glrt-bad-0123456789\"\n", "", 1), want: "missing token.toml:3: runners[0].token: required"},
		{name: "bad url scheme", config: strings.Replace(good, "http://127.0.0.1:1", "ftp://gitlab.example", 1), want: "bad url scheme.toml:4: runners[0].url: \"ftp://gitlab.example\" is not an http:// or https:// URL"},
		{name: "negative", config: "concurrent = -3\n" + good, want: "negative.toml:1: concurrent: must be a positive number"},
		{name: "unknown executor", config: strings.Replace(good, "test-dir", "kubernetes", 1), want: "runners[0].executor: unknown executor \"kubernetes\""},
		{name: "missing file", want: "reading configuration"},
		{name: "corrupted state", config: good, stateBody: `{"version": 1, "launched": [`, want: "corrupted state file"},
		{name: "future state", config: good, stateBody: `{"version": 9}`, want: "state file version 9 is newer"},
		// a problem of the state file's path is located as the loader's errors are
		{name: "state dir missing", config: strings.Replace(good, state, filepath.Join(dir, "nope", "s.json"), 1),
			want: "state dir missing.toml:1: state_file: directory " + filepath.Join(dir, "nope") + " does not exist"},
		{name: "state is a directory", config: strings.Replace(good, state, dir, 1),
			want: "state is a directory.toml:1: state_file: " + dir + " is a directory, not a file"},
		{name: "usage: no config", want: "missing CONFIG", args: []string{}},
		{name: "usage: bad flag", want: "flag provided but not defined: -frobnicate", args: []string{"--frobnicate"}},
		{name: "usage: negative cycles", config: good, want: "--poll-cycles must not be negative", args: []string{"--poll-cycles", "-1"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(state)
			if tc.stateBody != "" {
				os.WriteFile(state, []byte(tc.stateBody), 0o600)
			}
			path := filepath.Join(dir, tc.name+".toml")
			if tc.config != "" {
				path = write(tc.name+".toml", tc.config)
			}
			args := tc.args
			if args == nil {
				args = []string{path}
			} else if tc.config != "" {
				args = append(args, path)
			}
			code, stderr := runOnce(t, env, args...)
			if code != 2 {
				t.Fatalf("exit %d, want 2; stderr:\n%s", code, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Fatalf("stderr does not say %q:\n%s", tc.want, stderr)
			}
			if strings.Contains(stderr, "panic") || strings.Contains(stderr, "goroutine") {
				t.Fatalf("panic:\n%s", stderr)
			}
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			if len(lines) != 1 && !strings.HasPrefix(tc.name, "usage") {
				t.Errorf("want one line, got %d:\n%s", len(lines), stderr)
			}
			if tc.stateBody != "" {
				if b, _ := os.ReadFile(state); string(b) != tc.stateBody {
					t.Fatal("refused state file was changed")
				}
			}
		})
	}
}

func TestUnwritableStateDir(t *testing.T) {
	dir := t.TempDir()
	sd := filepath.Join(dir, "ro")
	os.Mkdir(sd, 0o500)
	if os.Getuid() == 0 {
		sd = "/proc/self" // not writable, even for root
	}
	cfg := filepath.Join(dir, "c.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("state_file = %q\n[[runners]]\nurl = \"http://x\"\ntoken = \"glrt-x-0123456789\"\nexecutor = \"test-dir\"\n", filepath.Join(sd, "s.json"))), 0o600)
	code, stderr := runOnce(t, []string{"PAAS_RUNNER_TEST_EXECUTOR_DIR=" + dir}, cfg)
	if code != 2 || !strings.Contains(stderr, "state") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
}

func TestSecondDaemonOnSameState(t *testing.T) {
	e := newEnv(t, "")
	p := e.start("")
	e.gl.WaitFor(procWait, "first daemon polling", func(s *coordinatortest.Server) bool {
		return s.CountOf("POST /api/v4/jobs/request") > 0
	})
	code, stderr := runOnce(t, []string{"PAAS_RUNNER_TEST_EXECUTOR_DIR=" + e.hosts}, e.config)
	if code != 2 || !strings.Contains(stderr, "in use by another paas-runner (pid ") {
		t.Fatalf("second daemon: exit %d: %s", code, stderr)
	}
	p.signal(syscall.SIGTERM)
	if c := p.wait(t); c != 0 {
		t.Fatalf("first daemon exit %d", c)
	}
}

func TestAllErrorsAtOnce(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.toml")
	os.WriteFile(cfg, []byte("concurrent = -1\nbogus = 2\n[[runners]]\nurl = \"nope\"\nexecutor = \"test-dir\"\n"), 0o600)
	code, stderr := runOnce(t, []string{"PAAS_RUNNER_TEST_EXECUTOR_DIR=" + dir}, cfg)
	if code != 2 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"c.toml:1: concurrent", "c.toml:2: bogus: unknown key", "c.toml:4: runners[0].url", "state_file: required", "runners[0].token: required"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("missing %q in:\n%s", want, stderr)
		}
	}
}

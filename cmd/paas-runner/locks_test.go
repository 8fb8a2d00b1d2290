package main_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/guard"
	"gitlab.com/paas-runner/paas-runner/internal/gitserve"
	"gitlab.com/paas-runner/paas-runner/job"
)

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

func TestLocksAndPoolCommandsGit(t *testing.T) {
	root := t.TempDir()
	if _, err := gitserve.MakeRepo(root, "ops/locks.git", map[string]string{
		"aws/claimed/.gitkeep": "", "aws/claimed/env-2": "b", "aws/unclaimed/.gitkeep": "", "aws/unclaimed/env-1": "a"}); err != nil {
		t.Fatal(err)
	}
	srv, err := gitserve.New(root, func(u, p string) bool { return u == "locks-bot" && p == "s3cret" })
	if err != nil {
		t.Skip(err)
	}
	defer srv.Close()
	dir := t.TempDir()
	pw := filepath.Join(dir, "token")
	os.WriteFile(pw, []byte("s3cret\n"), 0o600)
	cfg := filepath.Join(dir, "config.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`state_file = %q
[[runners]]
url = "https://gitlab.example"
token = "glrt-abcdefgh"
executor = "local-docker"
[guards]
backend = "git"
  [guards.git]
  url = %q
  username = "locks-bot"
  password_file = %q
  retry_delay = "10ms"
`, filepath.Join(dir, "state.json"), srv.URL+"/ops/locks.git", pw)), 0o600)
	show := func(args ...string) string {
		out, err := exec.Command("git", append([]string{"--git-dir", filepath.Join(root, "ops/locks.git")}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v %s", args, err, out)
		}
		return string(out)
	}
	md := filepath.Join(dir, "md")
	os.WriteFile(md, []byte("region=eu-north-1"), 0o600)
	if code, _, errs := runCLI(t, "pool", "add", cfg, "aws", "env-3", "--metadata-file", md); code != 0 {
		t.Fatalf("pool add: %d %s", code, errs)
	}
	if got := show("show", "main:aws/unclaimed/env-3"); got != "region=eu-north-1" {
		t.Fatalf("added lock %q", got)
	}
	if code, _, errs := runCLI(t, "pool", "add-claimed", cfg, "aws", "env-4"); code != 0 {
		t.Fatalf("pool add-claimed: %d %s", code, errs)
	}
	os.WriteFile(md, []byte("region=eu-south-1"), 0o600)
	if code, _, errs := runCLI(t, "pool", "update", cfg, "aws", "env-3", "--metadata-file", md); code != 0 {
		t.Fatalf("pool update: %d %s", code, errs)
	}
	if code, _, errs := runCLI(t, "pool", "remove", cfg, "aws", "env-1"); code != 0 {
		t.Fatalf("pool remove: %d %s", code, errs)
	}
	tree := show("ls-tree", "-r", "--name-only", "main")
	if !strings.Contains(tree, "aws/claimed/env-4\n") || strings.Contains(tree, "env-1") || show("show", "main:aws/unclaimed/env-3") != "region=eu-south-1" {
		t.Fatalf("tree:\n%s", tree)
	}
	code, out, errs := runCLI(t, "locks", cfg)
	if code != 0 || !strings.Contains(out, "pool:aws/env-2") || !strings.Contains(out, "someone outside paas-runner") || !strings.Contains(out, "aws   3") {
		t.Fatalf("locks: %d\n%s\n%s", code, out, errs)
	}
	// --json names the backend, and the git backend's branch
	code, out, errs = runCLI(t, "locks", "--json", cfg)
	if code != 0 || !strings.Contains(out, `"backend": "git",`) || !strings.Contains(out, `"branch": "main",`) {
		t.Fatalf("locks --json: %d\n%s\n%s", code, out, errs)
	}
	if code, _, errs := runCLI(t, "locks", "release", cfg, "pool:aws/env-2"); code != 2 || !strings.Contains(errs, "--yes") {
		t.Fatalf("release without --yes: %d %s", code, errs)
	}
	if code, _, errs := runCLI(t, "locks", "release", cfg, "pool:aws/env-2", "--yes"); code != 0 || !strings.Contains(errs, "released pool:aws/env-2, held by someone outside paas-runner") {
		t.Fatalf("release: %d %s", code, errs)
	}
	if !strings.Contains(show("ls-tree", "-r", "--name-only", "main"), "aws/unclaimed/env-2\n") {
		t.Fatal("not released")
	}
	if code, _, errs := runCLI(t, "pool", "fly", cfg, "aws", "x"); code != 2 || !strings.Contains(errs, "unknown pool operation") {
		t.Fatalf("bad op: %d %s", code, errs)
	}
}

func TestLocksCommandLocal(t *testing.T) {
	e := newEnv(t, "")
	be, err := guard.OpenLocal(e.state+".guards", nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := guard.NewManager(context.Background(), be, guard.Options{Daemon: "r_cli"})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := job.Parse([]byte(`{"id":7,"token":"tok","job_info":{"pipeline_id":70},"variables":[{"key":"CI_PROJECT_PATH","value":"acme/web"},{"key":"PAAS_LOCK","value":"production"}]}`))
	if _, err := m.Admit(context.Background(), "t1234567", a, func(string) {}, nil); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runCLI(t, "locks", e.config)
	if code != 0 || !strings.Contains(out, "lock:acme/web:production") || !strings.Contains(out, "job 7 (pipeline 70, project acme/web, runner t1234567, daemon r_cli)") {
		t.Fatalf("locks: %d\n%s\n%s", code, out, errs)
	}
	code, out, errs = runCLI(t, "locks", "--json", e.config)
	if code != 0 || !strings.Contains(out, `"backend": "local",`) || strings.Contains(out, `"branch"`) {
		t.Fatalf("locks --json: %d\n%s\n%s", code, out, errs)
	}
	if code, _, errs := runCLI(t, "locks", "release", e.config, "lock:acme/web:production", "--yes"); code != 0 {
		t.Fatalf("release: %d %s", code, errs)
	}
	st, err := guard.ReadLocal(e.state + ".guards")
	if err != nil || len(st.HeldBy(guard.JobRef{Daemon: "r_cli", Runner: "t1234567", JobID: 7}.Key())) != 0 {
		t.Fatalf("still held: %v %+v", err, st)
	}
}

// With the local backend and no state file (the daemon never ran), the
// locks verbs create nothing: release says there is no state file and
// fails, locks shows nothing held. (pool add makes the files: see
// TestPoolCommandsLocal.)
func TestLocksCommandsLocalNoStateFile(t *testing.T) {
	e := newEnv(t, "")
	list := func() string {
		var names []string
		ents, err := os.ReadDir(e.dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, de := range ents {
			names = append(names, de.Name())
		}
		return strings.Join(names, " ")
	}
	before := list()
	code, _, errs := runCLI(t, "locks", "release", e.config, "lock:acme/web:production", "--yes")
	if code != 1 || errs != "paas-runner: locks release: no state file "+e.state+": no lock is held (the daemon has not run with this configuration)\n" {
		t.Fatalf("release without a state file: exit %d, %q", code, errs)
	}
	if code, out, errs := runCLI(t, "locks", e.config); code != 0 || strings.Contains(out, "lock:") {
		t.Fatalf("locks without a state file: exit %d\n%s%s", code, out, errs)
	}
	// a mistyped subcommand is named as such, not taken for CONFIG
	if code, _, errs := runCLI(t, "locks", "relase", e.config, "lock:acme/web:production", "--yes"); code != 2 ||
		errs != "paas-runner: locks: unknown subcommand \"relase\" (the only one is release) (see paas-runner locks --help)\n" {
		t.Fatalf("locks relase: exit %d, %q", code, errs)
	}
	// the configuration's pools are shown before the daemon ever ran
	e2 := newEnv(t, "[[guards.pools]]\nname = \"aws\"\n[guards.pools.locks]\nenv-1 = \"region=eu-west-1\"\nenv-2 = \"region=eu-central-1\"\n")
	if code, out, errs := runCLI(t, "locks", e2.config); code != 0 || !regexp.MustCompile(`(?m)^aws\s+2\s+2$`).MatchString(out) {
		t.Fatalf("locks of a configured pool without a state file: exit %d\n%s%s", code, out, errs)
	}
	if _, err := os.Stat(e2.state + ".guards"); err == nil {
		t.Fatal("locks wrote the guards file")
	}
	if after := list(); after != before {
		t.Fatalf("the state directory changed: %q → %q", before, after)
	}
}

// pool-resource's operations on the local backend, with the daemon
// stopped: a pool and locks added before the first start (the files are
// made), a lock added to a configured pool, add-claimed; a job gets an
// added lock with its metadata and never the lock claimed outside
// paas-runner; the configuration's locks are the configuration's to
// change; a claimed lock is not updated; the added locks stay across
// restarts until removed, and a pool whose last lock is removed is gone.
func TestPoolCommandsLocal(t *testing.T) {
	e := newEnv(t, "[[guards.pools]]\nname = \"aws\"\n[guards.pools.locks]\nenv-1 = \"region=eu-west-1\"\n")
	md := filepath.Join(e.dir, "md")
	os.WriteFile(md, []byte("zone=europe-west1-b"), 0o600)
	cli := func(wantCode int, wantErr string, args ...string) {
		t.Helper()
		code, _, errs := runCLI(t, append([]string{"pool"}, args...)...)
		if code != wantCode || !strings.Contains(errs, wantErr) {
			t.Fatalf("pool %v: exit %d, %q; want %d and %q", args, code, errs, wantCode, wantErr)
		}
	}
	cli(0, "", "add", e.config, "gcp", "g-1", "--metadata-file", md)
	cli(0, "", "add-claimed", e.config, "gcp", "g-2")
	cli(0, "", "add", e.config, "aws", "env-9")
	cli(1, "lock gcp/g-1 exists", "add", e.config, "gcp", "g-1")
	cli(1, `lock aws/env-1 is declared in the configuration ([[guards.pools]] "aws", [guards.pools.locks]): remove it there`, "remove", e.config, "aws", "env-1")
	cli(1, `lock aws/env-1 is declared in the configuration ([[guards.pools]] "aws", [guards.pools.locks]): change its metadata there`, "update", e.config, "aws", "env-1")
	cli(1, "lock gcp/g-2 is claimed (by someone outside paas-runner): release it first", "update", e.config, "gcp", "g-2")
	os.WriteFile(md, []byte("zone=europe-west1-c"), 0o600)
	cli(0, "", "update", e.config, "gcp", "g-1", "--metadata-file", md)
	if code, out, errs := runCLI(t, "locks", e.config); code != 0 || !regexp.MustCompile(`(?m)^aws\s+2\s+2$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^gcp\s+2\s+1$`).MatchString(out) || !strings.Contains(out, "pool:gcp/g-2") {
		t.Fatalf("locks: %d\n%s%s", code, out, errs)
	}

	p := e.start("")
	a := guardedJob(e.gl, e.token, 600, "PAAS_POOL", "gcp")
	b := guardedJob(e.gl, e.token, 601, "PAAS_POOL", "aws/env-9")
	e.waitFile(filepath.Join(e.hosts, e.hostName(a.ID)+".launched"))
	e.waitFile(filepath.Join(e.hosts, e.hostName(b.ID)+".launched"))
	text := e.durableText()
	for _, v := range []string{`"key":"PAAS_POOL_GCP_NAME","value":"g-1"`, `"key":"PAAS_POOL_GCP_METADATA","value":"zone=europe-west1-c"`,
		`"key":"PAAS_POOL_AWS_NAME","value":"env-9"`} {
		if !strings.Contains(text, v) {
			t.Fatalf("a job was not handed %s:\n%s", v, text)
		}
	}
	c := guardedJob(e.gl, e.token, 602, "PAAS_POOL", "gcp")
	e.gl.WaitFor(procWait, "c waiting", func(s *coordinatortest.Server) bool {
		return s.TraceContains(c.ID, "waiting for pool gcp (2 of 2 locks claimed; 0 jobs ahead; oldest_first)")
	})
	e.gl.Finish(a.ID, "success")
	e.waitFile(filepath.Join(e.hosts, e.hostName(c.ID)+".launched"))
	e.gl.Finish(b.ID, "success")
	e.gl.Finish(c.ID, "success")
	e.waitNoHost()
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	cli(0, "", "remove", e.config, "gcp", "g-1")
	cli(0, "", "remove", e.config, "gcp", "g-2")
	cli(0, "", "remove", e.config, "aws", "env-9")
	p = e.start("")
	d := guardedJob(e.gl, e.token, 603, "PAAS_POOL", "gcp")
	f := guardedJob(e.gl, e.token, 604, "PAAS_POOL", "aws/env-9")
	for _, j := range []struct {
		id   int64
		want string
	}{{d.ID, `PAAS_POOL: pool "gcp" does not exist on this runner`}, {f.ID, `PAAS_POOL: pool "aws" has no lock "env-9" on this runner`}} {
		e.gl.WaitFor(procWait, "a job for a removed lock failed", func(s *coordinatortest.Server) bool { return s.StatusOf(j.id) == "failed" })
		if got := e.gl.Job(j.id); got.FailureReason != "script_failure" || !strings.Contains(string(got.Trace), j.want) {
			t.Fatalf("job %d: %s\n%s", j.id, got.FailureReason, got.Trace)
		}
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

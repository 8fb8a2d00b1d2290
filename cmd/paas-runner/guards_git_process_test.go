package main_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/internal/gitserve"
)

// lockRepo is a lock repository served over smart HTTP by git
// http-backend (basic auth, push enabled), as GitLab serves one.
type lockRepo struct {
	t    *testing.T
	root string
	url  string
	pw   string // password file
}

func newLockRepo(t *testing.T, files map[string]string) *lockRepo {
	return newLockRepoGated(t, files, nil)
}

// newLockRepoGated is newLockRepo whose server refuses every request
// (401) while down is set.
func newLockRepoGated(t *testing.T, files map[string]string, down *atomic.Bool) *lockRepo {
	t.Helper()
	root := t.TempDir()
	if _, err := gitserve.MakeRepo(root, "ops/locks.git", files); err != nil {
		t.Fatal(err)
	}
	srv, err := gitserve.New(root, func(u, p string) bool {
		return (down == nil || !down.Load()) && u == "locks-bot" && p == "s3cret"
	})
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(srv.Close)
	pw := filepath.Join(t.TempDir(), "locks.token")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &lockRepo{t: t, root: root, url: srv.URL + "/ops/locks.git", pw: pw}
}

// git runs the git CLI on the served bare repository.
func (r *lockRepo) git(args ...string) string {
	r.t.Helper()
	out, err := exec.Command("git", append([]string{"--git-dir", filepath.Join(r.root, "ops/locks.git")}, args...)...).CombinedOutput()
	if err != nil {
		r.t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// guardsSection is the [guards] section of a daemon on this repository.
func (r *lockRepo) guardsSection(extra string) string {
	return fmt.Sprintf(`[guards]
backend = "git"
%s
  [guards.git]
  url = %q
  username = "locks-bot"
  password_file = %q
  retry_delay = "50ms"
`, extra, r.url, r.pw)
}

// gitDaemonEnv is one daemon of several sharing gl: its own directory
// (config, state file, system_id, hosts) and runner token.
func gitDaemonEnv(t *testing.T, gl *coordinatortest.Server, name, top, guards string) *env {
	e := &env{t: t, dir: t.TempDir(), gl: gl, token: "glrt-" + name + "-0123456789"}
	e.hosts = filepath.Join(e.dir, "hosts")
	if err := os.Mkdir(e.hosts, 0o700); err != nil {
		t.Fatal(err)
	}
	e.state = filepath.Join(e.dir, "state.json")
	e.config = filepath.Join(e.dir, "config.toml")
	gl.AddRunner(e.token)
	cfg := fmt.Sprintf(`concurrent = 10
check_interval = 0.05
shutdown_timeout = 20
state_file = %q
%s
%s
[[runners]]
name = %q
url = %q
token = %q
executor = "test-dir"
`, e.state, top, guards, name, gl.URL, e.token)
	if err := os.WriteFile(e.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

// guardedJob queues for runner token a job of acme/web declaring vars.
func guardedJob(gl *coordinatortest.Server, token string, pipeline int, vars ...string) *coordinatortest.Job {
	vs := []map[string]any{
		{"key": "CI_PROJECT_PATH", "value": "acme/web", "public": true},
		{"key": "CI_PROJECT_ROOT_NAMESPACE", "value": "acme", "public": true},
	}
	for i := 0; i+1 < len(vars); i += 2 {
		vs = append(vs, map[string]any{"key": vars[i], "value": vars[i+1], "public": true})
	}
	return gl.Enqueue(token, map[string]any{
		"job_info":  map[string]any{"name": "deploy", "project_id": 1, "pipeline_id": pipeline, "project_full_path": "acme/web"},
		"variables": vs})
}

var hostLaunchedRe = regexp.MustCompile(`^host-.*-(\d+)\.launched$`)

// finishLaunched ends in GitLab every job whose host was launched in one
// of dirs, until done says to stop; it returns the jobs it ended.
func finishLaunched(t *testing.T, gl *coordinatortest.Server, dirs []string, done func() bool) map[int64]bool {
	t.Helper()
	ended := map[int64]bool{}
	deadline := time.Now().Add(15 * time.Minute)
	for !done() {
		for _, d := range dirs {
			ents, _ := os.ReadDir(d)
			for _, ent := range ents {
				m := hostLaunchedRe.FindStringSubmatch(ent.Name())
				if m == nil {
					continue
				}
				id, _ := strconv.ParseInt(m[1], 10, 64)
				if !ended[id] {
					ended[id] = true
					gl.Finish(id, "success")
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out: %d jobs ended", len(ended))
		}
		// hosts are files made by other processes: no event to wait on
		time.Sleep(5 * time.Millisecond)
	}
	return ended
}

// Two daemon processes share one lock repository served by git
// http-backend: 200 jobs, half queued for each daemon's runner, all
// declaring the same project lock. Both daemons' test executors append to
// one launches.log (hostsB/launches.log is a link to hostsA's): a launch is
// appended after the claim commit was pushed, a host removal before the
// release, so in that one log, between a job's launch and its host's
// removal, no other job may be launched. Every job runs once, and at the
// end nothing is claimed or waiting in the repository.
func TestGitTwoDaemonsOneMutex(t *testing.T) {
	// The issue asks for 200; on the shared 2-core machine under load that
	// takes 3 to 5 minutes (a hand-off between the daemons is two pushed
	// commits and a fetch through git http-backend), so the default run
	// does 60: PAAS_RUNNER_GIT_CONTENTION_JOBS=200 runs the figure.
	n := 60
	if v, err := strconv.Atoi(os.Getenv("PAAS_RUNNER_GIT_CONTENTION_JOBS")); err == nil && v > 0 {
		n = v
	} else if testing.Short() {
		n = 20
	}
	repo := newLockRepo(t, map[string]string{"README.md": "paas-runner locks\n"})
	gl := coordinatortest.New(t)
	a := gitDaemonEnv(t, gl, "alpha", "", repo.guardsSection(""))
	b := gitDaemonEnv(t, gl, "bravo", "", repo.guardsSection(""))
	if err := os.Symlink(filepath.Join(a.hosts, "launches.log"), filepath.Join(b.hosts, "launches.log")); err != nil {
		t.Fatal(err)
	}
	pa, pb := a.start(""), b.start("")
	for i := 0; i < n; i++ {
		e := a
		if i%2 == 1 {
			e = b
		}
		guardedJob(gl, e.token, 1000+i, "PAAS_LOCK", "production")
	}
	start := time.Now()
	allDone := func() bool {
		for _, j := range gl.Jobs() {
			if j.Status != "success" {
				return false
			}
		}
		for _, d := range []string{a.hosts, b.hosts} {
			if m, _ := filepath.Glob(filepath.Join(d, "*.host")); len(m) > 0 {
				return false
			}
		}
		return true
	}
	ended := finishLaunched(t, gl, []string{a.hosts, b.hosts}, allDone)
	t.Logf("%d contended acquisitions over two daemons in %v", n, time.Since(start).Round(time.Millisecond))
	if len(ended) != n {
		t.Fatalf("%d jobs launched, want %d", len(ended), n)
	}
	pa.signal(syscall.SIGTERM)
	pb.signal(syscall.SIGTERM)
	if code := pa.wait(t); code != 0 {
		t.Fatalf("daemon a: exit %d", code)
	}
	if code := pb.wait(t); code != 0 {
		t.Fatalf("daemon b: exit %d", code)
	}

	// one global order of launches and host removals
	logData, err := os.ReadFile(filepath.Join(a.hosts, "launches.log"))
	if err != nil {
		t.Fatal(err)
	}
	holder := ""
	launched := map[string]int{}
	perDaemon := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(string(logData)), "\n") {
		if name, ok := strings.CutPrefix(l, "removed "); ok {
			if holder == "" || name != hostOf(holder) {
				t.Fatalf("host %s removed while %q holds the lock", name, holder)
			}
			holder = ""
			continue
		}
		if holder != "" {
			t.Fatalf("%s launched while %s holds the lock (its host not removed yet)", l, holder)
		}
		holder = l
		launched[l]++
		perDaemon[strings.SplitN(l, "/", 2)[0]]++
	}
	if holder != "" {
		t.Fatalf("%s never removed", holder)
	}
	if len(launched) != n || len(perDaemon) != 2 {
		t.Fatalf("%d jobs launched (want %d), by runner %v", len(launched), n, perDaemon)
	}
	for k, c := range launched {
		if c != 1 {
			t.Fatalf("%s launched %d times", k, c)
		}
	}
	for _, j := range gl.Jobs() {
		if j.Acquisitions != 1 {
			t.Fatalf("job %d acquired %d times", j.ID, j.Acquisitions)
		}
	}
	// no lost release: nothing claimed, held or waiting
	tree := repo.git("ls-tree", "-r", "--name-only", "main")
	if strings.Contains(tree, "/claimed/lock") || strings.Contains(tree, ".paas-runner/") {
		t.Fatalf("the repository after every job ended:\n%s", tree)
	}
	commits := strings.Count(repo.git("log", "--format=%s", "main"), "\n")
	t.Logf("%d commits", commits)
}

// hostOf is the host name of a launches.log line "<runner>/<job id>".
func hostOf(line string) string {
	r, id, _ := strings.Cut(line, "/")
	return "host-" + r + "-" + id
}

// blobs maps each path of a commit's tree to its blob id.
func (r *lockRepo) blobs(rev string) map[string]string {
	out := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(r.git("ls-tree", "-r", rev)), "\n") {
		meta, path, ok := strings.Cut(l, "\t")
		if f := strings.Fields(meta); ok && len(f) == 3 {
			out[path] = f[2]
		}
	}
	return out
}

// durableText is the state file and its journal as text: a job's payload,
// with the variables its guards added, is in one of them while it is
// being provisioned.
func (e *env) durableText() string {
	a, _ := os.ReadFile(e.state)
	b, _ := os.ReadFile(e.state + ".journal")
	return string(a) + string(b)
}

// A repository laid out by hand as Concourse's pool-resource documents it
// is a pool as it is: a job with PAAS_POOL gets a free lock, its name and
// metadata; a lock claimed by Concourse is never taken; claims and releases
// move the lock files and never rewrite them (every commit's lock files
// are the blobs made by hand), and the layout (.gitkeep, README) stays.
func TestGitConcoursePoolProcess(t *testing.T) {
	repo := newLockRepo(t, map[string]string{
		"README.md":              "locks\n",
		"aws/claimed/.gitkeep":   "",
		"aws/claimed/env-2":      "region=eu-central-1\n", // a Concourse pipeline holds it
		"aws/unclaimed/.gitkeep": "",
		"aws/unclaimed/env-1":    "region=eu-west-1\n",
	})
	orig := repo.blobs("main")
	gl := coordinatortest.New(t)
	e := gitDaemonEnv(t, gl, "pool", "", repo.guardsSection("")+"[[guards.pools]]\nname = \"aws\"\nnamespaces = [\"acme\"]\n")
	p := e.start("provision")
	a := guardedJob(gl, e.token, 500, "PAAS_POOL", "aws")
	e.waitFile(filepath.Join(e.hosts, e.hostName(a.ID)+".holding-provision"))
	text := e.durableText()
	for _, v := range []string{`"key":"PAAS_POOL_AWS_NAME","value":"env-1"`, `"key":"PAAS_POOL_AWS_METADATA","value":"region=eu-west-1\n"`,
		`"key":"PAAS_POOL_NAME","value":"env-1"`, `"key":"PAAS_POOL_METADATA","value":"region=eu-west-1\n"`, `"key":"PAAS_LOCKS","value":"aws/env-1"`} {
		if !strings.Contains(text, v) {
			t.Fatalf("the job was not handed %s:\n%s", v, text)
		}
	}
	if b := repo.blobs("main"); b["aws/claimed/env-1"] != orig["aws/unclaimed/env-1"] || b["aws/claimed/env-2"] != orig["aws/claimed/env-2"] {
		t.Fatalf("claimed: %v", b)
	}
	// the next job waits: env-2 is Concourse's, env-1 job a's
	b := guardedJob(gl, e.token, 501, "PAAS_POOL", "aws")
	gl.WaitFor(procWait, "b waiting", func(s *coordinatortest.Server) bool {
		return s.TraceContains(b.ID, "waiting for pool aws (2 of 2 locks claimed; 0 jobs ahead; oldest_first)")
	})
	// another namespace may not use the pool: it fails at once, without metadata
	other := gl.Enqueue(e.token, map[string]any{
		"job_info": map[string]any{"name": "deploy", "project_id": 2, "pipeline_id": 502, "project_full_path": "beta/app"},
		"variables": []map[string]any{{"key": "CI_PROJECT_PATH", "value": "beta/app", "public": true},
			{"key": "CI_PROJECT_ROOT_NAMESPACE", "value": "beta", "public": true}, {"key": "PAAS_POOL", "value": "aws", "public": true}}})
	gl.WaitFor(procWait, "the other namespace's job failed", func(s *coordinatortest.Server) bool { return s.StatusOf(other.ID) == "failed" })
	if tr := gl.Job(other.ID).Trace; !strings.Contains(string(tr), `pool "aws" is not open to namespace "beta"`) || strings.Contains(string(tr), "region=") {
		t.Fatalf("the other namespace's job log:\n%s", tr)
	}
	if err := os.WriteFile(filepath.Join(e.hosts, "release"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	e.waitFile(filepath.Join(e.hosts, e.hostName(a.ID)+".launched"))
	gl.Finish(a.ID, "success")
	e.waitFile(filepath.Join(e.hosts, e.hostName(b.ID)+".launched"))
	gl.Finish(b.ID, "success")
	e.waitNoHost()
	p.signal(syscall.SIGTERM) // the release being pushed is waited for
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	final := repo.blobs("main")
	for path, id := range orig {
		moved := strings.Replace(strings.Replace(path, "/claimed/env-1", "/unclaimed/env-1", 1), "/unclaimed/env-2", "/claimed/env-2", 1)
		if final[moved] != id {
			t.Fatalf("%s: %q, want %q as made by hand; tree %v", moved, final[moved], id, final)
		}
	}
	// no commit rewrote a lock file: every lock file of every commit is one
	// of the blobs made by hand
	md := map[string]bool{orig["aws/unclaimed/env-1"]: true, orig["aws/claimed/env-2"]: true}
	commits := strings.Fields(repo.git("rev-list", "main"))
	if len(commits) < 5 {
		t.Fatalf("%d commits: claims and releases not pushed", len(commits))
	}
	for _, c := range commits {
		for path, id := range repo.blobs(c) {
			if strings.HasPrefix(path, "aws/") && !strings.HasSuffix(path, "/.gitkeep") && !md[id] {
				t.Fatalf("commit %s rewrote %s", c, path)
			}
		}
	}
}

// waitNoHost waits until every host of e is removed.
func (e *env) waitNoHost() {
	e.t.Helper()
	deadline := time.Now().Add(procWait)
	for {
		if m, _ := filepath.Glob(filepath.Join(e.hosts, "*.host")); len(m) == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatal("hosts not removed")
		}
		time.Sleep(10 * time.Millisecond) // another process removes them
	}
}

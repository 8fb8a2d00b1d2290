package guard

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"gitlab.com/paas-runner/paas-runner/internal/gitserve"
)

type gitEnv struct {
	t    *testing.T
	srv  *gitserve.Server
	root string
	url  string
}

// newGitEnv serves a bare repository made from files over smart HTTP
// (git http-backend, basic auth, push enabled).
func newGitEnv(t *testing.T, files map[string]string) *gitEnv {
	t.Helper()
	root := t.TempDir()
	if _, err := gitserve.MakeRepo(root, "ops/locks.git", files); err != nil {
		t.Fatal(err)
	}
	srv, err := gitserve.New(root, func(u, p string) bool { return u == "locks-bot" && p == "s3cret" })
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(srv.Close)
	return &gitEnv{t: t, srv: srv, root: root, url: srv.URL + "/ops/locks.git"}
}

// newGitEnvB is newGitEnv for benchmarks: it returns the repository URL.
func newGitEnvB(b *testing.B, files map[string]string) string {
	root := b.TempDir()
	if _, err := gitserve.MakeRepo(root, "ops/locks.git", files); err != nil {
		b.Fatal(err)
	}
	srv, err := gitserve.New(root, func(u, p string) bool { return u == "locks-bot" && p == "s3cret" })
	if err != nil {
		b.Skip(err)
	}
	b.Cleanup(srv.Close)
	return srv.URL + "/ops/locks.git"
}

type gitDaemon struct {
	m      *Manager
	be     *Git
	offset atomic.Int64
}

func (g *gitEnv) daemon(id string, ctx context.Context) *gitDaemon {
	g.t.Helper()
	d := &gitDaemon{}
	be, err := OpenGit(ctx, GitOptions{URL: g.url, Branch: "main", Username: "locks-bot", Password: "s3cret", RetryDelay: 5 * time.Millisecond, Daemon: id})
	if err != nil {
		g.t.Fatal(err)
	}
	m, err := NewManager(ctx, be, Options{Daemon: id, Policy: &Policy{DefaultMode: OldestFirst}, LeaseMargin: time.Millisecond,
		Refresh: 10 * time.Millisecond, Logger: zaptest.NewLogger(g.t),
		Now: func() time.Time { return time.Now().Add(time.Duration(d.offset.Load())) }})
	if err != nil {
		g.t.Fatal(err)
	}
	d.m, d.be = m, be
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { m.Run(rctx); close(done) }()
	g.t.Cleanup(func() { cancel(); <-done })
	return d
}

// git runs the git CLI on a clone, to look at the repository as Concourse would.
func (g *gitEnv) show(args ...string) string {
	g.t.Helper()
	cmd := exec.Command("git", append([]string{"--git-dir", filepath.Join(g.root, "ops/locks.git")}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		g.t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func (d *gitDaemon) admit(t *testing.T, ctx context.Context, j *tjob) <-chan result {
	ch := make(chan result, 1)
	a := j.acquired(t)
	go func() {
		vs, err := d.m.Admit(ctx, "runner1", a, j.logf, nil)
		ch <- result{vs, err}
	}()
	return ch
}

var concourseRepo = map[string]string{
	"README.md":                              "locks\n",
	"aws/claimed/.gitkeep":                   "",
	"aws/claimed/env-2":                      "region=eu-central-1\n", // claimed by a Concourse pipeline
	"aws/unclaimed/.gitkeep":                 "",
	"aws/unclaimed/env-1":                    "region=eu-west-1\n",
	"ping-pong-tables/claimed/.gitkeep":      "",
	"ping-pong-tables/unclaimed/.gitkeep":    "",
	"ping-pong-tables/unclaimed/north-table": "",
}

// A repository laid out by hand as pool-resource documents it is used as
// it is; claims and releases move files and keep their content.
func TestGitConcourseRepository(t *testing.T) {
	g := newGitEnv(t, concourseRepo)
	ctx := context.Background()
	d := g.daemon("r_aaaaaaaaaaaa", ctx)
	j1 := &tjob{id: 4711, pipeline: 230, timeout: 3600, vars: map[string]string{VarPool: "aws"}}
	r := get(t, d.admit(t, ctx, j1))
	if r.err != nil || r.vars.Get("PAAS_POOL_AWS_NAME") != "env-1" || r.vars.Get("PAAS_POOL_METADATA") != "region=eu-west-1\n" {
		t.Fatalf("%+v", r)
	}
	if got := g.show("show", "main:aws/claimed/env-1"); got != "region=eu-west-1\n" {
		t.Fatalf("claimed file content %q", got)
	}
	log := g.show("log", "-1", "--format=%B", "main")
	if !strings.Contains(log, "claiming: aws/env-1 for job 4711 (pipeline 230, project acme/web, runner runner1, daemon r_aaaaaaaaaaaa, lease until ") {
		t.Fatalf("commit message %q", log)
	}
	j2 := &tjob{id: 4712, pipeline: 231, timeout: 3600, vars: map[string]string{VarPool: "aws"}}
	ch := d.admit(t, ctx, j2)
	waitLine(t, j2, "waiting for pool aws (2 of 2 locks claimed; 0 jobs ahead; oldest_first)")
	d.m.Release("runner1", 4711)
	if r := get(t, ch); r.err != nil || r.vars.Get("PAAS_POOL_AWS_NAME") != "env-1" {
		t.Fatalf("%+v", r)
	}
	// the release handed env-1 over in the same commit: a live lease,
	// released, not an expired one broken
	log = g.show("log", "--format=%B", "main")
	if strings.Contains(log, "is broken") || !strings.Contains(log, "claiming: aws/env-1 for job 4712 (pipeline 231") ||
		!regexp.MustCompile(`claiming: aws/env-1 for job 4712 \([^)]*\), released by job 4711 `).MatchString(log) {
		t.Fatalf("hand-over commit message:\n%s", log)
	}
	d.m.Release("runner1", 4712)
	tree := g.show("ls-tree", "-r", "--name-only", "main")
	for _, want := range []string{"aws/unclaimed/env-1", "aws/claimed/env-2", "aws/claimed/.gitkeep", "ping-pong-tables/unclaimed/north-table", "README.md"} {
		if !strings.Contains(tree, want+"\n") {
			t.Errorf("tree lacks %s:\n%s", want, tree)
		}
	}
	if strings.Contains(tree, ".paas-runner/") {
		t.Errorf("metadata left after every job ended:\n%s", tree)
	}
	if got := g.show("show", "main:aws/claimed/env-2"); got != "region=eu-central-1\n" {
		t.Fatalf("Concourse's claim touched: %q", got)
	}
	// a mutex lock: a one-lock pool under the reserved naming
	r = get(t, d.admit(t, ctx, &tjob{id: 1, pipeline: 1, timeout: 3600, vars: map[string]string{VarLock: "production"}}))
	if r.err != nil {
		t.Fatal(r.err)
	}
	tree = g.show("ls-tree", "-r", "--name-only", "main")
	if want := MutexDir(projectPool("acme/web", "production")) + "/claimed/lock"; !strings.Contains(tree, want) {
		t.Fatalf("tree lacks %s:\n%s", want, tree)
	}
}

// Two daemons share one repository: a mutex is never held by two jobs at
// once, every job gets it, and rejected pushes are retried.
func TestGitTwoDaemonsContend(t *testing.T) {
	g := newGitEnv(t, map[string]string{"README.md": "locks\n"})
	ctx := context.Background()
	ds := []*gitDaemon{g.daemon("r_aaaaaaaaaaaa", ctx), g.daemon("r_bbbbbbbbbbbb", ctx)}
	perDaemon := 12
	if n := os.Getenv("PAAS_RUNNER_GUARD_CONTENTION"); n != "" {
		fmt.Sscan(n, &perDaemon) // the 200 acquisitions: 100
	}
	type interval struct {
		job        int64
		start, end time.Time
	}
	var mu sync.Mutex
	var intervals []interval
	var holding atomic.Int32
	var wg sync.WaitGroup
	for di, d := range ds {
		for i := 0; i < perDaemon; i++ {
			id := int64(di*1000 + i + 1)
			j := &tjob{id: id, pipeline: id, timeout: 3600, vars: map[string]string{VarLock: "deploy"}}
			d := d
			wg.Add(1)
			go func() {
				defer wg.Done()
				var r result
				select { // the last of the queue waits for all the others
				case r = <-d.admit(t, ctx, j):
				case <-time.After(10 * time.Minute):
					t.Errorf("job %d never got the lock", id)
					return
				}
				if r.err != nil {
					t.Errorf("job %d: %v", id, r.err)
					return
				}
				if n := holding.Add(1); n != 1 {
					t.Errorf("%d holders at once", n)
				}
				iv := interval{job: id, start: time.Now()}
				time.Sleep(time.Millisecond) // the job's work
				iv.end = time.Now()
				holding.Add(-1)
				mu.Lock()
				intervals = append(intervals, iv)
				mu.Unlock()
				d.m.Release("runner1", id)
			}()
		}
	}
	wg.Wait()
	if len(intervals) != 2*perDaemon {
		t.Fatalf("%d of %d jobs held the lock", len(intervals), 2*perDaemon)
	}
	for i, a := range intervals {
		for _, b := range intervals[i+1:] {
			if a.start.Before(b.end) && b.start.Before(a.end) {
				t.Fatalf("jobs %d and %d held the lock at once", a.job, b.job)
			}
		}
	}
	c1, x1 := ds[0].be.Stats()
	c2, x2 := ds[1].be.Stats()
	t.Logf("commits %d+%d, rejected pushes %d+%d", c1, c2, x1, x2)
	if tree := g.show("ls-tree", "-r", "--name-only", "main"); strings.Contains(tree, "claimed/lock") && !strings.Contains(tree, "unclaimed/lock") {
		if strings.Contains(tree, "/claimed/lock") {
			t.Fatalf("lock still claimed:\n%s", tree)
		}
	}
}

// Modes hold across daemons: waiters are in the repository, so a newer
// pipeline waiting on another daemon does not overtake an older one.
func TestGitOrderAcrossDaemons(t *testing.T) {
	g := newGitEnv(t, map[string]string{"README.md": "locks\n"})
	ctx := context.Background()
	a, b := g.daemon("r_aaaaaaaaaaaa", ctx), g.daemon("r_bbbbbbbbbbbb", ctx)
	get(t, a.admit(t, ctx, &tjob{id: 1, pipeline: 10, timeout: 3600, vars: map[string]string{VarLock: "x"}}))
	older := &tjob{id: 2, pipeline: 11, timeout: 3600, vars: map[string]string{VarLock: "x"}}
	och := a.admit(t, ctx, older)
	waitLine(t, older, "waiting for lock x (held by job 1, pipeline 10 on main")
	newer := &tjob{id: 3, pipeline: 12, timeout: 3600, vars: map[string]string{VarLock: "x"}}
	nch := b.admit(t, ctx, newer)
	waitLine(t, newer, "1 job ahead")
	a.m.Release("runner1", 1)
	if r := get(t, och); r.err != nil {
		t.Fatal(r.err)
	}
	select {
	case r := <-nch:
		t.Fatalf("the newer pipeline overtook: %+v", r)
	default:
	}
	a.m.Release("runner1", 2)
	if r := get(t, nch); r.err != nil {
		t.Fatal(r.err)
	}
}

// A daemon that never comes back: its lease expires and the other daemon
// proceeds; a live lease is never broken.
func TestGitLeaseBrokenByAnotherDaemon(t *testing.T) {
	g := newGitEnv(t, map[string]string{"README.md": "locks\n"})
	ctx := context.Background()
	dead, live := g.daemon("r_aaaaaaaaaaaa", ctx), g.daemon("r_bbbbbbbbbbbb", ctx)
	// job 1's lease (its timeout + 1 ms margin) outlasts the test in real
	// time; the live daemon's clock is moved past it
	get(t, dead.admit(t, ctx, &tjob{id: 1, pipeline: 1, timeout: 600, vars: map[string]string{VarLock: "x"}}))
	j := &tjob{id: 2, pipeline: 2, timeout: 3600, vars: map[string]string{VarLock: "x"}}
	ch := live.admit(t, ctx, j)
	waitLine(t, j, "held by job 1")
	select {
	case r := <-ch:
		t.Fatalf("a live lease was broken: %+v", r)
	default:
	}
	live.offset.Store(int64(time.Hour)) // job 1's lease is over
	if r := get(t, ch); r.err != nil {
		t.Fatal(r.err)
	}
	if log := g.show("log", "--format=%B", "main"); !strings.Contains(log, "; the expired lease of job 1 (pipeline 1") {
		t.Fatalf("no lease break commit:\n%s", log)
	}
}

// An unreachable repository: guarded jobs say so and keep waiting; jobs
// without guards go on.
func TestGitUnreachable(t *testing.T) {
	g := newGitEnv(t, map[string]string{"README.md": "locks\n"})
	url := g.url
	g.srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	be, err := OpenGit(ctx, GitOptions{URL: url, Username: "locks-bot", Password: "s3cret", RetryDelay: time.Millisecond, Daemon: "r_x"})
	if err == nil {
		t.Fatal("no error from an unreachable repository")
	}
	m, err := NewManager(ctx, be, Options{Daemon: "r_x", Logger: zaptest.NewLogger(t), Refresh: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	d := &gitDaemon{m: m, be: be}
	if r := get(t, d.admit(t, ctx, &tjob{id: 1, pipeline: 1})); r.err != nil || r.vars != nil {
		t.Fatalf("unguarded job: %+v", r)
	}
	j := &tjob{id: 2, pipeline: 2, vars: map[string]string{VarLock: "x", VarPool: "aws"}}
	ch := d.admit(t, ctx, j)
	waitLine(t, j, "the lock store is unreachable (cloning the lock repository http://127.0.0.1:")
	for _, l := range j.lines() {
		if strings.Contains(l, "s3cret") {
			t.Fatal("the password in the job log")
		}
	}
	cancel()
	if r := get(t, ch); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("%+v", r)
	}
}

func TestGitNotPoolLayout(t *testing.T) {
	g := newGitEnv(t, map[string]string{"src/main.go": "package main\n", "docs/x/y": "z"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	be, err := OpenGit(ctx, GitOptions{URL: g.url, Username: "locks-bot", Password: "s3cret", Daemon: "r_x"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = be.Update(ctx, func(*State) bool { return false })
	if !errors.Is(err, ErrNotPoolLayout) {
		t.Fatalf("%v", err)
	}
	m, _ := NewManager(ctx, be, Options{Daemon: "r_x", Logger: zaptest.NewLogger(t)})
	j := &tjob{id: 2, pipeline: 2, vars: map[string]string{VarLock: "x"}}
	ch := (&gitDaemon{m: m, be: be}).admit(t, ctx, j)
	waitLine(t, j, "its locks: the lock repository is not in pool-resource layout (fix it, or guards.git.url) (the lock repository has directories but none with claimed/ or unclaimed/ files: not in pool-resource layout); retrying")
	for _, l := range j.lines() {
		if strings.Contains(l, "unreachable") {
			t.Fatalf("a repository that answers called unreachable: %q", l)
		}
	}
	cancel()
	get(t, ch)
	_ = fmt.Sprint(os.Getpid())
}

// A pool added to the repository after the daemon's last fetch (by
// `paas-runner pool add`, or Concourse) is usable at once: a daemon with
// no waiting job does not fetch, so a pool it has not seen is looked up
// in the repository before the job is failed for naming it.
func TestGitPoolAddedSinceTheLastFetch(t *testing.T) {
	g := newGitEnv(t, concourseRepo)
	ctx := context.Background()
	d := g.daemon("r_aaaaaaaaaaaa", ctx)
	op, err := OpenGit(ctx, GitOptions{URL: g.url, Username: "locks-bot", Password: "s3cret", Daemon: "operator"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := op.Update(ctx, func(s *State) bool {
		changed, _, err := PoolOp(s, "add", "gcp", "g-1", "zone=europe-west1-b", nil)
		return err == nil && changed
	}); err != nil {
		t.Fatal(err)
	}
	r := get(t, d.admit(t, ctx, &tjob{id: 1, pipeline: 1, timeout: 3600, vars: map[string]string{VarPool: "gcp"}}))
	if r.err != nil || r.vars.Get("PAAS_POOL_GCP_METADATA") != "zone=europe-west1-b" {
		t.Fatalf("a job for a pool added since the daemon's last fetch: %+v", r)
	}
	// a pool that is in the repository neither
	r = get(t, d.admit(t, ctx, &tjob{id: 2, pipeline: 2, timeout: 3600, vars: map[string]string{VarPool: "azure"}}))
	if r.err == nil || !strings.Contains(r.err.Error(), `pool "azure" does not exist on this runner`) {
		t.Fatalf("%+v", r)
	}
}

// concourse moves lock files in a clone of the repository with the git
// CLI and pushes, as a Concourse pipeline (or an operator) would: no hold
// file is touched.
func (g *gitEnv) concourse(moves ...[2]string) {
	g.t.Helper()
	dir := filepath.Join(g.t.TempDir(), "clone")
	run := func(args ...string) {
		g.t.Helper()
		cmd := exec.Command("git", append([]string{"-c", "user.name=concourse", "-c", "user.email=ci@example.invalid"}, args...)...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			g.t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	if out, err := exec.Command("git", "clone", "-q", "-b", "main", filepath.Join(g.root, "ops/locks.git"), dir).CombinedOutput(); err != nil {
		g.t.Fatalf("git clone: %v\n%s", err, out)
	}
	for _, mv := range moves {
		run("mv", mv[0], mv[1])
		run("commit", "-q", "-m", "concourse: "+mv[0]+" -> "+mv[1])
	}
	run("push", "-q", "origin", "main")
}

// A lock claimed by paas-runner, released by hand (or by Concourse) and
// then claimed by a Concourse pipeline, is Concourse's: the hold file
// paas-runner left is stale. The job's release does not take Concourse's
// claim away, its lease is not broken when it runs out, a daemon started
// afterwards (a fresh clone) does not read the stale hold either, and the
// stale file is removed in a commit that says so.
func TestGitStaleHoldIsNotTaken(t *testing.T) {
	g := newGitEnv(t, concourseRepo)
	ctx := context.Background()
	d := g.daemon("r_aaaaaaaaaaaa", ctx)
	if r := get(t, d.admit(t, ctx, &tjob{id: 1, pipeline: 1, timeout: 3600, vars: map[string]string{VarPool: "aws/env-1"}})); r.err != nil {
		t.Fatal(r.err)
	}
	g.show("show", "main:.paas-runner/holds/aws/env-1") // the hold file
	g.concourse([2]string{"aws/claimed/env-1", "aws/unclaimed/env-1"}, [2]string{"aws/unclaimed/env-1", "aws/claimed/env-1"})
	// a fresh clone (another daemon, or this one restarted) sees no hold
	// of job 1: env-1 is held outside paas-runner
	fresh, err := OpenGit(ctx, GitOptions{URL: g.url, Username: "locks-bot", Password: "s3cret", Daemon: "r_bbbbbbbbbbbb"})
	if err != nil {
		t.Fatal(err)
	}
	st, err := fresh.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h := st.Pools["aws"].Locks["env-1"].Holder; h == nil || h.JobID != 0 {
		t.Fatalf("after Concourse's claim, env-1 is held by %+v", h)
	}
	d.m.Release("runner1", 1)
	d.m.Wait()
	d.offset.Store(int64(2 * time.Hour)) // job 1's lease would have run out
	if _, err := d.be.Update(ctx, func(*State) bool { return false }); err != nil {
		t.Fatal(err)
	}
	d.m.Nudge()
	d.m.Wait()
	tree := g.show("ls-tree", "-r", "--name-only", "main")
	if !strings.Contains(tree, "aws/claimed/env-1\n") || strings.Contains(tree, "aws/unclaimed/env-1\n") {
		t.Fatalf("Concourse's claim of env-1 was taken away:\n%s", tree)
	}
	if strings.Contains(tree, ".paas-runner/holds/aws/env-1") {
		t.Fatalf("the stale hold file is still there:\n%s", tree)
	}
	if log := g.show("log", "--format=%B", "main"); !strings.Contains(log, "forgetting: .paas-runner/holds/aws/env-1 (its lock was claimed or released outside paas-runner since)") {
		t.Fatalf("no commit removed the stale hold:\n%s", log)
	}
	// a paas-runner claim after Concourse's release is paas-runner's again
	d.offset.Store(0)
	g.concourse([2]string{"aws/claimed/env-1", "aws/unclaimed/env-1"})
	r := get(t, d.admit(t, ctx, &tjob{id: 2, pipeline: 2, timeout: 3600, vars: map[string]string{VarPool: "aws/env-1"}}))
	if r.err != nil {
		t.Fatal(r.err)
	}
	if st, _ := d.m.Snapshot(); st.Pools["aws"].Locks["env-1"].Holder == nil || st.Pools["aws"].Locks["env-1"].Holder.JobID != 2 {
		t.Fatalf("env-1 held by %+v, want job 2", st.Pools["aws"].Locks["env-1"].Holder)
	}
	d.m.Release("runner1", 2)
	d.m.Wait()
	if tree := g.show("ls-tree", "-r", "--name-only", "main"); !strings.Contains(tree, "aws/unclaimed/env-1\n") {
		t.Fatalf("job 2's release not pushed:\n%s", tree)
	}
}

// The pool metrics of a daemon with no waiting job (which does not fetch
// the repository otherwise) follow the repository: a scrape reads it
// again in the background when what the daemon read is older than
// retry_delay, so the next scrape shows a lock added meanwhile.
func TestGitPoolMetricsFollowTheRepository(t *testing.T) {
	g := newGitEnv(t, concourseRepo)
	ctx := context.Background()
	d := g.daemon("r_aaaaaaaaaaaa", ctx)
	reg := prometheus.NewPedanticRegistry()
	for _, c := range d.m.Collectors() {
		reg.MustRegister(c)
	}
	if got := gather(t, reg); !contains(got, `resource_pool_num_available_locks{branch="main",pool="aws"} 1`) {
		t.Fatalf("metrics: %v", got)
	}
	op, err := OpenGit(ctx, GitOptions{URL: g.url, Username: "locks-bot", Password: "s3cret", Daemon: "operator"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := op.Update(ctx, func(s *State) bool {
		changed, _, err := PoolOp(s, "add", "aws", "env-3", "region=eu-north-1", nil)
		return err == nil && changed
	}); err != nil {
		t.Fatal(err)
	}
	want := `resource_pool_num_available_locks{branch="main",pool="aws"} 2`
	deadline := time.After(patience)
	for {
		changed := d.m.Changed()
		if contains(gather(t, reg), want) {
			break
		}
		select {
		case <-changed: // the background read published
		case <-time.After(50 * time.Millisecond): // the next scrape
		case <-deadline:
			t.Fatalf("metrics never showed %s: %v", want, gather(t, reg))
		}
	}
}

// A project lock whose directory name would be too long for a checkout on
// a real file system (a long project path or environment name; Linux
// refuses names over 255 bytes, and Concourse's clone of the repository
// with it) is named by a hash of its id, the id in the file beside
// claimed/ and unclaimed/: claimed, read back by another daemon, and
// released like any other.
func TestGitLongMutexName(t *testing.T) {
	g := newGitEnv(t, map[string]string{"README.md": "locks\n"})
	ctx := context.Background()
	a, b := g.daemon("r_aaaaaaaaaaaa", ctx), g.daemon("r_bbbbbbbbbbbb", ctx)
	long := "acme/" + strings.Repeat("a", 70) + "/" + strings.Repeat("b", 70) + "/" + strings.Repeat("c", 70)
	j1 := &tjob{id: 1, pipeline: 1, timeout: 3600, project: long, vars: map[string]string{VarLock: "production"}}
	if r := get(t, a.admit(t, ctx, j1)); r.err != nil {
		t.Fatal(r.err)
	}
	tree := g.show("ls-tree", "-r", "--name-only", "main")
	for _, p := range strings.Split(strings.TrimSpace(tree), "\n") {
		for _, name := range strings.Split(p, "/") {
			if len(name) > 255 {
				t.Fatalf("a path component of %d bytes: %s", len(name), p)
			}
		}
	}
	dir := MutexDir(projectPool(long, "production"))
	if !strings.HasPrefix(dir, MutexDirPrefix+"~") || !strings.Contains(tree, dir+"/claimed/lock\n") {
		t.Fatalf("tree:\n%s", tree)
	}
	if id := g.show("show", "main:"+dir+"/id"); id != projectPool(long, "production") {
		t.Fatalf("id file %q", id)
	}
	j2 := &tjob{id: 2, pipeline: 2, timeout: 3600, project: long, vars: map[string]string{VarLock: "production"}}
	ch := b.admit(t, ctx, j2)
	waitLine(t, j2, "waiting for lock production (held by job 1, pipeline 1 on main")
	a.m.Release("runner1", 1)
	if r := get(t, ch); r.err != nil {
		t.Fatal(r.err)
	}
	b.m.Release("runner1", 2)
	b.m.Wait()
	if tree := g.show("ls-tree", "-r", "--name-only", "main"); strings.Contains(tree, dir) {
		t.Fatalf("the free lock's directory left:\n%s", tree)
	}
}

package guard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"gitlab.com/paas-runner/paas-runner/job"
)

const patience = 30 * time.Second

type testEnv struct {
	t      *testing.T
	path   string
	pools  map[string]map[string]string
	policy *Policy
	offset atomic.Int64 // fake clock offset, ns
	m      *Manager
	be     *Local
}

func newEnv(t *testing.T) *testEnv {
	e := &testEnv{t: t, path: filepath.Join(t.TempDir(), "state.json.guards"),
		pools:  map[string]map[string]string{"aws": {"env-1": "region=eu-west-1", "env-2": "region=eu-central-1"}},
		policy: &Policy{DefaultMode: OldestFirst, Pools: map[string]PoolPolicy{"aws": {Namespaces: []string{"acme"}}}}}
	e.open()
	return e
}

func (e *testEnv) now() time.Time { return time.Now().Add(time.Duration(e.offset.Load())) }

func (e *testEnv) open() {
	e.t.Helper()
	be, err := OpenLocal(e.path, e.pools)
	if err != nil {
		e.t.Fatal(err)
	}
	m, err := NewManager(context.Background(), be, Options{Daemon: "r_test", Policy: e.policy, LeaseMargin: time.Millisecond,
		Logger: zaptest.NewLogger(e.t), Now: e.now})
	if err != nil {
		e.t.Fatal(err)
	}
	e.m, e.be = m, be
}

// tjob is a job as the dispatcher would hand it.
type tjob struct {
	id       int64
	pipeline int64
	project  string
	vars     map[string]string
	timeout  int
	mu       sync.Mutex
	log      []string
	blocked  atomic.Int32
}

func (j *tjob) acquired(t testing.TB) *job.Acquired {
	p := map[string]any{"id": j.id, "token": "tok", "job_info": map[string]any{"pipeline_id": j.pipeline},
		"git_info": map[string]any{"ref": "main"}, "runner_info": map[string]any{"timeout": j.timeout}}
	project := j.project
	if project == "" {
		project = "acme/web"
	}
	vars := []map[string]any{{"key": "CI_PROJECT_PATH", "value": project}, {"key": "CI_PROJECT_ROOT_NAMESPACE", "value": strings.Split(project, "/")[0]}}
	for _, k := range sortedKeys(j.vars) {
		vars = append(vars, map[string]any{"key": k, "value": j.vars[k]})
	}
	p["variables"] = vars
	raw, _ := json.Marshal(p)
	a, err := job.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func (j *tjob) logf(line string) {
	j.mu.Lock()
	j.log = append(j.log, line)
	j.mu.Unlock()
}

func (j *tjob) lines() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]string(nil), j.log...)
}

type result struct {
	vars job.Variables
	err  error
}

func (e *testEnv) admit(ctx context.Context, j *tjob) <-chan result {
	ch := make(chan result, 1)
	a := j.acquired(e.t)
	m := e.m
	go func() {
		vs, err := m.Admit(ctx, "runner1", a, j.logf, func() { j.blocked.Add(1) })
		ch <- result{vs, err}
	}()
	return ch
}

func get(t *testing.T, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(patience):
		t.Fatal("Admit did not return")
		return result{}
	}
}

// waitFor polls a condition on the manager's published state (no sleep as
// synchronisation: it waits for a state change).
func (e *testEnv) waitFor(what string, cond func(*State) bool) {
	e.t.Helper()
	deadline := time.After(patience)
	for {
		ch := e.m.Changed()
		st, _ := e.m.Snapshot()
		if cond(st) {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			e.t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func waiting(n int) func(*State) bool { return func(s *State) bool { return len(s.Waiters) == n } }

func TestLockWaitsAndIsGranted(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a := &tjob{id: 4711, pipeline: 230, vars: map[string]string{VarLock: "production"}, timeout: 3600}
	r := get(t, e.admit(ctx, a))
	if r.err != nil || r.vars.Get("PAAS_LOCKS") != "production" {
		t.Fatalf("%+v", r)
	}
	if a.blocked.Load() != 0 || len(a.lines()) != 0 {
		t.Fatalf("a free lock blocked or logged: %v", a.lines())
	}
	b := &tjob{id: 4712, pipeline: 231, vars: map[string]string{VarLock: "production"}, timeout: 3600}
	c := &tjob{id: 4713, pipeline: 232, vars: map[string]string{VarLock: "production"}, timeout: 3600}
	bch := e.admit(ctx, b)
	e.waitFor("b waiting", waiting(1))
	cch := e.admit(ctx, c)
	e.waitFor("c waiting", waiting(2))
	waitLine(t, c, "waiting for lock production (held by job 4711, pipeline 230 on main, since 0s; 1 job ahead; oldest_first)")
	waitLine(t, b, "waiting for lock production (held by job 4711, pipeline 230 on main, since 0s; 0 jobs ahead; oldest_first)")
	if b.blocked.Load() != 1 {
		t.Fatal("the waiting job did not give its slots back")
	}
	e.m.Release("runner1", 4711)
	if r := get(t, bch); r.err != nil {
		t.Fatal(r.err)
	}
	waitLine(t, b, "paas-runner: locks acquired after")
	waitLine(t, c, "held by job 4712, pipeline 231 on main")
	e.m.Release("runner1", 4712)
	if r := get(t, cch); r.err != nil {
		t.Fatal(r.err)
	}
	e.m.Release("runner1", 4713)
	st, _ := e.m.Snapshot()
	if len(st.Waiters) != 0 || len(st.Pools) != 1 {
		t.Fatalf("state left: %+v", st)
	}
}

func waitLine(t *testing.T, j *tjob, want string) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for time.Now().Before(deadline) {
		for _, l := range j.lines() {
			if strings.Contains(l, want) {
				return
			}
		}
		time.Sleep(time.Millisecond) // polling a log written by another goroutine
	}
	t.Fatalf("job %d log %q lacks %q", j.id, j.lines(), want)
}

func TestWaitLogRepeatsEveryMinute(t *testing.T) {
	old := LogEvery
	LogEvery = 20 * time.Millisecond
	defer func() { LogEvery = old }()
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	get(t, e.admit(ctx, &tjob{id: 1, pipeline: 1, vars: map[string]string{VarLock: "x"}}))
	b := &tjob{id: 2, pipeline: 2, vars: map[string]string{VarLock: "x"}}
	ch := e.admit(ctx, b)
	deadline := time.Now().Add(patience)
	for len(b.lines()) < 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if len(b.lines()) < 3 {
		t.Fatalf("log %q", b.lines())
	}
	cancel()
	if r := get(t, ch); !errors.Is(r.err, context.Canceled) {
		t.Fatal(r.err)
	}
}

func TestNoWaitTimeoutSupersede(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	get(t, e.admit(ctx, &tjob{id: 1, pipeline: 1, vars: map[string]string{VarLock: "x"}}))
	r := get(t, e.admit(ctx, &tjob{id: 2, pipeline: 2, vars: map[string]string{VarLock: "x", VarNoWait: "true"}}))
	var we *WaitError
	if !errors.As(r.err, &we) || we.Reason != "no_wait" || !strings.Contains(r.err.Error(), "held by job 1") {
		t.Fatalf("no-wait: %v", r.err)
	}
	r = get(t, e.admit(ctx, &tjob{id: 3, pipeline: 3, vars: map[string]string{VarLock: "x", VarTimeout: "1"}}))
	if !errors.As(r.err, &we) || we.Reason != "timeout" || we.FailureReason() != "stuck_or_timeout_failure" {
		t.Fatalf("timeout: %v", r.err)
	}
	e.waitFor("failed waiters gone", waiting(0))
	// supersede: pipeline 5 makes the waiting pipeline 4 give way
	old := e.admit(ctx, &tjob{id: 4, pipeline: 4, vars: map[string]string{VarLock: "x"}})
	e.waitFor("4 waiting", waiting(1))
	newer := e.admit(ctx, &tjob{id: 5, pipeline: 5, vars: map[string]string{VarLock: "x", VarSupersede: "true"}})
	r = get(t, old)
	if !errors.As(r.err, &we) || r.err.Error() != "superseded by pipeline 5" {
		t.Fatalf("supersede: %v", r.err)
	}
	// another project's job is not superseded
	other := e.admit(ctx, &tjob{id: 6, pipeline: 3, project: "acme/api", vars: map[string]string{VarLock: "x"}})
	e.m.Release("runner1", 1)
	if r := get(t, newer); r.err != nil {
		t.Fatal(r.err)
	}
	if r := get(t, other); r.err != nil {
		t.Fatal(r.err)
	}
}

func TestPoolAcquireAndClaim(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	r := get(t, e.admit(ctx, &tjob{id: 1, pipeline: 1, vars: map[string]string{VarPool: "aws"}}))
	if r.err != nil || r.vars.Get("PAAS_POOL_AWS_NAME") != "env-1" || r.vars.Get("PAAS_POOL_METADATA") != "region=eu-west-1" {
		t.Fatalf("%+v", r)
	}
	r = get(t, e.admit(ctx, &tjob{id: 2, pipeline: 2, vars: map[string]string{VarPool: "aws"}}))
	if r.err != nil || r.vars.Get("PAAS_POOL_NAME") != "env-2" || r.vars.Get("PAAS_LOCKS") != "aws/env-2" {
		t.Fatalf("%+v", r)
	}
	j3 := &tjob{id: 3, pipeline: 3, vars: map[string]string{VarPool: "aws/env-1"}}
	ch := e.admit(ctx, j3)
	waitLine(t, j3, "waiting for lock aws/env-1 (held by job 1, pipeline 1 on main")
	e.m.Release("runner1", 2) // env-2 is not what it wants
	select {
	case r := <-ch:
		t.Fatalf("granted the wrong lock: %+v", r)
	default:
	}
	e.m.Release("runner1", 1)
	if r := get(t, ch); r.err != nil || r.vars.Get("PAAS_POOL_AWS_NAME") != "env-1" {
		t.Fatalf("%+v", r)
	}
	// a namespace the pool does not allow never sees it
	r = get(t, e.admit(ctx, &tjob{id: 9, pipeline: 9, project: "evil/x", vars: map[string]string{VarPool: "aws"}}))
	if r.err == nil || !strings.Contains(r.err.Error(), "not open to namespace \"evil\"") {
		t.Fatalf("%+v", r)
	}
}

// A job waiting for two locks keeps its place on both: a newer job wanting
// only one of them does not overtake it (oldest_first).
func TestMultiLockKeepsPlace(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	get(t, e.admit(ctx, &tjob{id: 1, pipeline: 1, vars: map[string]string{VarLock: "a"}}))
	both := e.admit(ctx, &tjob{id: 2, pipeline: 2, vars: map[string]string{VarLock: "a,b"}})
	e.waitFor("2 waiting", waiting(1))
	onlyB := &tjob{id: 3, pipeline: 3, vars: map[string]string{VarLock: "b"}}
	bch := e.admit(ctx, onlyB)
	waitLine(t, onlyB, "waiting for lock b (free, promised to a job ahead; 1 job ahead; oldest_first)")
	e.m.Release("runner1", 1)
	if r := get(t, both); r.err != nil || r.vars.Get("PAAS_LOCKS") != "a,b" {
		t.Fatalf("%+v", r)
	}
	e.m.Release("runner1", 2)
	if r := get(t, bch); r.err != nil {
		t.Fatal(r.err)
	}
	// newest_first: the newer pipeline goes first
	get(t, e.admit(ctx, &tjob{id: 10, pipeline: 10, vars: map[string]string{VarLock: "n", VarMode: "newest_first"}}))
	older := e.admit(ctx, &tjob{id: 11, pipeline: 11, vars: map[string]string{VarLock: "n", VarMode: "newest_first"}})
	e.waitFor("11 waiting", waiting(1))
	newer := e.admit(ctx, &tjob{id: 12, pipeline: 12, vars: map[string]string{VarLock: "n", VarMode: "newest_ready_first"}})
	e.waitFor("12 waiting", waiting(2))
	e.m.Release("runner1", 10)
	if r := get(t, newer); r.err != nil {
		t.Fatal(r.err)
	}
	e.m.Release("runner1", 12)
	if r := get(t, older); r.err != nil {
		t.Fatal(r.err)
	}
}

func TestMixedModesUseDefaultAndSaySo(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	get(t, e.admit(ctx, &tjob{id: 1, pipeline: 1, vars: map[string]string{VarLock: "m"}}))
	a := &tjob{id: 2, pipeline: 2, vars: map[string]string{VarLock: "m", VarMode: "newest_first"}}
	e.admit(ctx, a)
	b := &tjob{id: 3, pipeline: 3, vars: map[string]string{VarLock: "m", VarMode: "unordered"}}
	e.admit(ctx, b)
	waitLine(t, a, "ask for different process modes: default_process_mode oldest_first applies")
}

func TestRestartKeepsHoldsAndWaiters(t *testing.T) {
	e := newEnv(t)
	get(t, e.admit(context.Background(), &tjob{id: 1, pipeline: 1, vars: map[string]string{VarLock: "x"}}))
	ctx, cancel := context.WithCancel(context.Background())
	w2 := e.admit(ctx, &tjob{id: 2, pipeline: 2, vars: map[string]string{VarLock: "x"}})
	e.waitFor("2 waiting", waiting(1))
	w3 := e.admit(ctx, &tjob{id: 3, pipeline: 3, vars: map[string]string{VarLock: "x"}})
	e.waitFor("3 waiting", waiting(2))
	cancel() // the daemon stops (or is killed): the file is all that is left
	get(t, w2)
	get(t, w3)
	e.open()
	st, _ := e.m.Snapshot()
	if len(st.HeldBy(JobRef{Daemon: "r_test", Runner: "runner1", JobID: 1}.Key())) != 1 || len(st.Waiters) != 2 {
		t.Fatalf("after restart: %+v", st)
	}
	// job 3 resumes first: it must still come after job 2
	ctx = context.Background()
	r3 := e.admit(ctx, &tjob{id: 3, pipeline: 3, vars: map[string]string{VarLock: "x"}})
	r2 := e.admit(ctx, &tjob{id: 2, pipeline: 2, vars: map[string]string{VarLock: "x"}})
	e.m.Release("runner1", 1)
	if r := get(t, r2); r.err != nil {
		t.Fatal(r.err)
	}
	select {
	case r := <-r3:
		t.Fatalf("job 3 overtook job 2: %+v", r)
	default:
	}
	e.m.Release("runner1", 2)
	if r := get(t, r3); r.err != nil {
		t.Fatal(r.err)
	}
}

func TestLeaseExpires(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	// a job with a 1 s timeout whose daemon never releases
	get(t, e.admit(ctx, &tjob{id: 1, pipeline: 1, timeout: 1, vars: map[string]string{VarLock: "x"}}))
	ch := e.admit(ctx, &tjob{id: 2, pipeline: 2, timeout: 3600, vars: map[string]string{VarLock: "x"}})
	e.waitFor("2 waiting", waiting(1))
	e.m.Nudge() // a live lease is never broken
	e.m.Wait()
	select {
	case r := <-ch:
		t.Fatalf("live lease broken: %+v", r)
	default:
	}
	e.offset.Store(int64(2 * time.Second))
	e.m.Nudge()
	if r := get(t, ch); r.err != nil {
		t.Fatal(r.err)
	}
}

func TestForgetUnknown(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	get(t, e.admit(ctx, &tjob{id: 1, pipeline: 1, vars: map[string]string{VarLock: "x"}}))
	get(t, e.admit(ctx, &tjob{id: 2, pipeline: 2, vars: map[string]string{VarLock: "y"}}))
	if err := e.m.ForgetUnknown(ctx, func(r string, id int64) bool { return id == 2 }); err != nil {
		t.Fatal(err)
	}
	if hs := e.m.Holders(); len(hs) != 1 || hs[0].Job.JobID != 2 || hs[0].Guard != "lock:acme/web:y" {
		t.Fatalf("%+v", hs)
	}
}

func TestJobsWithoutLocksWriteNothing(t *testing.T) {
	e := newEnv(t)
	before := e.be.Writes()
	for i := 0; i < 5; i++ {
		r := get(t, e.admit(context.Background(), &tjob{id: int64(100 + i)}))
		if r.err != nil || r.vars != nil {
			t.Fatalf("%+v", r)
		}
		e.m.Release("runner1", int64(100+i))
	}
	if e.be.Writes() != before {
		t.Fatal("unguarded jobs wrote the guards file")
	}
}

func TestLocalFileRefused(t *testing.T) {
	e := newEnv(t)
	if err := writeFile(e.path, "{\"version\":1,\"state\":{},\"x\":1}"); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenLocal(e.path, nil); err == nil || !strings.Contains(err.Error(), "not a paas-runner guards file") {
		t.Fatalf("%v", err)
	}
	_ = fmt.Sprint()
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o600) }

// flaky is a backend that fails while down is set (a lock repository
// that does not answer).
type flaky struct {
	Backend
	down atomic.Bool
}

func (f *flaky) Update(ctx context.Context, fn func(*State) bool) (*State, error) {
	if f.down.Load() {
		return nil, errors.New("connection refused")
	}
	return f.Backend.Update(ctx, fn)
}

// A job declared while the shared store had never answered (its pools
// unknown) is checked again once it answers: a pool that does not exist
// fails it then, at once, instead of at its lock timeout; a pool that
// exists is granted.
func TestUnknownPoolFailsOnceTheStoreAnswers(t *testing.T) {
	local, err := OpenLocal(filepath.Join(t.TempDir(), "state.json.guards"), map[string]map[string]string{"aws": {"env-1": "region=eu-west-1"}})
	if err != nil {
		t.Fatal(err)
	}
	be := &flaky{Backend: local}
	be.down.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// the git backend's policy: the pools are the store's
	m, err := NewManager(ctx, be, Options{Daemon: "r_test", Policy: &Policy{DefaultMode: OldestFirst}, Refresh: 5 * time.Millisecond,
		Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	e := &testEnv{t: t, m: m}
	gone := &tjob{id: 1, pipeline: 1, vars: map[string]string{VarPool: "gcp", VarTimeout: "3600"}}
	ok := &tjob{id: 2, pipeline: 2, vars: map[string]string{VarPool: "aws"}}
	gch, och := e.admit(ctx, gone), e.admit(ctx, ok)
	waitLine(t, gone, "the lock store is unreachable (connection refused)")
	waitLine(t, ok, "the lock store is unreachable (connection refused)")
	be.down.Store(false)
	r := get(t, gch)
	var we *WaitError
	if !errors.As(r.err, &we) || we.Reason != "declaration" || !strings.Contains(r.err.Error(), `PAAS_POOL: pool "gcp" does not exist on this runner`) {
		t.Fatalf("a job waiting for a pool the store does not have: %+v", r)
	}
	if r := get(t, och); r.err != nil || r.vars.Get("PAAS_POOL_AWS_NAME") != "env-1" {
		t.Fatalf("%+v", r)
	}
	e.waitFor("the failed job gone from the queue", func(s *State) bool { return len(s.Waiters) == 0 })
}

// counting is flaky that counts the updates refused while down.
type counting struct {
	flaky
	refused atomic.Int32
}

func (c *counting) Update(ctx context.Context, fn func(*State) bool) (*State, error) {
	if c.down.Load() {
		c.refused.Add(1)
	}
	return c.flaky.Update(ctx, fn)
}

// A release the shared store refuses (it is down) is retried until the
// store answers, not given up after a few tries: the lock would stay
// claimed until its lease, the job's timeout plus lease_margin, ran out.
func TestReleaseRetriedUntilTheStoreAnswers(t *testing.T) {
	local, err := OpenLocal(filepath.Join(t.TempDir(), "state.json.guards"), nil)
	if err != nil {
		t.Fatal(err)
	}
	be := &counting{flaky: flaky{Backend: local}}
	ctx := context.Background()
	m, err := NewManager(ctx, be, Options{Daemon: "r_test", Refresh: time.Millisecond, AsyncRelease: true, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{t: t, m: m}
	if r := get(t, e.admit(ctx, &tjob{id: 1, pipeline: 1, timeout: 3600, vars: map[string]string{VarLock: "production"}})); r.err != nil {
		t.Fatal(r.err)
	}
	be.down.Store(true)
	m.Release("runner1", 1)
	deadline := time.Now().Add(patience)
	for be.refused.Load() < 40 { // well beyond the 20 tries it used to give up after
		if time.Now().After(deadline) {
			t.Fatalf("%d release attempts", be.refused.Load())
		}
		time.Sleep(time.Millisecond) // the attempts come from another goroutine, on a timer
	}
	be.down.Store(false)
	done := make(chan struct{})
	go func() { m.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(patience):
		t.Fatal("the release was not retried once the store answered")
	}
	if st, _ := m.Snapshot(); len(st.HeldBy(JobRef{Daemon: "r_test", Runner: "runner1", JobID: 1}.Key())) != 0 {
		t.Fatalf("still held: %s", dump(st))
	}
}

// Holds of jobs no longer in the state file are released at the start;
// when the store does not answer then, they are released once it does
// (not left until their lease runs out).
func TestForgetUnknownOnceTheStoreAnswers(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if r := get(t, e.admit(ctx, &tjob{id: 5, pipeline: 5, timeout: 3600, vars: map[string]string{VarLock: "production"}})); r.err != nil {
		t.Fatal(r.err)
	}
	local, err := OpenLocal(e.path, e.pools) // the next start
	if err != nil {
		t.Fatal(err)
	}
	be := &flaky{Backend: local}
	be.down.Store(true)
	m, err := NewManager(ctx, be, Options{Daemon: "r_test", Policy: e.policy, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.ForgetUnknown(ctx, func(string, int64) bool { return false }); err == nil {
		t.Fatal("ForgetUnknown did not fail with the store down")
	}
	be.down.Store(false)
	m.Nudge()
	e.m = m
	e.waitFor("job 5's hold released", func(s *State) bool {
		return s.Pools["aws"] != nil && // read from the store, not the empty state before it answered
			len(s.HeldBy(JobRef{Daemon: "r_test", Runner: "runner1", JobID: 5}.Key())) == 0 && s.Pools[projectPool("acme/web", "production")] == nil
	})
	m.Wait()
}

// Supersede holds against a newer job that already holds the lock: an
// older job of the same project arriving afterwards would deploy older
// code after it; it is failed at once. The pool rule does the same
// without the variable; another project's older job is not touched.
func TestSupersededByAHolder(t *testing.T) {
	e := newEnv(t)
	e.policy.Pools["aws"] = PoolPolicy{Namespaces: []string{"acme"}, Supersede: true}
	ctx := context.Background()
	if r := get(t, e.admit(ctx, &tjob{id: 5, pipeline: 5, vars: map[string]string{VarLock: "x", VarSupersede: "true"}})); r.err != nil {
		t.Fatal(r.err)
	}
	r := get(t, e.admit(ctx, &tjob{id: 4, pipeline: 4, vars: map[string]string{VarLock: "x"}}))
	var we *WaitError
	if !errors.As(r.err, &we) || we.Reason != "superseded" || r.err.Error() != "superseded by pipeline 5" {
		t.Fatalf("an older job after a newer superseding holder: %+v", r)
	}
	other := e.admit(ctx, &tjob{id: 3, pipeline: 3, project: "acme/api", vars: map[string]string{VarLock: "x"}})
	// the pool's rule: pipeline 9 holds aws/env-1, an older job wanting it gives way
	if r := get(t, e.admit(ctx, &tjob{id: 9, pipeline: 9, vars: map[string]string{VarPool: "aws/env-1"}})); r.err != nil {
		t.Fatal(r.err)
	}
	r = get(t, e.admit(ctx, &tjob{id: 8, pipeline: 8, vars: map[string]string{VarPool: "aws/env-1"}}))
	if !errors.As(r.err, &we) || r.err.Error() != "superseded by pipeline 9" {
		t.Fatalf("pool rule: %+v", r)
	}
	// an older job wanting another lock of the pool is not in the way
	if r := get(t, e.admit(ctx, &tjob{id: 7, pipeline: 7, vars: map[string]string{VarPool: "aws/env-2"}})); r.err != nil {
		t.Fatal(r.err)
	}
	e.m.Release("runner1", 5)
	if r := get(t, other); r.err != nil {
		t.Fatal(r.err)
	}
}

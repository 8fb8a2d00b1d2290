package guard

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// declared is the local backend's policy for pools (name → lock → metadata).
func declared(pools map[string]map[string]string, namespaces ...string) *Policy {
	p := &Policy{DefaultMode: OldestFirst, Declared: true, Pools: map[string]PoolPolicy{}}
	for name, locks := range pools {
		p.Pools[name] = PoolPolicy{Locks: locks, Namespaces: namespaces}
	}
	return p
}

// A reload changes the local backend's pools without dropping a hold or a
// waiter: an added lock is granted at once to a waiter; a removed lock that
// is held stays held, is never granted again and disappears at its
// release; waiters on a removed pool or lock fail, saying why; a waiter
// for any lock of a pool that still exists keeps waiting.
func TestReloadPools(t *testing.T) {
	e := newEnv(t)
	e.m.SetPolicy(declared(e.pools, "acme"))
	ctx := context.Background()
	pool := func(id int64, pipeline int64, spec string) *tjob {
		return &tjob{id: id, pipeline: pipeline, timeout: 3600, vars: map[string]string{VarPool: spec}}
	}
	a := pool(1, 10, "aws/env-1")
	if r := get(t, e.admit(ctx, a)); r.err != nil {
		t.Fatal(r.err)
	}
	b := pool(2, 11, "aws/env-2")
	if r := get(t, e.admit(ctx, b)); r.err != nil {
		t.Fatal(r.err)
	}
	c := pool(3, 12, "aws")       // any lock of aws
	d := pool(4, 13, "aws/env-1") // that lock, to be removed
	x := pool(5, 14, "gcp")       // a pool to be removed
	e.m.SetPolicy(declared(map[string]map[string]string{"aws": e.pools["aws"], "gcp": {"g-1": "zone=x"}}, "acme"))
	xg := get(t, e.admit(ctx, pool(6, 9, "gcp"))) // holds gcp/g-1
	if xg.err != nil {
		t.Fatal(xg.err)
	}
	cch, dch, xch := e.admit(ctx, c), e.admit(ctx, d), e.admit(ctx, x)
	e.waitFor("three waiting", waiting(3))

	// env-1 (held by a, wanted by d) removed; env-3 added; gcp removed
	now := map[string]map[string]string{"aws": {"env-2": "region=eu-central-1", "env-3": "region=us-east-1"}}
	e.m.SetPolicy(declared(now, "acme"))
	rc := get(t, cch)
	if rc.err != nil || rc.vars.Get("PAAS_POOL_AWS_NAME") != "env-3" || rc.vars.Get("PAAS_POOL_AWS_METADATA") != "region=us-east-1" {
		t.Fatalf("the waiter for any aws lock: %+v", rc)
	}
	for _, w := range []struct {
		ch   <-chan result
		want string
	}{{dch, `the runner's configuration changed while the job waited: PAAS_POOL: pool "aws" has no lock "env-1" on this runner`},
		{xch, `the runner's configuration changed while the job waited: PAAS_POOL: pool "gcp" does not exist on this runner`}} {
		r := get(t, w.ch)
		var we *WaitError
		if !errors.As(r.err, &we) || we.Reason != "declaration" || we.Msg != w.want || we.FailureReason() != "script_failure" {
			t.Fatalf("got %v, want %q", r.err, w.want)
		}
	}
	st, _ := e.m.Snapshot()
	if h := st.Pools["aws"].Locks["env-1"]; h == nil || h.Holder == nil || h.Holder.JobID != 1 {
		t.Fatalf("the removed lock held by job 1: %+v", st.Pools["aws"].Locks)
	}
	if h := st.Pools["gcp"].Locks["g-1"]; h == nil || h.Holder == nil || h.Holder.JobID != 6 {
		t.Fatalf("the removed pool's lock held by job 6: %+v", st.Pools["gcp"])
	}
	if len(st.Waiters) != 0 {
		t.Fatalf("waiters left: %v", st.Waiters)
	}
	// a new job may not ask for what was removed, even while it is held
	for _, spec := range []string{"gcp", "aws/env-1"} {
		if r := get(t, e.admit(ctx, pool(7, 20, spec))); r.err == nil || !strings.Contains(r.err.Error(), "on this runner") {
			t.Fatalf("%s after its removal: %v", spec, r.err)
		}
	}
	e.m.Release("runner1", 1)
	e.m.Release("runner1", 6)
	st, _ = e.m.Snapshot()
	if _, ok := st.Pools["gcp"]; ok {
		t.Fatal("the removed pool stayed after its last lock was released")
	}
	if _, ok := st.Pools["aws"].Locks["env-1"]; ok {
		t.Fatal("the removed lock stayed after its release")
	}
	// and the file says so (a restart sees the same)
	e.pools, e.policy = now, declared(now, "acme")
	e.open()
	st, _ = e.m.Snapshot()
	if len(st.Pools["aws"].Locks) != 2 || st.Pools["aws"].Locks["env-2"].Holder.JobID != 2 || st.Pools["aws"].Locks["env-3"].Holder.JobID != 3 {
		t.Fatalf("after a restart: %s", dump(st))
	}
}

// A namespace no longer allowed by a reload fails that namespace's waiting
// job; a job of an allowed namespace keeps waiting.
func TestReloadPoolNamespaces(t *testing.T) {
	e := newEnv(t)
	pools := map[string]map[string]string{"aws": {"env-1": "md"}}
	e.m.SetPolicy(declared(pools, "acme", "beta"))
	ctx := context.Background()
	h := &tjob{id: 1, pipeline: 1, timeout: 3600, vars: map[string]string{VarPool: "aws"}}
	if r := get(t, e.admit(ctx, h)); r.err != nil {
		t.Fatal(r.err)
	}
	acme := &tjob{id: 2, pipeline: 2, timeout: 3600, vars: map[string]string{VarPool: "aws"}}
	beta := &tjob{id: 3, pipeline: 3, timeout: 3600, project: "beta/app", vars: map[string]string{VarPool: "aws"}}
	ach, bch := e.admit(ctx, acme), e.admit(ctx, beta)
	e.waitFor("two waiting", waiting(2))
	e.m.SetPolicy(declared(pools, "acme"))
	r := get(t, bch)
	if r.err == nil || !strings.Contains(r.err.Error(), `pool "aws" is not open to namespace "beta"`) {
		t.Fatalf("beta's job: %v", r.err)
	}
	e.waitFor("acme's job waiting alone", waiting(1))
	e.m.Release("runner1", 1)
	if r := get(t, ach); r.err != nil || r.vars.Get("PAAS_POOL_AWS_NAME") != "env-1" {
		t.Fatalf("acme's job: %+v", r)
	}
}

// A pool's process_mode and supersede change on reload for the jobs
// already waiting: newest_first gives the lock to the newest waiter, and
// supersede then fails the older waiter of the same project.
func TestReloadPoolModeAndSupersede(t *testing.T) {
	e := newEnv(t)
	pools := map[string]map[string]string{"aws": {"env-1": "md"}}
	e.m.SetPolicy(declared(pools))
	ctx := context.Background()
	job := func(id, pipeline int64) *tjob {
		return &tjob{id: id, pipeline: pipeline, timeout: 3600, vars: map[string]string{VarPool: "aws"}}
	}
	if r := get(t, e.admit(ctx, job(1, 1))); r.err != nil {
		t.Fatal(r.err)
	}
	old, mid, newest := job(2, 2), job(3, 3), job(4, 4)
	och := e.admit(ctx, old)
	e.waitFor("old waiting", waiting(1))
	mch := e.admit(ctx, mid)
	e.waitFor("mid waiting", waiting(2))
	nch := e.admit(ctx, newest)
	e.waitFor("newest waiting", waiting(3))
	pol := declared(pools)
	pp := pol.Pools["aws"]
	pp.Mode = NewestFirst
	pol.Pools["aws"] = pp
	e.m.SetPolicy(pol)
	e.m.Release("runner1", 1)
	if r := get(t, nch); r.err != nil {
		t.Fatalf("the newest waiter after newest_first: %v", r.err)
	}
	pol2 := declared(pools)
	pp.Supersede = true
	pol2.Pools["aws"] = pp
	e.m.SetPolicy(pol2)
	// pipeline 3 supersedes pipeline 2 (same project, both waiting)
	r := get(t, och)
	var we *WaitError
	if !errors.As(r.err, &we) || we.Reason != "superseded" || r.err.Error() != "superseded by pipeline 3" {
		t.Fatalf("the oldest waiter after supersede: %v", r.err)
	}
	e.m.Release("runner1", 4)
	if r := get(t, mch); r.err != nil {
		t.Fatal(r.err)
	}
}

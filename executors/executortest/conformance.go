package executortest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/executors"
)

// Observer lets the conformance suite look at hosts from outside (it is
// not executors.Inspector, which the dispatcher uses at resume).
type Observer interface {
	// Observe says whether h's host exists and how many times a job was
	// really launched on it.
	Observe(ctx context.Context, h executors.Handle) (exists bool, launches int, err error)
}

// Subject is what the suite tests: an executor and a way to inspect it.
type Subject struct {
	Executor executors.Executor
	Observer Observer
	// RunnerID to use in jobs; unique per test run is best.
	RunnerID string
	// Timeout for each step (real PaaS back ends are slow). Default 2 min.
	Timeout time.Duration
	// Payload of the jobs, when the executor needs a real one.
	Payload func(id int64) json.RawMessage
}

// Run is the conformance suite every executor must pass.
func Run(t *testing.T, newSubject func(t *testing.T) Subject) {
	t.Run("lifecycle", func(t *testing.T) { lifecycle(t, newSubject(t)) })
	t.Run("decommission unknown", func(t *testing.T) { decommissionUnknown(t, newSubject(t)) })
	t.Run("reap", func(t *testing.T) { reap(t, newSubject(t)) })
}

func (s Subject) job(id int64) executors.Job {
	j := executors.Job{RunnerID: s.RunnerID, ID: id, Token: fmt.Sprintf("job-token-%d", id), TraceOffset: 42}
	if s.Payload != nil {
		j.Payload = s.Payload(id)
	} else {
		j.Payload = json.RawMessage(fmt.Sprintf(`{"id":%d,"token":"job-token-%d"}`, id, id))
	}
	return j
}

func (s Subject) ctx(t *testing.T) context.Context {
	d := s.Timeout
	if d == 0 {
		d = 2 * time.Minute
	}
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

func (s Subject) inspect(t *testing.T, h executors.Handle) (bool, int) {
	t.Helper()
	ok, n, err := s.Observer.Observe(s.ctx(t), h)
	if err != nil {
		t.Fatalf("inspect: %v", err)
	}
	return ok, n
}

func lifecycle(t *testing.T, s Subject) {
	ex, j := s.Executor, s.job(101)
	ctx := s.ctx(t)
	h1, err := ex.Plan(ctx, j)
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	h2, _ := ex.Plan(ctx, j)
	if !bytes.Equal(h1, h2) {
		t.Fatalf("plan is not deterministic: %s vs %s", h1, h2)
	}
	if !json.Valid(h1) {
		t.Fatalf("handle is not JSON: %s", h1)
	}
	if ok, _ := s.inspect(t, h1); ok {
		t.Fatal("plan created the host")
	}
	t.Cleanup(func() { _ = ex.Decommission(context.Background(), h1) })
	h, err := ex.Provision(ctx, h1, j)
	if err != nil {
		t.Fatalf("provision: %v", err)
	}
	// (an executor may create the host here or at Launch)
	if _, n := s.inspect(t, h); n != 0 {
		t.Fatalf("provision launched the job")
	}
	// a second Provision (retry, restart) adopts the host, from the planned
	// handle as well as from the returned one
	if h, err = ex.Provision(ctx, h1, j); err != nil {
		t.Fatalf("provision again: %v", err)
	}
	if h, err = ex.Launch(ctx, h, j); err != nil {
		t.Fatalf("launch: %v", err)
	}
	if ok, n := s.inspect(t, h); !ok || n != 1 {
		t.Fatalf("after launch: exists %v launches %d", ok, n)
	}
	if _, err = ex.Launch(ctx, h, j); err != nil {
		t.Fatalf("launch again: %v", err)
	}
	if _, n := s.inspect(t, h); n != 1 {
		t.Fatalf("launched %d times", n)
	}
	if err := ex.Decommission(ctx, h); err != nil {
		t.Fatalf("decommission: %v", err)
	}
	if ok, _ := s.inspect(t, h); ok {
		t.Fatal("host still exists after decommission")
	}
	if err := ex.Decommission(ctx, h); err != nil {
		t.Fatalf("decommission of a removed host: %v", err)
	}
}

func decommissionUnknown(t *testing.T, s Subject) {
	ctx := s.ctx(t)
	h, err := s.Executor.Plan(ctx, s.job(202))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Executor.Decommission(ctx, h); err != nil {
		t.Fatalf("decommission of a never-created host: %v", err)
	}
}

func reap(t *testing.T, s Subject) {
	r, ok := s.Executor.(executors.Reaper)
	if !ok {
		t.Skip("executor has no reaper")
	}
	ctx := s.ctx(t)
	var handles []executors.Handle
	for _, id := range []int64{301, 302} {
		j := s.job(id)
		h, _ := s.Executor.Plan(ctx, j)
		t.Cleanup(func() { _ = s.Executor.Decommission(context.Background(), h) })
		h, err := s.Executor.Provision(ctx, h, j)
		if err != nil {
			t.Fatal(err)
		}
		if h, err = s.Executor.Launch(ctx, h, j); err != nil {
			t.Fatal(err)
		}
		handles = append(handles, h)
	}
	// a grace period spares hosts being created right now
	if removed, err := r.Reap(ctx, handles[:1], time.Hour); err != nil || len(removed) != 0 {
		t.Fatalf("reap within grace removed %v (%v)", removed, err)
	}
	removed, err := r.Reap(ctx, handles[:1], 0)
	if err != nil {
		t.Fatalf("reap: %v", err)
	}
	if ok, _ := s.inspect(t, handles[0]); !ok {
		t.Fatal("reap removed a kept host")
	}
	if ok, _ := s.inspect(t, handles[1]); ok {
		t.Fatalf("reap left the orphan (removed %v)", removed)
	}
	if len(removed) == 0 {
		t.Fatalf("removed %v", removed)
	}
}

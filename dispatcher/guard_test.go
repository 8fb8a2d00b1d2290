package dispatcher_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/dispatcher"
	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/executortest"
	"gitlab.com/paas-runner/paas-runner/guard"
	"gitlab.com/paas-runner/paas-runner/job"
	"gitlab.com/paas-runner/paas-runner/state"
)

func lockedJob(h *harness, pipeline int, lock string, extra ...map[string]any) *coordinatortest.Job {
	vars := []map[string]any{
		{"key": "CI_PROJECT_PATH", "value": "acme/web", "public": true},
		{"key": "CI_PROJECT_ROOT_NAMESPACE", "value": "acme", "public": true},
		{"key": "CI_PIPELINE_ID", "value": strconv.Itoa(pipeline), "public": true},
	}
	if lock != "" {
		vars = append(vars, map[string]any{"key": "PAAS_LOCK", "value": lock, "public": true})
	}
	vars = append(vars, extra...)
	return h.gl.Enqueue("", map[string]any{"variables": vars,
		"job_info": map[string]any{"name": "deploy", "project_id": 1, "pipeline_id": pipeline, "project_full_path": "acme/web"}})
}

// executorCalls counts provision and launch calls per job.
type executorCalls struct {
	mu sync.Mutex
	n  map[int64]int
}

func (c *executorCalls) hook(_ context.Context, j executors.Job) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[j.ID]++
	return nil
}

func (c *executorCalls) of(id int64) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[id]
}

func newGuardHarness(t *testing.T) (*harness, *guard.Manager, *executorCalls) {
	h := newHarness(t, 1)
	h.cfg.Concurrent, h.cfg.MaxProvisioning = 2, 1
	be, err := guard.OpenLocal(filepath.Join(t.TempDir(), "guards.json"), nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := guard.NewManager(context.Background(), be, guard.Options{Daemon: "r_000000000000", Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	h.cfg.Guards = []dispatcher.Guard{m}
	calls := &executorCalls{n: map[int64]int{}}
	h.fake.OnProvision = calls.hook
	h.fake.OnLaunch = calls.hook
	return h, m, calls
}

// A job waiting for a lock gets no host and takes no slot: another job
// runs meanwhile; it goes on, with PAAS_LOCKS, once the holder's host is
// removed. A job canceled while waiting leaves at once, without a host.
func TestWaitingJobGetsNoHostNorSlot(t *testing.T) {
	h, m, calls := newGuardHarness(t)
	h.start()
	a := lockedJob(h, 230, "production")
	h.waitFake("a launched", func(f *executortest.Fake) bool {
		hh, ok := f.LiveLocked(h.hostName(h.tokens[0], a.ID))
		return ok && hh.Launches == 1
	})
	b := lockedJob(h, 231, "production")
	h.gl.WaitFor(wait, "b waiting", func(s *coordinatortest.Server) bool {
		return s.TraceContains(b.ID, "waiting for lock production (held by job "+strconv.FormatInt(a.ID, 10)+", pipeline 230 on main")
	})
	// concurrent = 2, max provisioning = 1: only free if b holds no slot
	c := lockedJob(h, 232, "")
	h.waitFake("c launched while b waits", func(f *executortest.Fake) bool {
		hh, ok := f.LiveLocked(h.hostName(h.tokens[0], c.ID))
		return ok && hh.Launches == 1
	})
	if n := calls.of(b.ID); n != 0 {
		t.Fatalf("executor called %d times for a waiting job", n)
	}
	if st := h.d.Stats(); st.Jobs != 2 { // a and c
		t.Fatalf("slots while b waits: %+v", st)
	}
	h.gl.Finish(c.ID, "success") // frees the slot d is acquired with
	d := lockedJob(h, 233, "production")
	h.gl.WaitFor(wait, "d waiting", func(s *coordinatortest.Server) bool { return s.TraceContains(d.ID, "1 job ahead") })
	h.gl.Cancel(d.ID)
	h.waitStatus(d.ID, "canceled")
	h.gl.Finish(a.ID, "success")
	h.waitFake("b launched", func(f *executortest.Fake) bool {
		hh, ok := f.LiveLocked(h.hostName(h.tokens[0], b.ID))
		return ok && hh.Launches == 1 && f.GoneLocked(h.hostName(h.tokens[0], a.ID))
	})
	host := h.fake.Live()[h.hostName(h.tokens[0], b.ID)]
	var p job.Payload
	if err := json.Unmarshal(host.Payload, &p); err != nil {
		t.Fatal(err)
	}
	if got := p.Variables.Get("PAAS_LOCKS"); got != "production" {
		t.Fatalf("PAAS_LOCKS = %q in the launched payload", got)
	}
	if n := calls.of(d.ID); n != 0 {
		t.Fatalf("executor called %d times for a job canceled while waiting", n)
	}
	st, _ := m.Snapshot()
	if len(st.Waiters) != 0 {
		t.Fatalf("waiters left: %+v", st.Waiters)
	}
	h.gl.Finish(b.ID, "success")
	h.waitFake("b removed", func(f *executortest.Fake) bool { return f.GoneLocked(h.hostName(h.tokens[0], b.ID)) })
	for deadline := time.After(wait); ; {
		changed := m.Changed()
		if len(m.Holders()) == 0 {
			break
		}
		select {
		case <-changed: // the release follows the host removal
		case <-deadline:
			t.Fatalf("holders left after every job ended: %+v", m.Holders())
		}
	}
}

func TestGuardRefusalFailsTheJob(t *testing.T) {
	h, _, calls := newGuardHarness(t)
	h.start()
	bad := lockedJob(h, 1, "no good")
	h.waitStatus(bad.ID, "failed")
	if !h.gl.TraceContains(bad.ID, `PAAS_LOCK: "no good": name "no good" has the character ' '`) {
		t.Fatalf("trace %q", h.gl.TraceOf(bad.ID))
	}
	if got := h.gl.Job(bad.ID).FailureReason; got != "script_failure" {
		t.Fatalf("failure reason %q", got)
	}
	a := lockedJob(h, 2, "x")
	h.waitFake("a launched", func(f *executortest.Fake) bool { _, ok := f.LiveLocked(h.hostName(h.tokens[0], a.ID)); return ok })
	nw := lockedJob(h, 3, "x", map[string]any{"key": "PAAS_LOCK_NO_WAIT", "value": "true"})
	h.waitStatus(nw.ID, "failed")
	if !h.gl.TraceContains(nw.ID, "not free and PAAS_LOCK_NO_WAIT is set") || calls.of(nw.ID) != 0 || calls.of(bad.ID) != 0 {
		t.Fatalf("trace %q", h.gl.TraceOf(nw.ID))
	}
}

// A drain does not wait for jobs waiting for locks: they stay recorded and
// resume waiting, in their place, at the next start.
func TestDrainLeavesWaitersForNextStart(t *testing.T) {
	h, _, calls := newGuardHarness(t)
	guardsPath := filepath.Join(t.TempDir(), "guards.json")
	be, err := guard.OpenLocal(guardsPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := guard.NewManager(context.Background(), be, guard.Options{Daemon: "r_000000000000", Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	h.cfg.Guards = []dispatcher.Guard{m}
	h.cfg.ShutdownTimeout = time.Hour // a drain waiting for the waiter would hang the test
	h.start()
	a := lockedJob(h, 10, "production")
	h.waitFake("a launched", func(f *executortest.Fake) bool { _, ok := f.LiveLocked(h.hostName(h.tokens[0], a.ID)); return ok })
	b := lockedJob(h, 11, "production")
	h.gl.WaitFor(wait, "b waiting", func(s *coordinatortest.Server) bool { return s.TraceContains(b.ID, "waiting for lock production") })
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	if rec, ok := h.store.Get(state.Key{Runner: uniqueName(h.tokens[0]), ID: b.ID}); !ok || rec.Phase != state.Acquired {
		t.Fatalf("waiting job after the drain: %+v %v", rec, ok)
	}
	if h.gl.StatusOf(b.ID) != "running" {
		t.Fatalf("waiting job %s by the drain", h.gl.StatusOf(b.ID))
	}
	h.store.Close()
	h.store = nil
	// next start: a new guard on the same file
	be, err = guard.OpenLocal(guardsPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err = guard.NewManager(context.Background(), be, guard.Options{Daemon: "r_000000000000", Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := m.Snapshot(); len(st.Waiters) != 1 || len(m.Holders()) != 1 {
		t.Fatalf("guard state after restart: %+v", st)
	}
	h.cfg.Guards = []dispatcher.Guard{m}
	h.start()
	h.gl.WaitFor(wait, "b waiting again", func(s *coordinatortest.Server) bool {
		return strings.Count(s.TraceOf(b.ID), "waiting for lock production") >= 2
	})
	if calls.of(b.ID) != 0 {
		t.Fatal("host made for a waiting job")
	}
	h.gl.Finish(a.ID, "success")
	h.waitFake("b launched after a's host removal", func(f *executortest.Fake) bool {
		hh, ok := f.LiveLocked(h.hostName(h.tokens[0], b.ID))
		return ok && hh.Launches == 1 && f.GoneLocked(h.hostName(h.tokens[0], a.ID))
	})
	if got := h.gl.Job(b.ID).Acquisitions; got != 1 {
		t.Fatalf("b acquired %d times", got)
	}
}

// A job whose launch fails releases its lock once its host is removed; the
// next waiter then goes on.
func TestLaunchFailureReleasesLock(t *testing.T) {
	h, m, _ := newGuardHarness(t)
	var failID atomic.Int64
	h.fake.OnProvision = func(_ context.Context, j executors.Job) error {
		if j.ID == failID.Load() {
			return executors.Permanent("provision", errors.New("no capacity"))
		}
		return nil
	}
	h.start()
	a := lockedJob(h, 1, "production")
	failID.Store(a.ID)
	h.waitStatus(a.ID, "failed")
	b := lockedJob(h, 2, "production")
	h.waitFake("b launched", func(f *executortest.Fake) bool {
		hh, ok := f.LiveLocked(h.hostName(h.tokens[0], b.ID))
		return ok && hh.Launches == 1
	})
	if hs := m.Holders(); len(hs) != 1 || hs[0].Job.JobID != b.ID {
		t.Fatalf("holders %+v", hs)
	}
}

// Beyond MaxWaiting, waiting jobs keep their slots and are still made
// durable; they go on in turn.
func TestWaitingBeyondMaxKeepsSlots(t *testing.T) {
	h, _, calls := newGuardHarness(t)
	h.cfg.Concurrent, h.cfg.MaxProvisioning, h.cfg.MaxWaiting = 2, 2, 1
	h.start()
	a := lockedJob(h, 1, "x")
	h.waitFake("a launched", func(f *executortest.Fake) bool { _, ok := f.LiveLocked(h.hostName(h.tokens[0], a.ID)); return ok })
	b := lockedJob(h, 2, "x")
	h.gl.WaitFor(wait, "b waiting", func(s *coordinatortest.Server) bool { return s.TraceContains(b.ID, "waiting for lock x") })
	c := lockedJob(h, 3, "x")
	h.gl.WaitFor(wait, "c waiting", func(s *coordinatortest.Server) bool { return s.TraceContains(c.ID, "waiting for lock x") })
	if rec, ok := h.store.Get(state.Key{Runner: uniqueName(h.tokens[0]), ID: c.ID}); !ok || rec.Phase != state.Acquired {
		t.Fatalf("c not durable: %+v %v", rec, ok)
	}
	h.gl.Finish(a.ID, "success")
	h.waitFake("b launched", func(f *executortest.Fake) bool { _, ok := f.LiveLocked(h.hostName(h.tokens[0], b.ID)); return ok })
	h.gl.Finish(b.ID, "success")
	h.waitFake("c launched", func(f *executortest.Fake) bool { _, ok := f.LiveLocked(h.hostName(h.tokens[0], c.ID)); return ok })
	if calls.of(c.ID) == 0 {
		t.Fatal("c never provisioned")
	}
}

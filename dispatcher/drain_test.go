package dispatcher_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/executortest"
)

// During a drain (a launch still in flight), the hosts of jobs that end
// are still removed: they bill by the second.
func TestDrainRemovesHostsOfFinishedJobs(t *testing.T) {
	h := newHarness(t, 1)
	g := newGate()
	first := h.gl.Enqueue("", nil)
	h.fake.OnProvision = func(ctx context.Context, j executors.Job) error {
		if j.ID != first.ID {
			return g.wait(ctx, j.ID)
		}
		return nil
	}
	h.start()
	fname := h.hostName(h.tokens[0], first.ID)
	h.waitFake("first launched", func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(fname); return ok && hh.Launches == 1 })
	held := h.gl.Enqueue("", nil)
	<-g.entered
	stopped := make(chan error, 1)
	go func() { stopped <- h.stop() }()
	<-h.d.Draining()
	h.gl.Finish(first.ID, "success")
	h.waitFake("host of the finished job removed during the drain", func(f *executortest.Fake) bool { return f.GoneLocked(fname) })
	g.open()
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if _, ok := h.fake.Live()[h.hostName(h.tokens[0], held.ID)]; !ok {
		t.Fatal("the launched job's host was removed")
	}
}

// A host whose removal keeps failing is retried with backoff, counted and
// reported, and gives its job slot back: the runner goes on taking jobs.
func TestFailingRemovalFreesSlot(t *testing.T) {
	h := newHarness(t, 1)
	h.cfg.Concurrent = 1
	var failing atomic.Bool
	failing.Store(true)
	h.fake.OnDecommission = func(ctx context.Context, name string) error {
		if failing.Load() {
			return errors.New("PaaS API: 500 Internal Server Error")
		}
		return nil
	}
	stuck := h.gl.Enqueue("", nil)
	h.start()
	sname := h.hostName(h.tokens[0], stuck.ID)
	h.waitFake("launched", func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(sname); return ok && hh.Launches == 1 })
	h.gl.Finish(stuck.ID, "success")
	next := h.gl.Enqueue("", nil)
	nname := h.hostName(h.tokens[0], next.ID)
	h.waitFake("the next job launched while the first host cannot be removed", func(f *executortest.Fake) bool {
		hh, ok := f.LiveLocked(nname)
		return ok && hh.Launches == 1
	})
	st := h.d.Stats()
	if st.DecommissionErrors < 3 || st.RemovalsFailing != 1 {
		t.Fatalf("stats %+v", st)
	}
	if _, live := h.fake.Live()[sname]; !live {
		t.Fatal("host removed?")
	}
	failing.Store(false)
	h.waitFake("removal retried until it works", func(f *executortest.Fake) bool { return f.GoneLocked(sname) })
	deadline := time.Now().Add(wait)
	for h.d.Stats().RemovalsFailing != 0 || h.d.Stats().Jobs != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("stats after removal: %+v", h.d.Stats())
		}
		time.Sleep(time.Millisecond) // the slot accounting follows the removal
	}
}

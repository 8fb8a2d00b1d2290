package dispatcher_test

import (
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/dispatcher"
)

// Raising concurrent while a job runs lets the waiting one in; lowering it
// takes no running job away; bad values are refused.
func TestRetune(t *testing.T) {
	h := newHarness(t, 1)
	h.cfg.Concurrent = 1
	h.start()
	a := h.gl.Enqueue("", nil)
	h.waitStatus(a.ID, "running")
	b := h.gl.Enqueue("", nil)
	// b stays queued while a runs (concurrent = 1): only Retune lets it in
	if h.gl.StatusOf(b.ID) != "pending" {
		t.Fatal("b acquired beyond concurrent = 1")
	}
	if err := h.d.Retune(dispatcher.Tuning{Concurrent: 0, CheckInterval: time.Second, TrackingRPS: 1}); err == nil {
		t.Fatal("concurrent 0 accepted")
	}
	if err := h.d.Retune(dispatcher.Tuning{Concurrent: 2, CheckInterval: 20 * time.Millisecond, TrackingRPS: 1000, Limits: map[string]int{"nope": 1}}); err == nil {
		t.Fatal("an unknown runner accepted")
	}
	if err := h.d.Retune(dispatcher.Tuning{Concurrent: 2, CheckInterval: 20 * time.Millisecond, TrackingRPS: 1000}); err != nil {
		t.Fatal(err)
	}
	h.waitStatus(b.ID, "running")
	if st := h.d.Stats(); st.Concurrent != 2 || st.Jobs != 2 {
		t.Fatalf("stats %+v", st)
	}
	// lowered below the jobs in flight: both keep running
	if err := h.d.Retune(dispatcher.Tuning{Concurrent: 1, CheckInterval: 20 * time.Millisecond, TrackingRPS: 1000}); err != nil {
		t.Fatal(err)
	}
	if st := h.d.Stats(); st.Jobs != 2 {
		t.Fatalf("a job dropped by lowering concurrent: %+v", st)
	}
	h.gl.Finish(a.ID, "success")
	h.gl.Finish(b.ID, "success")
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
}

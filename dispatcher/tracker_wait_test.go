package dispatcher

import (
	"testing"
	"time"
)

// The waiting lane: first checks spread over WaitingInterval, each log
// write (touch) postpones the next check by 1.5 interval, and a job
// that stopped waiting is not touched.
func TestTrackerWaitingLane(t *testing.T) {
	cfg := Config{WaitingInterval: time.Minute}
	cfg.defaults()
	tr := newTracker(&Dispatcher{cfg: cfg})
	r := &runnerState{Runner: &Runner{}}
	start := time.Now()
	var ts []*tracked
	for range 1000 {
		w := &tracked{r: r}
		w.waiting.Store(true)
		tr.add(w)
		ts = append(ts, w)
	}
	lo, hi := time.Duration(1<<62), time.Duration(0)
	for _, e := range tr.lanes[waitLane].q {
		d := e.due.Sub(start)
		lo, hi = min(lo, d), max(hi, d)
	}
	if tr.lanes[waitLane].q.Len() != 1000 || tr.lanes[pollLane].q.Len() != 0 {
		t.Fatalf("lanes: wait %d, poll %d", tr.lanes[waitLane].q.Len(), tr.lanes[pollLane].q.Len())
	}
	if hi > time.Minute+time.Second || hi-lo < 30*time.Second {
		t.Fatalf("first checks not spread over the interval: %v..%v", lo, hi)
	}

	tr = newTracker(&Dispatcher{cfg: cfg})
	w := ts[0]
	tr.add(w)
	before := time.Now()
	tr.touch(w)
	e, at, l, ok := tr.next()
	if !ok || l != waitLane || e.t != w || at.Before(before.Add(90*time.Second)) {
		t.Fatalf("after a log write: lane %d, due in %v", l, time.Until(at))
	}
	// no longer waiting: back to the poll lane, touch does nothing
	w.waiting.Store(false)
	tr.move(w)
	gen := tr.members[w]
	tr.touch(w)
	if tr.members[w] != gen {
		t.Fatal("touch moved a job that does not wait")
	}
	if _, at, l, ok := tr.next(); !ok || l != pollLane || at.After(time.Now().Add(cfg.CheckInterval)) {
		t.Fatalf("after the wait: lane %d due in %v", l, time.Until(at))
	}
}

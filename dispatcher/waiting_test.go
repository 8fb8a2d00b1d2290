package dispatcher_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/dispatcher"
	"gitlab.com/paas-runner/paas-runner/executors/executortest"
	"gitlab.com/paas-runner/paas-runner/guard"
	"gitlab.com/paas-runner/paas-runner/job"
)

// checksOf is a job's status checks (inside WaitFor).
func checksOf(s *coordinatortest.Server, id int64) (n int) {
	s.Each(func(j *coordinatortest.Job) {
		if j.ID == id {
			n = j.StatusChecks
		}
	})
	return n
}

// GitLab requests per waiting job: a job waiting for a lock is not
// status-checked every check_interval like the others (20 ms here); GitLab
// is asked about it at most every WaitingInterval, and its log writes
// count as checks.
func TestWaitingJobIsNotPolled(t *testing.T) {
	h, _, calls := newGuardHarness(t)
	h.cfg.WaitingInterval = time.Hour
	h.start()
	a := lockedJob(h, 1, "production")
	h.waitFake("a launched", func(f *executortest.Fake) bool { _, ok := f.LiveLocked(h.hostName(h.tokens[0], a.ID)); return ok })
	b := lockedJob(h, 2, "production")
	var b0, a0 int
	h.gl.WaitFor(wait, "b waiting", func(s *coordinatortest.Server) bool {
		b0, a0 = checksOf(s, b.ID), checksOf(s, a.ID)
		return s.TraceContains(b.ID, "waiting for lock production")
	})
	// a is checked every 20 ms meanwhile: b would be too, were it polled
	h.gl.WaitFor(wait, "a checked 30 more times", func(s *coordinatortest.Server) bool { return checksOf(s, a.ID) >= a0+30 })
	if n := h.gl.Job(b.ID).StatusChecks; n != b0 {
		t.Fatalf("waiting job checked %d times in GitLab while it waited (WaitingInterval 1h)", n-b0)
	}
	if n := h.gl.Count(fmt.Sprintf("PATCH /api/v4/jobs/%d/trace", b.ID)); n != 1 {
		t.Fatalf("%d log writes for a waiting job in less than a minute", n)
	}
	h.gl.Finish(a.ID, "success")
	h.waitFake("b launched", func(f *executortest.Fake) bool { _, ok := f.LiveLocked(h.hostName(h.tokens[0], b.ID)); return ok })
	// launched, b is checked again like any job
	b1 := h.gl.Job(b.ID).StatusChecks
	h.gl.WaitFor(wait, "b checked after its launch", func(s *coordinatortest.Server) bool { return checksOf(s, b.ID) > b1 })
	if calls.of(b.ID) == 0 {
		t.Fatal("b never provisioned")
	}
}

// A waiting job canceled (canceling: 202 with Job-Status canceling) or
// ended in GitLab (403 with Job-Status) leaves the queue on the answer to
// its waiting line, with no status check spent and no host made.
func TestWaitingJobEndsOnLogAnswer(t *testing.T) {
	old := guard.LogEvery
	guard.LogEvery = 20 * time.Millisecond
	defer func() { guard.LogEvery = old }()
	h, m, calls := newGuardHarness(t)
	h.cfg.Concurrent, h.cfg.MaxProvisioning = 4, 2
	h.cfg.WaitingInterval = time.Hour
	h.start()
	a := lockedJob(h, 1, "production")
	h.waitFake("a launched", func(f *executortest.Fake) bool { _, ok := f.LiveLocked(h.hostName(h.tokens[0], a.ID)); return ok })
	b := lockedJob(h, 2, "production")
	c := lockedJob(h, 3, "production")
	var b0, c0 int
	h.gl.WaitFor(wait, "b and c waiting", func(s *coordinatortest.Server) bool {
		b0, c0 = checksOf(s, b.ID), checksOf(s, c.ID)
		return s.TraceContains(b.ID, "waiting for lock production") && s.TraceContains(c.ID, "waiting for lock production")
	})
	h.gl.Cancel(b.ID)           // the harness runner cancels gracefully: canceling
	h.gl.Finish(c.ID, "failed") // ended in GitLab: 403 to the next write
	h.waitStatus(b.ID, "canceled")
	for deadline := time.After(wait); ; {
		changed := m.Changed()
		if st, _ := m.Snapshot(); len(st.Waiters) == 0 {
			break
		}
		select {
		case <-changed:
		case <-deadline:
			st, _ := m.Snapshot()
			t.Fatalf("waiters left: %+v", st.Waiters)
		}
	}
	if nb, nc := h.gl.Job(b.ID).StatusChecks, h.gl.Job(c.ID).StatusChecks; nb != b0 || nc != c0 {
		t.Fatalf("status checks spent on ending waits: b %d, c %d", nb-b0, nc-c0)
	}
	if calls.of(b.ID)+calls.of(c.ID) != 0 {
		t.Fatal("host made for a job that ended while waiting")
	}
	if hs := m.Holders(); len(hs) != 1 || hs[0].Job.JobID != a.ID {
		t.Fatalf("holders %+v", hs)
	}
}

// slowGrant is the locks guard, whose Admit of one job (forJob) returns
// only once another job (other) was acquired, or after a second: the
// window in which a new acquisition could take the slot the granted job
// needs.
type slowGrant struct {
	*guard.Manager
	gl            *coordinatortest.Server
	forJob, other atomic.Int64
}

func (g *slowGrant) Admit(ctx context.Context, runnerID string, j *job.Acquired, jobLog func(string), blocking func()) ([]job.Variable, error) {
	vs, err := g.Manager.Admit(ctx, runnerID, j, jobLog, blocking)
	if err == nil && j.ID == g.forJob.Load() {
		for end := time.Now().Add(time.Second); time.Now().Before(end) && g.gl.Job(g.other.Load()).Acquisitions == 0; {
			time.Sleep(5 * time.Millisecond) // a window for the race, not a synchronisation
		}
	}
	return vs, err
}

// A job granted its lock goes ahead of new acquisitions: with two slots,
// held by a (holding the lock) and d, b waits for a's lock without a slot
// and c (no lock) waits in GitLab; when a ends, b gets the lock and the
// slot, and c is not acquired before b has its slot (it is after b ends).
func TestGrantedJobGoesAheadOfNewJobs(t *testing.T) {
	h, m, calls := newGuardHarness(t)
	h.cfg.Concurrent, h.cfg.MaxProvisioning = 2, 2
	g := &slowGrant{Manager: m, gl: h.gl}
	h.cfg.Guards = []dispatcher.Guard{g}
	h.start()
	m.SetGrantHook(h.d.Granted)
	live := func(what string, id int64) {
		t.Helper()
		h.waitFake(what, func(f *executortest.Fake) bool { _, ok := f.LiveLocked(h.hostName(h.tokens[0], id)); return ok })
	}
	a := lockedJob(h, 1, "production")
	live("a launched", a.ID)
	b := lockedJob(h, 2, "production")
	h.gl.WaitFor(wait, "b waiting", func(s *coordinatortest.Server) bool { return s.TraceContains(b.ID, "waiting for lock production") })
	d := lockedJob(h, 4, "") // takes the slot b gave back
	live("d launched", d.ID)
	c := lockedJob(h, 3, "")
	g.forJob.Store(b.ID)
	g.other.Store(c.ID)
	h.gl.Finish(a.ID, "success")
	h.waitFake("b launched, or c provisioned", func(f *executortest.Fake) bool {
		_, ok := f.LiveLocked(h.hostName(h.tokens[0], b.ID))
		return ok || calls.of(c.ID) > 0
	})
	if n := h.gl.Job(c.ID).Acquisitions; n != 0 || calls.of(c.ID) != 0 {
		t.Fatal("a new job took the slot of the job granted its lock")
	}
	h.gl.Finish(b.ID, "success")
	live("c launched", c.ID)
	h.gl.Finish(c.ID, "success")
	h.gl.Finish(d.ID, "success")
}

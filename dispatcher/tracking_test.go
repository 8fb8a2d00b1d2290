package dispatcher_test

import (
	"context"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/dispatcher"
	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/executortest"
)

// blind is the fake executor without its end watch: the dispatcher must
// poll GitLab for its jobs.
type blind struct{ f *executortest.Fake }

func (b blind) Plan(ctx context.Context, j executors.Job) (executors.Handle, error) {
	return b.f.Plan(ctx, j)
}
func (b blind) Provision(ctx context.Context, h executors.Handle, j executors.Job) (executors.Handle, error) {
	return b.f.Provision(ctx, h, j)
}
func (b blind) Launch(ctx context.Context, h executors.Handle, j executors.Job) (executors.Handle, error) {
	return b.f.Launch(ctx, h, j)
}
func (b blind) Decommission(ctx context.Context, h executors.Handle) error {
	return b.f.Decommission(ctx, h)
}

// Launched jobs of an executor that reports host ends are not polled in
// GitLab (only a slow safety net), those of one that cannot are; a host
// end is checked in GitLab at once.
func TestTrackingPollsOnlyWhenItPays(t *testing.T) {
	h := newHarness(t, 2)
	h.cfg.SafetyInterval = time.Hour
	h.cfg.SafetyPerMinute = 100
	h.wrapRunner = func(i int, r *dispatcher.Runner) {
		if i == 1 {
			r.Executor = blind{h.fake}
		}
	}
	watched := []*coordinatortest.Job{h.gl.Enqueue(h.tokens[0], nil), h.gl.Enqueue(h.tokens[0], nil)}
	polled := []*coordinatortest.Job{h.gl.Enqueue(h.tokens[1], nil), h.gl.Enqueue(h.tokens[1], nil)}
	h.start()
	for i, j := range append(append([]*coordinatortest.Job(nil), watched...), polled...) {
		name := h.hostName(h.tokens[i/2], j.ID)
		h.waitFake("launched", func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(name); return ok && hh.Launches == 1 })
	}
	before := map[int64]int{}
	for _, j := range watched {
		before[j.ID] = h.gl.Job(j.ID).StatusChecks
	}
	h.gl.WaitFor(wait, "the blind executor's jobs polled", func(s *coordinatortest.Server) bool {
		n := 0
		s.Each(func(j *coordinatortest.Job) {
			if j.ID == polled[0].ID || j.ID == polled[1].ID {
				n += j.StatusChecks
			}
		})
		return n >= 40
	})
	for _, j := range watched {
		if n := h.gl.Job(j.ID).StatusChecks - before[j.ID]; n > 1 {
			t.Errorf("job %d, whose host end is reported, was checked %d times in GitLab", j.ID, n)
		}
	}
	// a host end is checked in GitLab at once
	h.gl.Finish(watched[0].ID, "success")
	h.fake.End(executors.End{JobID: watched[0].ID})
	name := h.hostName(h.tokens[0], watched[0].ID)
	h.waitFake("host of the ended job removed", func(f *executortest.Fake) bool { return f.GoneLocked(name) })
}

// The safety net notices a job that ended in GitLab though its host never
// reported it.
func TestSafetyNet(t *testing.T) {
	h := newHarness(t, 1)
	h.cfg.SafetyInterval = 200 * time.Millisecond
	j := h.gl.Enqueue("", nil)
	h.start()
	name := h.hostName(h.tokens[0], j.ID)
	h.waitFake("launched", func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(name); return ok && hh.Launches == 1 })
	h.gl.Finish(j.ID, "success")
	h.waitFake("removed by the safety net", func(f *executortest.Fake) bool { return f.GoneLocked(name) })
}

package dispatcher_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/dispatcher"
	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/executortest"
	"gitlab.com/paas-runner/paas-runner/job"
)

// runningIDs lists the jobs GitLab has running.
func runningIDs(gl *coordinatortest.Server) []int64 {
	var ids []int64
	for _, j := range gl.Jobs() {
		if j.Status == "running" {
			ids = append(ids, j.ID)
		}
	}
	return ids
}

// reloadLoad runs n jobs at most `before` at once, lowers the cap with
// lower while `before` are in flight, then checks that the jobs in flight
// are kept and finish, and that no job is provisioned while the cap is
// reached: never more in flight than `after` once the older jobs are done.
func reloadLoad(t *testing.T, h *harness, before, after int, lower func(h *harness) error) {
	const n = 12
	var lowered atomic.Bool
	var mu sync.Mutex
	var violations []string
	h.fake.OnProvision = func(ctx context.Context, j executors.Job) error {
		if st := h.d.Stats(); lowered.Load() && st.Jobs > after {
			mu.Lock()
			violations = append(violations, fmt.Sprintf("job %d provisioned with %d jobs in flight", j.ID, st.Jobs))
			mu.Unlock()
		}
		return nil
	}
	h.fake.OnLaunch = func(ctx context.Context, j executors.Job) error {
		if lowered.Load() {
			go h.gl.Finish(j.ID, "success")
		}
		return nil
	}
	h.start()
	for i := 0; i < n; i++ {
		h.gl.Enqueue("", nil)
	}
	h.gl.WaitFor(wait, fmt.Sprintf("%d jobs running", before), func(s *coordinatortest.Server) bool {
		c := 0
		s.Each(func(j *coordinatortest.Job) {
			if j.Status == "running" {
				c++
			}
		})
		return c == before
	})
	h.waitFake("hosts launched", func(f *executortest.Fake) bool {
		c := 0
		for _, j := range h.gl.Jobs() {
			if hh, ok := f.LiveLocked(h.hostName(h.tokens[0], j.ID)); ok && hh.Launches == 1 {
				c++
			}
		}
		return c == before
	})
	lowered.Store(true)
	if err := lower(h); err != nil {
		t.Fatal(err)
	}
	old := runningIDs(h.gl)
	if len(old) != before {
		t.Fatalf("running before the reload: %v", old)
	}
	// The jobs in flight are kept: each finishes and its host is removed.
	for i, id := range old {
		if st := h.d.Stats(); st.Jobs < len(old)-i {
			t.Fatalf("jobs dropped by the reload: %+v", st)
		}
		h.gl.Finish(id, "success")
		name := h.hostName(h.tokens[0], id)
		h.waitFake("removal of "+name, func(f *executortest.Fake) bool { return f.GoneLocked(name) })
	}
	h.gl.WaitFor(2*wait, "all jobs done", func(s *coordinatortest.Server) bool {
		done, running := 0, 0
		s.Each(func(j *coordinatortest.Job) {
			switch j.Status {
			case "success":
				done++
			case "running":
				running++
			}
			if j.Acquisitions > 1 {
				violations = append(violations, fmt.Sprintf("job %d acquired %d times", j.ID, j.Acquisitions))
			}
		})
		if running > max(after, before) {
			violations = append(violations, fmt.Sprintf("%d running", running))
		}
		return done == n
	})
	h.waitFake("every host removed", func(f *executortest.Fake) bool { live, gone := f.CountLocked(); return live == 0 && gone == n })
	mu.Lock()
	defer mu.Unlock()
	if len(violations) > 0 {
		t.Fatalf("after the reload: %v", violations[:min(5, len(violations))])
	}
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
}

func TestReloadLowersConcurrentUnderLoad(t *testing.T) {
	h := newHarness(t, 1)
	h.cfg.Concurrent = 6
	reloadLoad(t, h, 6, 2, func(h *harness) error {
		cfg := h.cfg
		cfg.Concurrent = 2
		if err := h.d.Reconfigure(cfg, []*dispatcher.Runner{h.runner(0, h.tokens[0], 0)}); err != nil {
			return err
		}
		if c := h.d.Stats().Concurrent; c != 2 {
			t.Errorf("Stats().Concurrent = %d after the reload", c)
		}
		return nil
	})
}

func TestReloadLowersRunnerLimitUnderLoad(t *testing.T) {
	h := newHarness(t, 1)
	h.limits = []int{5}
	reloadLoad(t, h, 5, 1, func(h *harness) error {
		return h.d.Reconfigure(h.cfg, []*dispatcher.Runner{h.runner(0, h.tokens[0], 1)})
	})
}

// A raised limit is used at once: waiters for a slot are woken.
func TestReloadRaisesConcurrent(t *testing.T) {
	h := newHarness(t, 1)
	h.cfg.Concurrent = 2
	h.start()
	for i := 0; i < 8; i++ {
		h.gl.Enqueue("", nil)
	}
	h.waitFake("2 hosts", func(f *executortest.Fake) bool { live, _ := f.CountLocked(); return live == 2 })
	cfg := h.cfg
	cfg.Concurrent = 5
	if err := h.d.Reconfigure(cfg, []*dispatcher.Runner{h.runner(0, h.tokens[0], 0)}); err != nil {
		t.Fatal(err)
	}
	h.waitFake("5 hosts", func(f *executortest.Fake) bool { live, _ := f.CountLocked(); return live == 5 })
	if st := h.d.Stats(); st.Jobs != 5 || st.Concurrent != 5 {
		t.Fatalf("stats: %+v", st)
	}
	for _, id := range runningIDs(h.gl) {
		h.gl.Finish(id, "success")
	}
	h.waitFake("8 hosts removed", func(f *executortest.Fake) bool {
		live, gone := f.CountLocked()
		return live == 0 && gone == 8 || (live == 3 && gone == 5)
	})
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
}

// countingSource counts job requests.
type countingSource struct {
	dispatcher.JobSource
	requests atomic.Int64
}

func (c *countingSource) RequestJob(ctx context.Context) (*job.Acquired, error) {
	c.requests.Add(1)
	return c.JobSource.RequestJob(ctx)
}

// A removed runner acquires no more, and its jobs in flight finish and
// have their hosts removed.
func TestReloadRemovesRunnerWithJobsInFlight(t *testing.T) {
	h := newHarness(t, 2)
	sources := make([]*countingSource, 2)
	h.wrapRunner = func(i int, r *dispatcher.Runner) {
		sources[i] = &countingSource{JobSource: r.Source}
		r.Source = sources[i]
	}
	h.start()
	gone := []*coordinatortest.Job{h.gl.Enqueue(h.tokens[1], nil), h.gl.Enqueue(h.tokens[1], nil)}
	for _, j := range gone {
		name := h.hostName(h.tokens[1], j.ID)
		h.waitFake("launch of "+name, func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(name); return ok && hh.Launches == 1 })
	}
	keep := h.runner(0, h.tokens[0], 0)
	keep.Source = &countingSource{JobSource: keep.Source} // ignored: the runner is kept as it is
	if err := h.d.Reconfigure(h.cfg, []*dispatcher.Runner{keep}); err != nil {
		t.Fatal(err)
	}
	if ids := h.d.RunnerIDs(); len(ids) != 1 || ids[0] != uniqueName(h.tokens[0]) {
		t.Fatalf("runners after the reload: %v", ids)
	}
	// Its loop ends once the request it may have had in flight returned.
	h.gl.WaitFor(wait, "the removed runner's loop ended", func(*coordinatortest.Server) bool { return h.d.Polling() == 1 })
	after := sources[1].requests.Load()
	late := h.gl.Enqueue(h.tokens[1], nil)
	// The kept runner goes on polling (with its own source); the removed
	// one does not.
	base := sources[0].requests.Load()
	h.gl.WaitFor(wait, "the kept runner polls", func(*coordinatortest.Server) bool { return sources[0].requests.Load() > base+20 })
	if n := sources[1].requests.Load(); n != after {
		t.Fatalf("the removed runner made %d job requests after its loop ended", n-after)
	}
	if s := h.gl.StatusOf(late.ID); s != "pending" {
		t.Fatalf("a job of the removed runner was taken after the reload: %s", s)
	}
	if st := h.d.Stats(); st.Launched != 2 {
		t.Fatalf("jobs of the removed runner dropped: %+v", st)
	}
	for _, j := range gone {
		h.gl.Finish(j.ID, "success")
	}
	for _, j := range gone {
		name := h.hostName(h.tokens[1], j.ID)
		h.waitFake("removal of "+name, func(f *executortest.Fake) bool { return f.GoneLocked(name) })
	}
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	if n := h.store.Len(); n != 0 {
		t.Fatalf("state still has %d jobs", n)
	}
}

// An added runner starts polling; removed and added back, a runner polls
// again.
func TestReloadAddsRunner(t *testing.T) {
	h := newHarness(t, 1)
	h.start()
	tok := "glrt-added-0123456789"
	h.gl.AddRunner(tok)
	j := h.gl.Enqueue(tok, nil)
	if err := h.d.Reconfigure(h.cfg, []*dispatcher.Runner{h.runner(0, h.tokens[0], 0), h.runner(1, tok, 0)}); err != nil {
		t.Fatal(err)
	}
	name := h.hostName(tok, j.ID)
	h.waitFake("launch of "+name, func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(name); return ok && hh.Launches == 1 })
	// The added runner's executor end watch runs: a host that stops is
	// noticed from the host.
	h.fake.Stop(uniqueName(tok), j.ID, 0, "")
	h.gl.Finish(j.ID, "success")
	h.waitFake("removal of "+name, func(f *executortest.Fake) bool { return f.GoneLocked(name) })

	if err := h.d.Reconfigure(h.cfg, []*dispatcher.Runner{h.runner(0, h.tokens[0], 0)}); err != nil {
		t.Fatal(err)
	}
	if err := h.d.Reconfigure(h.cfg, []*dispatcher.Runner{h.runner(0, h.tokens[0], 0), h.runner(1, tok, 0)}); err != nil {
		t.Fatal(err)
	}
	j2 := h.gl.Enqueue(tok, nil)
	name2 := h.hostName(tok, j2.ID)
	h.waitFake("launch of "+name2, func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(name2); return ok && hh.Launches == 1 })
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	// After draining, a reload is refused.
	if err := h.d.Reconfigure(h.cfg, nil); err == nil {
		t.Fatal("Reconfigure after Run returned nil")
	}
}

// A shortened check_interval is used at once: an idle runner that would
// sleep the old interval polls again.
func TestReloadShortensCheckInterval(t *testing.T) {
	h := newHarness(t, 1)
	h.cfg.CheckInterval = time.Hour
	var src *countingSource
	h.wrapRunner = func(i int, r *dispatcher.Runner) {
		src = &countingSource{JobSource: r.Source}
		r.Source = src
	}
	h.start()
	h.gl.WaitFor(wait, "the first poll", func(*coordinatortest.Server) bool { return src.requests.Load() >= 1 })
	j := h.gl.Enqueue("", nil)
	cfg := h.cfg
	cfg.CheckInterval = 20 * time.Millisecond
	if err := h.d.Reconfigure(cfg, []*dispatcher.Runner{h.runner(0, h.tokens[0], 0)}); err != nil {
		t.Fatal(err)
	}
	name := h.hostName(h.tokens[0], j.ID)
	h.waitFake("launch of "+name, func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(name); return ok && hh.Launches == 1 })
	h.gl.Finish(j.ID, "success")
	h.waitFake("removal of "+name, func(f *executortest.Fake) bool { return f.GoneLocked(name) })
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
}

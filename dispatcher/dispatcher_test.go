package dispatcher_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/executortest"
	"gitlab.com/paas-runner/paas-runner/state"
)

func TestJobLifecycle(t *testing.T) {
	h := newHarness(t, 1)
	h.start()
	var jobs []*coordinatortest.Job
	for i := 0; i < 5; i++ {
		jobs = append(jobs, h.gl.Enqueue("", nil))
	}
	for _, j := range jobs {
		name := h.hostName(h.tokens[0], j.ID)
		h.waitFake("launch of "+name, func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(name); return ok && hh.Launches == 1 })
	}
	for _, j := range jobs {
		got := h.gl.Job(j.ID)
		if !strings.Contains(string(got.Trace), "paas-runner: provisioning a fake host") || !strings.Contains(string(got.Trace), "host ready after") {
			t.Errorf("job %d trace: %q", j.ID, got.Trace)
		}
		host, _ := h.fake.Live()[h.hostName(h.tokens[0], j.ID)]
		if host.TraceOffset != int64(len(got.Trace)) {
			t.Errorf("host got trace offset %d, log has %d bytes", host.TraceOffset, len(got.Trace))
		}
		if !strings.Contains(string(host.Payload), j.Token) {
			t.Errorf("host did not get the payload")
		}
		h.gl.Finish(j.ID, "success") // the inner runner reports
	}
	h.waitFake("every host removed", func(f *executortest.Fake) bool { live, gone := f.CountLocked(); return live == 0 && gone == 5 })
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	if n := h.store.Len(); n != 0 {
		t.Fatalf("state still has %d jobs: %+v", n, h.store.Jobs())
	}
	for _, j := range h.gl.Jobs() {
		if j.Acquisitions != 1 || j.Status != "success" {
			t.Errorf("job %d: %+v", j.ID, j)
		}
	}
}

// Limits hold exactly however the loops interleave: concurrent across
// runners, limit per runner, max provisioning.
func TestLimitsNeverExceeded(t *testing.T) {
	h := newHarness(t, 3)
	h.cfg.Concurrent = 5
	h.cfg.MaxProvisioning = 2
	h.limits = []int{2, 0, 3}
	var mu sync.Mutex
	var violations []string
	check := func() {
		st := h.d.Stats()
		if st.Jobs > 5 || st.Provisioning > 2 {
			mu.Lock()
			violations = append(violations, fmt.Sprintf("%+v", st))
			mu.Unlock()
		}
	}
	h.fake.OnProvision = func(ctx context.Context, j executors.Job) error { check(); return nil }
	h.fake.OnLaunch = func(ctx context.Context, j executors.Job) error {
		check()
		go h.gl.Finish(j.ID, "success") // the job runs quickly on its host
		return nil
	}
	h.start()
	const n = 60
	for i := 0; i < n; i++ {
		h.gl.Enqueue("", nil)
	}
	// Check GitLab's view on every change until every job is done.
	h.gl.WaitFor(2*wait, "all jobs done", func(s *coordinatortest.Server) bool {
		running := map[string]int{}
		total, done := 0, 0
		s.Each(func(j *coordinatortest.Job) {
			switch j.Status {
			case "running":
				running[j.RunnerToken]++
				total++
			case "success":
				done++
			}
			if j.Acquisitions > 1 {
				violations = append(violations, fmt.Sprintf("job %d acquired %d times", j.ID, j.Acquisitions))
			}
		})
		// GitLab may count a job running a moment longer than we do (until
		// its host is removed we hold the slot, so this bound is strict).
		if total > 5 || running[h.tokens[0]] > 2 || running[h.tokens[2]] > 3 {
			violations = append(violations, fmt.Sprintf("running %v total %d", running, total))
		}
		return done == n
	})
	mu.Lock()
	defer mu.Unlock()
	if len(violations) > 0 {
		t.Fatalf("limits exceeded: %v", violations[:min(5, len(violations))])
	}
	if m := h.fake.MaxConcurrentProvisions(); m > 2 {
		t.Fatalf("%d provisions at once", m)
	}
}

func TestCancelWhileProvisioning(t *testing.T) {
	h := newHarness(t, 1)
	g := newGate()
	h.fake.OnProvision = func(ctx context.Context, j executors.Job) error { return g.wait(ctx, j.ID) }
	h.start()
	j := h.gl.Enqueue("", nil)
	<-g.entered
	h.gl.Cancel(j.ID) // runner advertised cancel_gracefully: canceling
	h.waitStatus(j.ID, "canceled")
	name := h.hostName(h.tokens[0], j.ID)
	h.waitFake("host removed", func(f *executortest.Fake) bool { _, live := f.LiveLocked(name); return !live })
	h.gl.WaitFor(wait, "state empty", func(*coordinatortest.Server) bool { return h.store.Len() == 0 })
	if l := h.fake.Removed()[name].Launches; l != 0 {
		t.Fatal("a canceled job was launched")
	}
}

func TestCancelWhileRunning(t *testing.T) {
	h := newHarness(t, 1)
	h.start()
	j := h.gl.Enqueue("", nil)
	name := h.hostName(h.tokens[0], j.ID)
	h.waitFake("launch", func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(name); return ok && hh.Launches == 1 })
	h.gl.ForceCancel(j.ID)
	h.waitFake("host removed", func(f *executortest.Fake) bool { return f.GoneLocked(name) })
}

func TestPermanentLaunchFailure(t *testing.T) {
	for _, decommission := range []bool{true, false} {
		t.Run(fmt.Sprintf("decommission=%v", decommission), func(t *testing.T) {
			h := newHarness(t, 1)
			h.cfg.DecommissionLaunchFailures = decommission
			h.fake.OnLaunch = func(ctx context.Context, j executors.Job) error {
				return executors.Permanent("launch", errors.New("image build failed: no space left"))
			}
			h.start()
			j := h.gl.Enqueue("", nil)
			h.waitStatus(j.ID, "failed")
			got := h.gl.Job(j.ID)
			if got.FailureReason != "runner_system_failure" {
				t.Errorf("failure reason %q", got.FailureReason)
			}
			if !strings.Contains(string(got.Trace), "\x1b[31;1mpaas-runner: ERROR: could not launch the host: launch: image build failed: no space left") {
				t.Errorf("trace %q", got.Trace)
			}
			name := h.hostName(h.tokens[0], j.ID)
			if decommission {
				h.waitFake("host removed", func(f *executortest.Fake) bool { return f.GoneLocked(name) })
				h.gl.WaitFor(wait, "state empty", func(*coordinatortest.Server) bool { return h.store.Len() == 0 })
			} else {
				h.gl.WaitFor(wait, "kept in state", func(*coordinatortest.Server) bool {
					rec, ok := h.store.Get(state.Key{Runner: uniqueName(h.tokens[0]), ID: j.ID})
					return ok && rec.KeepResources && rec.Reported
				})
				if _, live := h.fake.Live()[name]; !live {
					t.Fatal("host removed despite paas_decommission_launch_failures = false")
				}
				// and the slot is free again
				j2 := h.gl.Enqueue("", nil)
				h.waitStatus(j2.ID, "failed")
			}
		})
	}
}

func TestTransientErrorsRetried(t *testing.T) {
	h := newHarness(t, 1)
	var mu sync.Mutex
	fails := 2
	h.fake.OnProvision = func(ctx context.Context, j executors.Job) error {
		mu.Lock()
		defer mu.Unlock()
		if fails > 0 {
			fails--
			return executors.Transient("provision", errors.New("API timeout"))
		}
		return nil
	}
	h.start()
	j := h.gl.Enqueue("", nil)
	name := h.hostName(h.tokens[0], j.ID)
	h.waitFake("launch", func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(name); return ok && hh.Launches == 1 })
	tr := string(h.gl.Job(j.ID).Trace)
	if !strings.Contains(tr, "provision failed (attempt 1 of 5), retrying") || !strings.Contains(tr, "attempt 2 of 5") {
		t.Errorf("trace %q", tr)
	}
}

func TestRetriesExhausted(t *testing.T) {
	h := newHarness(t, 1)
	h.cfg.ProvisionAttempts = 3
	h.fake.OnProvision = func(ctx context.Context, j executors.Job) error {
		return executors.Transient("provision", errors.New("quota exceeded"))
	}
	h.start()
	j := h.gl.Enqueue("", nil)
	h.waitStatus(j.ID, "failed")
	if tr := string(h.gl.Job(j.ID).Trace); !strings.Contains(tr, "could not provision the host (3 attempts)") {
		t.Errorf("trace %q", tr)
	}
}

func TestCoordinatorOutage(t *testing.T) {
	h := newHarness(t, 1)
	h.gl.Inject("jobs/request", 502, -1, nil)
	h.gl.Inject("GET /api/v4/job$", 500, -1, nil)
	h.start()
	h.gl.WaitFor(wait, "polls during the outage", func(s *coordinatortest.Server) bool { return s.CountOf("POST /api/v4/jobs/request") >= 10 })
	j := h.gl.Enqueue("", nil)
	h.gl.ClearInjections()
	name := h.hostName(h.tokens[0], j.ID)
	h.waitFake("launch after outage", func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(name); return ok && hh.Launches == 1 })
	h.gl.Inject("GET /api/v4/job$", 503, -1, nil)
	h.gl.Finish(j.ID, "success")
	h.gl.WaitFor(wait, "tracking during the outage", func(s *coordinatortest.Server) bool { return s.CountOf("GET /api/v4/job") >= 5 })
	if _, live := h.fake.Live()[name]; !live {
		t.Fatal("host removed while GitLab could not confirm the end")
	}
	h.gl.ClearInjections()
	h.waitFake("host removed after outage", func(f *executortest.Fake) bool { return f.GoneLocked(name) })
}

func TestForbiddenDisablesRunner(t *testing.T) {
	h := newHarness(t, 2)
	h.gl.RemoveRunner(h.tokens[0]) // its token is refused from now on
	h.start()
	// the healthy runner keeps working
	j := h.gl.Enqueue(h.tokens[1], nil)
	h.waitFake("launch on healthy runner", func(f *executortest.Fake) bool {
		hh, ok := f.LiveLocked(h.hostName(h.tokens[1], j.ID))
		return ok && hh.Launches == 1
	})
	h.gl.WaitFor(wait, "many polls of the healthy runner", func(s *coordinatortest.Server) bool {
		return s.CountOf("POST /api/v4/jobs/request") >= 30
	})
	if n := h.gl.Count("403 " + h.tokens[0]); n != 3 {
		t.Fatalf("refused runner polled %d times; want it disabled after 3", n)
	}
}

func TestPollCyclesStop(t *testing.T) {
	h := newHarness(t, 1)
	h.cfg.PollCycles = 3
	h.start()
	select {
	case <-h.done:
		if h.runErr != nil {
			t.Fatal(h.runErr)
		}
	case <-time.After(wait):
		t.Fatal("did not stop after 3 poll cycles")
	}
	if n := h.gl.Count("POST /api/v4/jobs/request"); n != 3 {
		t.Fatalf("%d requests", n)
	}
}

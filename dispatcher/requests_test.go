package dispatcher_test

import (
	"context"
	"fmt"
	"hash/crc32"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/dispatcher"
	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/executortest"
	"gitlab.com/paas-runner/paas-runner/jobrunner"
)

// innerAgent is the User-Agent of the emulated inner runners: their
// requests are not the daemon's.
const innerAgent = "emulated-inner-runner"

// innerHosts is the fake executor whose Launch starts an emulated inner
// runner, as paas-runner's exec-fetched-job on a local-docker host does
// its part of the log: the real jobrunner.Trace goes on at the offset,
// checksum and lead the daemon handed over, writes a line, waits for the
// test to let the job end, reports success with the log's size and
// checksum, and its host ends (Reported, as local-docker tells an exit 0
// of paas-runner's inner runner).
type innerHosts struct {
	*executortest.Fake
	url      string
	takes    bool // TakesTraceLead
	reported bool // host ends are reported as Reported
	exitCode int
	crash    bool // the host stops before the job reports anything
	release  chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	leads    map[int64][]byte
}

func (e *innerHosts) TakesTraceLead() bool { return e.takes }

func (e *innerHosts) Launch(ctx context.Context, h executors.Handle, j executors.Job) (executors.Handle, error) {
	out, err := e.Fake.Launch(ctx, h, j)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.leads[j.ID] = j.TraceLead
	e.mu.Unlock()
	e.wg.Add(1)
	go e.run(j)
	return out, nil
}

func (e *innerHosts) run(j executors.Job) {
	defer e.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	gl, err := coordinator.New(coordinator.Config{URL: e.url, Token: j.Token, UserAgent: innerAgent,
		Retry: coordinator.RetryPolicy{Min: time.Millisecond, Max: 10 * time.Millisecond}})
	if err != nil {
		panic(err)
	}
	tr := jobrunner.NewTrace(gl, j.ID, j.Token, j.TraceOffset, j.TraceCRC, []string{j.Token}, nil, 0, 20*time.Millisecond, nil)
	tr.Lead(j.TraceLead)
	tctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { tr.Run(tctx); close(done) }()
	fmt.Fprintf(tr, "inner runner: job %d runs\n", j.ID)
	select {
	case <-e.release:
	case <-ctx.Done():
	}
	stop()
	<-done
	if e.crash {
		e.End(executors.End{JobID: j.ID, ExitCode: e.exitCode, Detail: "crashed"})
		return
	}
	size, sum, err := tr.Close(ctx)
	if err != nil {
		panic(err)
	}
	u := coordinator.Update{State: "success"}
	u.Output = &struct {
		Checksum string `json:"checksum,omitempty"`
		Bytesize int64  `json:"bytesize"`
	}{sum, size}
	if _, err := gl.UpdateJob(ctx, j.ID, j.Token, u); err != nil {
		panic(err)
	}
	e.End(executors.End{JobID: j.ID, ExitCode: e.exitCode, Reported: e.reported})
}

// route is a request's endpoint: "PUT /api/v4/jobs/:id".
func route(r *http.Request) string {
	parts := strings.Split(r.URL.Path, "/")
	for i, p := range parts {
		if _, err := strconv.ParseInt(p, 10, 64); err == nil {
			parts[i] = ":id"
		}
	}
	return r.Method + " " + strings.Join(parts, "/")
}

// requestCounter counts the daemon's requests by endpoint.
type requestCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func countDaemonRequests(gl *coordinatortest.Server) *requestCounter {
	c := &requestCounter{n: map[string]int{}}
	gl.Observe(coordinatortest.Observer{Request: func(r *http.Request) {
		if r.Header.Get("User-Agent") == innerAgent {
			return
		}
		c.mu.Lock()
		c.n[route(r)]++
		c.mu.Unlock()
	}})
	return c
}

func (c *requestCounter) get(route string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[route]
}

const (
	confirmRoute = "PUT /api/v4/jobs/:id"
	traceRoute   = "PATCH /api/v4/jobs/:id/trace"
	checkRoute   = "GET /api/v4/job"
	pollRoute    = "POST /api/v4/jobs/request"
)

// The daemon's own GitLab requests per job, by endpoint, on a host whose
// inner runner takes the daemon's last lines and whose end is reported:
// one confirmation (two-phase commit) and nothing else — no log write (its
// two lines go out with the inner runner's first update), no status check
// while the job runs (the safety net is a minute away) nor after its host
// ends (its inner runner exited saying GitLab has the job's end). Without
// lead taking, both lines cost one PATCH; without a reported end, one
// check follows the host's end. The job log is the daemon's lines, then
// the inner runner's, with the checksum GitLab expects.
func TestDaemonRequestsPerJob(t *testing.T) {
	for _, tc := range []struct {
		name            string
		takes, reported bool
		patches, checks int // per job
	}{
		{"lead-taken-end-reported", true, true, 0, 0},
		{"lines-written-by-the-daemon", false, true, 1, 0},
		{"end-not-reported", true, false, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const jobs = 5
			h := newHarness(t, 1)
			h.cfg.CheckInterval = 100 * time.Millisecond
			h.cfg.SafetyInterval = time.Hour
			h.cfg.LogHold = time.Hour // a hold that expires would be a PATCH
			ex := &innerHosts{Fake: h.fake, url: h.gl.URL, takes: tc.takes, reported: tc.reported, release: make(chan struct{}), leads: map[int64][]byte{}}
			h.wrapRunner = func(_ int, r *dispatcher.Runner) { r.Executor = ex }
			count := countDaemonRequests(h.gl)
			var ids []int64
			for i := 0; i < jobs; i++ {
				ids = append(ids, h.gl.Enqueue("", nil).ID)
			}
			h.start()
			h.waitFake("jobs launched", func(f *executortest.Fake) bool {
				for _, id := range ids {
					if hh, ok := f.LiveLocked(h.hostName(h.tokens[0], id)); !ok || hh.Launches != 1 {
						return false
					}
				}
				return true
			})
			// The jobs run for several check intervals (the daemon polls
			// GitLab for jobs meanwhile): long enough for a status check
			// due at a check interval after acquisition to be made.
			polls := count.get(pollRoute)
			h.gl.WaitFor(wait, "three more polls", func(*coordinatortest.Server) bool { return count.get(pollRoute) >= polls+3 })
			close(ex.release)
			h.waitFake("hosts removed", func(f *executortest.Fake) bool { _, gone := f.CountLocked(); return gone == jobs })
			ex.wg.Wait()

			if got := count.get(confirmRoute); got != jobs {
				t.Errorf("%s: %d requests for %d jobs, want 1 per job (the confirmation)", confirmRoute, got, jobs)
			}
			if got := count.get(traceRoute); got != tc.patches*jobs {
				t.Errorf("%s: %d requests for %d jobs, want %d per job", traceRoute, got, jobs, tc.patches)
			}
			if got := count.get(checkRoute); got != tc.checks*jobs {
				t.Errorf("%s: %d requests for %d jobs, want %d per job", checkRoute, got, jobs, tc.checks)
			}
			for _, id := range ids {
				j := h.gl.Job(id)
				if j.Status != "success" || j.Acquisitions != 1 {
					t.Fatalf("job %d: %s, handed out %d times", id, j.Status, j.Acquisitions)
				}
				want := "paas-runner: provisioning a fake host for this job…\n"
				if !strings.HasPrefix(string(j.Trace), want) || !strings.Contains(string(j.Trace), "; starting the job on it\ninner runner: job "+strconv.FormatInt(id, 10)+" runs\n") ||
					strings.Count(string(j.Trace), "host ready after") != 1 {
					t.Fatalf("job %d log:\n%s", id, j.Trace)
				}
				final := j.Updates[len(j.Updates)-1]
				out, _ := final["output"].(map[string]any)
				if sum := coordinator.Checksum32(crc32.ChecksumIEEE(j.Trace)); out["checksum"] != sum || out["bytesize"] != float64(len(j.Trace)) {
					t.Fatalf("job %d: final update %v, want checksum %s and size %d", id, out, sum, len(j.Trace))
				}
				ex.mu.Lock()
				lead := ex.leads[id]
				ex.mu.Unlock()
				if tc.takes != (len(lead) > 0) {
					t.Fatalf("job %d: lead %q handed to an executor that takes leads: %v", id, lead, tc.takes)
				}
			}
			t.Logf("daemon requests: %v", count.n)
		})
	}
}

// Lines handed to an inner runner that never sent them are not lost: a
// launch that fails writes them before its error; a host that dies after
// its inner runner sent them does not write them twice.
func TestHandedLinesWrittenOnce(t *testing.T) {
	t.Run("launch-fails", func(t *testing.T) {
		h := newHarness(t, 1)
		h.cfg.LogHold = time.Hour
		ex := &innerHosts{Fake: h.fake, url: h.gl.URL, takes: true, release: make(chan struct{}), leads: map[int64][]byte{}}
		h.fake.OnLaunch = func(context.Context, executors.Job) error {
			return executors.Permanent("launch", fmt.Errorf("no room"))
		}
		h.wrapRunner = func(_ int, r *dispatcher.Runner) { r.Executor = ex }
		j := h.gl.Enqueue("", nil)
		h.start()
		h.waitStatus(j.ID, "failed")
		log := h.gl.TraceOf(j.ID)
		i, k, e := strings.Index(log, "provisioning a fake host"), strings.Index(log, "host ready after"), strings.Index(log, "ERROR: could not launch")
		if i < 0 || k < i || e < k || strings.Count(log, "host ready after") != 1 {
			t.Fatalf("log:\n%s", log)
		}
	})
	t.Run("host-dies-after-the-inner-runner-wrote", func(t *testing.T) {
		h := newHarness(t, 1)
		h.cfg.LogHold = time.Hour
		ex := &innerHosts{Fake: h.fake, url: h.gl.URL, takes: true, crash: true, exitCode: 137, release: make(chan struct{}), leads: map[int64][]byte{}}
		h.wrapRunner = func(_ int, r *dispatcher.Runner) { r.Executor = ex }
		j := h.gl.Enqueue("", nil)
		h.start()
		h.gl.WaitFor(wait, "the inner runner's line", func(s *coordinatortest.Server) bool { return strings.Contains(s.TraceOf(j.ID), "inner runner: job") })
		close(ex.release)
		h.waitStatus(j.ID, "failed")
		log := h.gl.TraceOf(j.ID)
		k, in, e := strings.Index(log, "host ready after"), strings.Index(log, "inner runner: job"), strings.Index(log, "ERROR: the job's host stopped")
		if !strings.HasPrefix(log, "paas-runner: provisioning a fake host") || k < 0 || in < k || e < in || strings.Count(log, "host ready after") != 1 {
			t.Fatalf("log:\n%s", log)
		}
		if h.gl.Job(j.ID).FailureReason != "runner_system_failure" {
			t.Fatalf("job: %+v", h.gl.Job(j.ID))
		}
	})
	t.Run("host-dies-before-the-inner-runner-wrote", func(t *testing.T) {
		h := newHarness(t, 1)
		h.cfg.LogHold = time.Hour
		ex := &innerHosts{Fake: h.fake, url: h.gl.URL, takes: true, release: make(chan struct{}), leads: map[int64][]byte{}}
		// the host ends at once: its inner runner sent nothing
		h.fake.OnLaunch = func(_ context.Context, j executors.Job) error {
			h.fake.End(executors.End{JobID: j.ID, ExitCode: 1, Detail: "bad config"})
			return nil
		}
		launched := executors.Executor(h.fake)
		h.wrapRunner = func(_ int, r *dispatcher.Runner) { r.Executor = leadOnly{launched, ex} }
		j := h.gl.Enqueue("", nil)
		h.start()
		h.waitStatus(j.ID, "failed")
		log := h.gl.TraceOf(j.ID)
		k, e := strings.Index(log, "host ready after"), strings.Index(log, "ERROR: the job's host stopped")
		if !strings.HasPrefix(log, "paas-runner: provisioning a fake host") || k < 0 || e < k || strings.Count(log, "host ready after") != 1 {
			t.Fatalf("log:\n%s", log)
		}
	})
}

// leadOnly is an executor (the fake, with no inner runner) that says it
// takes leads.
type leadOnly struct {
	executors.Executor
	lt executors.LeadTaker
}

func (l leadOnly) TakesTraceLead() bool { return l.lt.TakesTraceLead() }
func (l leadOnly) WatchEnds(ctx context.Context, fn func(executors.End)) error {
	return l.Executor.(executors.EndWatcher).WatchEnds(ctx, fn)
}

// A held line does not wait for a slow host: it is in GitLab within
// LogHold while the host is still being made, and not written twice.
func TestHeldLineSentWithinTheHold(t *testing.T) {
	h := newHarness(t, 1)
	h.cfg.LogHold = 20 * time.Millisecond
	g := newGate()
	h.fake.OnProvision = func(ctx context.Context, j executors.Job) error { return g.wait(ctx, j.ID) }
	j := h.gl.Enqueue("", nil)
	h.start()
	<-g.entered
	h.gl.WaitFor(wait, "the provisioning line, the host not ready", func(s *coordinatortest.Server) bool {
		return s.TraceOf(j.ID) == "paas-runner: provisioning a fake host for this job…\n"
	})
	g.open()
	h.waitFake("launched", func(f *executortest.Fake) bool {
		hh, ok := f.LiveLocked(h.hostName(h.tokens[0], j.ID))
		return ok && hh.Launches == 1
	})
	h.gl.WaitFor(wait, "the host ready line", func(s *coordinatortest.Server) bool { return strings.Contains(s.TraceOf(j.ID), "host ready after") })
	if log := h.gl.TraceOf(j.ID); strings.Count(log, "provisioning a fake host") != 1 || strings.Count(log, "host ready after") != 1 {
		t.Fatalf("log:\n%s", log)
	}
}

// After each job GitLab hands out, the daemon asks again at once: jobs
// queued together are all taken within one check_interval (an hour
// here), up to paas_max_concurrent_provisioning at a time, the next ones
// as soon as a launch frees a provisioning slot — not one per interval.
func TestQueuedJobsTakenWithoutWaitingAnInterval(t *testing.T) {
	h := newHarness(t, 1)
	h.cfg.CheckInterval = time.Hour
	h.cfg.MaxProvisioning = 3
	const jobs = 8
	var ids []int64
	for i := 0; i < jobs; i++ {
		ids = append(ids, h.gl.Enqueue("", nil).ID)
	}
	h.start()
	h.waitFake("every job launched", func(f *executortest.Fake) bool {
		for _, id := range ids {
			if hh, ok := f.LiveLocked(h.hostName(h.tokens[0], id)); !ok || hh.Launches != 1 {
				return false
			}
		}
		return true
	})
	if m := h.fake.MaxConcurrentProvisions(); m > 3 {
		t.Fatalf("%d hosts provisioned at once, over paas_max_concurrent_provisioning = 3", m)
	}
}

// Behind a long-polling GitLab (Workhorse holds a job request until the
// runner's queue changes, then answers 204 with no X-GitLab-Last-Update),
// a job queued while a request is held is asked for at once, not a
// check_interval later: here check_interval is an hour.
func TestLongPollReleaseAsksAtOnce(t *testing.T) {
	h := newHarness(t, 1)
	h.cfg.CheckInterval = time.Hour
	h.gl.LongPoll = time.Hour
	h.wrapRunner = func(i int, r *dispatcher.Runner) {
		c, err := coordinator.New(coordinator.Config{URL: h.gl.URL, Token: h.tokens[i], SystemID: "r_000000000000",
			Info:                coordinator.Info{Features: map[string]bool{"cancel_gracefully": true, "two_phase_job_commit": true}},
			LongPollMinInterval: time.Nanosecond})
		if err != nil {
			t.Fatal(err)
		}
		// the first answer (with X-GitLab-Last-Update) learnt before the
		// start: the daemon's first request is held
		if j, err := c.RequestJob(context.Background()); j != nil || err != nil {
			t.Fatalf("learning last_update: %v %v", j, err)
		}
		r.Source = c
	}
	h.start()
	h.gl.WaitFor(wait, "a held job request", func(s *coordinatortest.Server) bool { return s.Holding() == 1 })
	q := h.gl.Enqueue(h.tokens[0], nil)
	name := h.hostName(h.tokens[0], q.ID)
	h.waitFake("launch of "+name, func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(name); return ok && hh.Launches == 1 })
}

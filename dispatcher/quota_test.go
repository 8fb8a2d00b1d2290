package dispatcher_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/dispatcher"
	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/executortest"
	"gitlab.com/paas-runner/paas-runner/job"
	"gitlab.com/paas-runner/paas-runner/state"
)

// weighedFake is the fake executor with flavors: a job's weight is that of
// its CI_CLEVER_CLOUD_FLAVOR (default M).
type weighedFake struct {
	*executortest.Fake
	weights map[string]float64
}

var testWeights = map[string]float64{"XS": 0.5, "S": 1, "M": 2, "L": 4, "XL": 8, "XXL": 20}

func (w weighedFake) Weight(_ context.Context, j executors.Job) (float64, error) {
	return w.FlavorWeight(context.Background(), flavorOf(j.Payload))
}

func (w weighedFake) FlavorWeight(_ context.Context, f string) (float64, error) {
	if x, ok := w.weights[f]; ok {
		return x, nil
	}
	return 0, executors.Permanent("weigh", fmt.Errorf("unknown flavor %q", f))
}

func flavorOf(payload json.RawMessage) string {
	var p struct {
		Variables job.Variables `json:"variables"`
	}
	_ = json.Unmarshal(payload, &p)
	if f := p.Variables.Get("CI_CLEVER_CLOUD_FLAVOR"); f != "" {
		return f
	}
	return "M"
}

// weighed makes the harness's runners weigh their jobs, with quota and unit.
func (h *harness) weighed(quota, unit float64) {
	h.cfg.Quota, h.cfg.QuotaUnit = quota, unit
	h.wrapRunner = func(_ int, r *dispatcher.Runner) { r.Executor = weighedFake{h.fake, testWeights} }
}

func (h *harness) enqueueFlavor(f string) *coordinatortest.Job {
	return h.gl.Enqueue("", map[string]any{"variables": []map[string]any{
		{"key": "CI_CLEVER_CLOUD_FLAVOR", "value": f, "public": true, "masked": false}}})
}

// waitStats polls the dispatcher's counters until cond holds.
func (h *harness) waitStats(what string, cond func(dispatcher.Stats) bool) dispatcher.Stats {
	h.t.Helper()
	deadline := time.Now().Add(wait)
	for {
		st := h.d.Stats()
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s: %+v", what, st)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// The weights of the hosts that exist (from the start of their
// provisioning to their removal) never sum above the quota, whatever the
// flavors and however the runners' loops interleave; every job runs.
func TestQuotaWeightsNeverExceeded(t *testing.T) {
	for seed := uint64(1); seed <= 3; seed++ {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			h := newHarness(t, 4)
			h.cfg.Concurrent = 50
			h.cfg.MaxProvisioning = 10
			const quota = 10
			h.weighed(quota, 2)
			rng := rand.New(rand.NewPCG(seed, 42))
			flavors := []string{"XS", "S", "M", "L", "XL"}
			weightOf := map[int64]float64{}
			var mu sync.Mutex
			var live, peak float64
			var violations []string
			h.fake.OnProvision = func(ctx context.Context, j executors.Job) error {
				mu.Lock()
				defer mu.Unlock()
				live += weightOf[j.ID]
				peak = max(peak, live)
				if st := h.d.Stats(); live > quota || st.WeightUsed > quota+1e-9 {
					violations = append(violations, fmt.Sprintf("job %d: hosts weigh %.2f, dispatcher counts %.2f", j.ID, live, st.WeightUsed))
				}
				return nil
			}
			h.fake.OnLaunch = func(ctx context.Context, j executors.Job) error {
				go h.gl.Finish(j.ID, "success") // the job runs quickly on its host
				return nil
			}
			h.fake.OnDecommission = func(ctx context.Context, name string) error {
				var id int64
				_, _ = fmt.Sscanf(name[strings.LastIndex(name, "-")+1:], "%d", &id)
				mu.Lock()
				live -= weightOf[id]
				mu.Unlock()
				return nil
			}
			const n = 80
			mu.Lock()
			for i := 0; i < n; i++ {
				f := flavors[rng.IntN(len(flavors))]
				j := h.enqueueFlavor(f)
				weightOf[j.ID] = testWeights[f]
			}
			mu.Unlock()
			h.start()
			h.gl.WaitFor(4*wait, "all jobs done", func(s *coordinatortest.Server) bool {
				done := 0
				s.Each(func(j *coordinatortest.Job) {
					if j.Status == "success" {
						done++
					}
				})
				return done == n
			})
			h.waitFake("every host removed", func(f *executortest.Fake) bool { l, _ := f.CountLocked(); return l == 0 })
			st := h.waitStats("quota back to empty", func(s dispatcher.Stats) bool { return s.Jobs == 0 })
			mu.Lock()
			defer mu.Unlock()
			if len(violations) > 0 {
				t.Fatalf("quota exceeded: %v", violations[:min(5, len(violations))])
			}
			if st.WeightUsed != 0 || st.WeightWaiting != 0 || st.WeightQuota != quota {
				t.Fatalf("after all jobs: %+v", st)
			}
			if peak < quota/2 {
				t.Fatalf("the quota was barely used (peak %.2f): the test does not test", peak)
			}
		})
	}
}

// A job whose weight does not fit waits, confirmed and told so in its
// log, with nothing provisioned; no other job is acquired meanwhile (even
// one that would fit); it runs as soon as enough weight is freed.
func TestQuotaHeavyJobWaitsForRoom(t *testing.T) {
	h := newHarness(t, 1)
	h.weighed(8, 2)
	h.start()
	var ms []*coordinatortest.Job
	for i := 0; i < 3; i++ {
		j := h.enqueueFlavor("M")
		ms = append(ms, j)
		name := h.hostName(h.tokens[0], j.ID)
		h.waitFake("launch of "+name, func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(name); return ok && hh.Launches == 1 })
	}
	heavy := h.enqueueFlavor("L") // 6 + 4 > 8
	h.gl.WaitFor(wait, "the heavy job told to wait", func(s *coordinatortest.Server) bool {
		return strings.Contains(s.TraceOf(heavy.ID), "waiting for room in the weighted quota")
	})
	if st := h.gl.Job(heavy.ID).Status; st != "running" {
		t.Fatalf("a waiting job is confirmed to GitLab (running), got %s", st)
	}
	if st := h.d.Stats(); st.WeightUsed != 6 || st.WeightWaiting != 1 {
		t.Fatalf("while the heavy job waits: %+v", st)
	}
	light := h.enqueueFlavor("S")
	heavyName, lightName := h.hostName(h.tokens[0], heavy.ID), h.hostName(h.tokens[0], light.ID)
	var lightAtHeavy string
	h.fake.OnProvision = func(ctx context.Context, j executors.Job) error {
		if j.ID == heavy.ID {
			lightAtHeavy = h.gl.Job(light.ID).Status
		}
		return nil
	}
	if _, ok := h.fake.Live()[heavyName]; ok {
		t.Fatal("the heavy job's host exists before there is room")
	}
	h.gl.Finish(ms[0].ID, "success") // 4 used: the heavy job fits
	h.waitFake("launch of the heavy job", func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(heavyName); return ok && hh.Launches == 1 })
	if lightAtHeavy != "pending" {
		t.Fatalf("a light job was acquired while the heavy one waited (it was %q)", lightAtHeavy)
	}
	if st := h.d.Stats(); st.WeightUsed > 8 {
		t.Fatalf("quota exceeded: %+v", st)
	}
	h.gl.Finish(ms[1].ID, "success") // 2+4 used: the light job (unit 2) fits
	h.waitFake("launch of the light job", func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(lightName); return ok && hh.Launches == 1 })
	st := h.waitStats("weights of M, L, S", func(s dispatcher.Stats) bool { return s.WeightUsed == 7 })
	if st.WeightWaiting != 0 {
		t.Fatalf("%+v", st)
	}
}

// A job heavier than the whole quota could never run: it fails at once,
// with the reason in its log, without a host; the others go on.
func TestQuotaJobHeavierThanQuotaFails(t *testing.T) {
	h := newHarness(t, 1)
	h.weighed(10, 2)
	h.start()
	big := h.enqueueFlavor("XXL")
	small := h.enqueueFlavor("S")
	h.waitStatus(big.ID, "failed")
	got := h.gl.Job(big.ID)
	if got.FailureReason != job.ScriptFailure || !strings.Contains(string(got.Trace), "more than this daemon's whole weighted quota (10.00") {
		t.Fatalf("failure_reason %q, trace %q", got.FailureReason, got.Trace)
	}
	name := h.hostName(h.tokens[0], small.ID)
	h.waitFake("launch of the small job", func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(name); return ok && hh.Launches == 1 })
	if _, ok := h.fake.Removed()[h.hostName(h.tokens[0], big.ID)]; ok {
		t.Fatal("a host was provisioned for the job too heavy for the quota")
	}
	h.waitStats("only the small job counted", func(s dispatcher.Stats) bool { return s.WeightUsed == 1 && s.Jobs == 1 })
}

// After a restart the jobs of the state file count at their recorded
// weights (expected_weight): nothing is acquired until there is room.
func TestQuotaRestartRecountsWeights(t *testing.T) {
	h := newHarness(t, 1)
	h.weighed(8, 2)
	h.start()
	var ls []*coordinatortest.Job
	for i := 0; i < 2; i++ {
		j := h.enqueueFlavor("L")
		ls = append(ls, j)
		name := h.hostName(h.tokens[0], j.ID)
		h.waitFake("launch of "+name, func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(name); return ok && hh.Launches == 1 })
	}
	if err := h.force(); err != nil {
		t.Fatal(err)
	}
	h.store.Close()
	h.store = nil
	for _, rec := range mustOpenJobs(t, h.statePath) {
		if rec.ExpectedWeight != 4 {
			t.Fatalf("state file: job %d expected_weight %v, want 4", rec.JobID, rec.ExpectedWeight)
		}
	}
	s := h.enqueueFlavor("S")
	var lFinished string
	h.fake.OnProvision = func(ctx context.Context, j executors.Job) error {
		if j.ID == s.ID {
			lFinished = h.gl.Job(ls[0].ID).Status
		}
		return nil
	}
	h.start()
	st := h.waitStats("resumed jobs", func(s dispatcher.Stats) bool { return s.Jobs == 2 })
	if st.WeightUsed != 8 {
		t.Fatalf("after restart the quota counts %.2f, want 8 (two L jobs)", st.WeightUsed)
	}
	if got := h.gl.Job(s.ID); got.Acquisitions != 0 {
		t.Fatalf("a job was acquired with the quota full: %+v", got)
	}
	h.gl.Finish(ls[0].ID, "success")
	name := h.hostName(h.tokens[0], s.ID)
	h.waitFake("launch of the S job", func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(name); return ok && hh.Launches == 1 })
	if lFinished != "success" {
		t.Fatalf("the S job was provisioned while the quota was full (L job %s)", lFinished)
	}
	h.waitStats("L + S", func(s dispatcher.Stats) bool { return s.WeightUsed == 5 })
}

func mustOpenJobs(t *testing.T, path string) []state.Job {
	t.Helper()
	s, err := state.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	return s.Jobs()
}

// parkGuard makes one job wait, without its slots (parked), until opened.
type parkGuard struct {
	g  *gate
	id func() int64
}

func (p parkGuard) Admit(ctx context.Context, _ string, j *job.Acquired, _ func(string), blocking func()) ([]job.Variable, error) {
	if j.ID != p.id() {
		return nil, nil
	}
	blocking()
	return nil, p.g.wait(ctx, j.ID)
}

func (parkGuard) Release(string, int64) {}

// A job waiting for a guard gives its weight back with its slots, and
// takes it again (waiting for room) when the guard lets it go.
func TestQuotaParkedGuardJobGivesWeightBack(t *testing.T) {
	h := newHarness(t, 1)
	h.weighed(4, 2)
	g := newGate()
	var mu sync.Mutex
	var parkedID int64
	h.cfg.Guards = []dispatcher.Guard{parkGuard{g: g, id: func() int64 { mu.Lock(); defer mu.Unlock(); return parkedID }}}
	var over []string
	h.fake.OnProvision = func(ctx context.Context, j executors.Job) error {
		if st := h.d.Stats(); st.WeightUsed > 4 {
			mu.Lock()
			over = append(over, fmt.Sprintf("%+v", st))
			mu.Unlock()
		}
		return nil
	}
	mu.Lock()
	a := h.enqueueFlavor("M")
	parkedID = a.ID
	mu.Unlock()
	h.start()
	<-g.entered
	b, c := h.enqueueFlavor("M"), h.enqueueFlavor("M")
	for _, j := range []*coordinatortest.Job{b, c} {
		name := h.hostName(h.tokens[0], j.ID)
		h.waitFake("launch of "+name, func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(name); return ok && hh.Launches == 1 })
	}
	if st := h.d.Stats(); st.WeightUsed != 4 {
		t.Fatalf("with the guard's job parked and two M jobs running: %+v", st)
	}
	g.open()
	h.gl.Finish(b.ID, "success")
	aName := h.hostName(h.tokens[0], a.ID)
	h.waitFake("launch of the guarded job", func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(aName); return ok && hh.Launches == 1 })
	h.waitStats("A and C counted", func(s dispatcher.Stats) bool { return s.WeightUsed == 4 && s.Jobs == 2 })
	h.gl.Finish(a.ID, "success")
	h.gl.Finish(c.ID, "success")
	h.waitStats("nothing counted", func(s dispatcher.Stats) bool { return s.Jobs == 0 && s.WeightUsed == 0 })
	mu.Lock()
	defer mu.Unlock()
	if len(over) > 0 {
		t.Fatalf("quota exceeded: %v", over)
	}
}

// A drain ends the wait for room at once (however long shutdown_timeout
// is): the waiting job stays in the state file with its weight, and waits
// again after the restart until there is room.
func TestQuotaDrainEndsTheWait(t *testing.T) {
	h := newHarness(t, 1)
	h.cfg.ShutdownTimeout = time.Hour
	h.weighed(6, 2)
	h.start()
	l := h.enqueueFlavor("L")
	lName := h.hostName(h.tokens[0], l.ID)
	h.waitFake("launch of L", func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(lName); return ok && hh.Launches == 1 })
	m := h.enqueueFlavor("L") // 4 + 4 > 6
	h.gl.WaitFor(wait, "the second L job told to wait", func(s *coordinatortest.Server) bool {
		return strings.Contains(s.TraceOf(m.ID), "waiting for room in the weighted quota")
	})
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	h.store.Close()
	h.store = nil
	var found bool
	for _, rec := range mustOpenJobs(t, h.statePath) {
		if rec.JobID == m.ID {
			found = true
			if rec.ExpectedWeight != 4 || !rec.Phase.Pending() {
				t.Fatalf("waiting job after the drain: %+v", rec)
			}
		}
	}
	if !found {
		t.Fatal("the waiting job is not in the state file")
	}
	h.start()
	h.waitStats("both resumed", func(s dispatcher.Stats) bool { return s.Jobs == 2 && s.WeightWaiting == 1 })
	h.gl.Finish(l.ID, "success")
	mName := h.hostName(h.tokens[0], m.ID)
	h.waitFake("launch of the second L after the restart", func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(mName); return ok && hh.Launches == 1 })
}

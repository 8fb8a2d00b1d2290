package dispatcher_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/dispatcher"
	"gitlab.com/paas-runner/paas-runner/executors/executortest"
	"gitlab.com/paas-runner/paas-runner/guard"
	"gitlab.com/paas-runner/paas-runner/internal/backoff"
	"gitlab.com/paas-runner/paas-runner/pipeguard"
	"gitlab.com/paas-runner/paas-runner/pipeguard/pipeguardtest"
	"gitlab.com/paas-runner/paas-runner/state"
)

const (
	guardToken  = "glpat-guard-0123456789"
	runnerGuard = "glpat-runner-guard-0123"
	guardProj   = 1
)

type pipeHarness struct {
	*harness
	p     *guard.Pipelines
	core  *guard.Core
	calls *executorCalls
	clk   *pipeguardtest.Clock // nil: the real clock, fast intervals
}

// newPipeHarness runs the dispatcher with only the pipeline guard. With
// manual, the watcher runs on a manual clock polling every 5 s; else on the
// real clock every 20 ms.
func newPipeHarness(t *testing.T, manual bool) *pipeHarness {
	h := newHarness(t, 1)
	h.cfg.Concurrent, h.cfg.MaxProvisioning = 2, 1
	h.gl.AddAPIToken(guardToken, "read_api")
	h.gl.AddAPIToken(runnerGuard, "api")
	w := &pipeguard.Watcher{Interval: func() time.Duration { return 20 * time.Millisecond }, MinGap: 10 * time.Millisecond,
		Backoff: &backoff.Policy{Min: 20 * time.Millisecond, Max: 40 * time.Millisecond}}
	ph := &pipeHarness{harness: h, core: guard.NewCore(), calls: &executorCalls{n: map[int64]int{}}}
	if manual {
		ph.clk = pipeguardtest.NewClock()
		w = &pipeguard.Watcher{Clock: ph.clk, Interval: func() time.Duration { return 5 * time.Second }}
	}
	ph.p = guard.NewPipelines(ph.core, w, "r_000000000000", zaptest.NewLogger(t))
	ph.p.Token = func(runnerID string) string {
		if runnerID == uniqueName(h.tokens[0]) {
			return runnerGuard
		}
		return ""
	}
	h.cfg.Guards = []dispatcher.Guard{ph.p}
	h.fake.OnProvision = ph.calls.hook
	h.fake.OnLaunch = ph.calls.hook
	return ph
}

// guardedJob enqueues a job of pipeline with a pipeline guard on ref main
// (extra variables as key, value pairs; a "" value drops the default).
func (h *pipeHarness) guardedJob(pipeline int64, kv ...string) *coordinatortest.Job {
	set := map[string]string{
		"CI_API_V4_URL": h.gl.URL + "/api/v4", "CI_PROJECT_ID": strconv.Itoa(guardProj), "CI_PIPELINE_ID": strconv.FormatInt(pipeline, 10),
		"GUARD_REF_REGEX": "^main$", "GUARD_PRIVATE_TOKEN": guardToken,
	}
	order := []string{"CI_API_V4_URL", "CI_PROJECT_ID", "CI_PIPELINE_ID", "GUARD_REF_REGEX", "GUARD_PRIVATE_TOKEN"}
	for i := 0; i+1 < len(kv); i += 2 {
		if _, ok := set[kv[i]]; !ok {
			order = append(order, kv[i])
		}
		set[kv[i]] = kv[i+1]
	}
	var vars []map[string]any
	for _, k := range order {
		if v := set[k]; v != "" {
			vars = append(vars, map[string]any{"key": k, "value": v, "public": !strings.Contains(k, "TOKEN"), "masked": strings.Contains(k, "TOKEN")})
		}
	}
	return h.gl.Enqueue("", map[string]any{"variables": vars,
		"job_info": map[string]any{"name": "deploy", "project_id": guardProj, "pipeline_id": pipeline, "project_full_path": "acme/web"}})
}

func (h *pipeHarness) waitTrace(id int64, sub string) {
	h.t.Helper()
	h.gl.WaitFor(wait, fmt.Sprintf("job %d log says %q", id, sub), func(s *coordinatortest.Server) bool { return s.TraceContains(id, sub) })
}

func (h *pipeHarness) launched(id int64) {
	h.t.Helper()
	h.waitFake(fmt.Sprintf("job %d launched", id), func(f *executortest.Fake) bool {
		hh, ok := f.LiveLocked(h.hostName(h.tokens[0], id))
		return ok && hh.Launches == 1
	})
}

func (h *pipeHarness) noHost(id int64) {
	h.t.Helper()
	if n := h.calls.of(id); n != 0 {
		h.t.Fatalf("executor called %d times for job %d", n, id)
	}
}

func (h *pipeHarness) failedWith(id int64, msg, reason string) {
	h.t.Helper()
	h.waitStatus(id, "failed")
	if !h.gl.TraceContains(id, msg) {
		h.t.Fatalf("job %d log lacks %q:\n%s", id, msg, h.gl.TraceOf(id))
	}
	if got := h.gl.Job(id).FailureReason; got != reason {
		h.t.Fatalf("failure reason %q, want %q", got, reason)
	}
	h.noHost(id)
}

func gauge(t *testing.T, core *guard.Core, name, guardLabel string) (float64, bool) {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(core.Collectors()...)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "guard" && l.GetValue() == guardLabel {
					return m.GetGauge().GetValue(), true
				}
			}
		}
	}
	return 0, false
}

// A guarded job waits, parked and without a host, while an older
// conflicting pipeline runs; its log lists the pipeline; metrics and
// /debug/locks show it; it is provisioned at the first poll after the
// pipeline finished (one interval of the manual clock).
func TestPipelineGuardWaitsWithoutHost(t *testing.T) {
	h := newPipeHarness(t, true)
	h.start()
	older := h.gl.AddPipeline(guardProj, "main", "running")
	own := h.gl.AddPipeline(guardProj, "main", "running")
	j := h.guardedJob(own)
	sha := h.gl.PipelineOf(older).SHA
	h.waitTrace(j.ID, fmt.Sprintf("pipeline #%d running %s main", older, sha))
	// the slot is free meanwhile: an unguarded job runs
	free := lockedJob(h.harness, 900, "")
	h.launched(free.ID)
	h.noHost(j.ID)
	if n, ok := gauge(t, h.core, "paas_runner_guard_waiting_jobs", "pipelines:1"); !ok || n != 1 {
		t.Fatalf("waiting gauge %v %v", n, ok)
	}
	rr := httptest.NewRecorder()
	guard.DebugHandler(nil, h.p).ServeHTTP(rr, httptest.NewRequest("GET", "/debug/locks", nil))
	body := rr.Body.String()
	if !strings.Contains(body, `"guard": "pipelines:1"`) || !strings.Contains(body, fmt.Sprintf(`"job_id": %d`, j.ID)) ||
		!strings.Contains(body, fmt.Sprintf("pipeline #%d running", older)) {
		t.Fatalf("/debug/locks:\n%s", body)
	}
	if strings.Contains(body, guardToken) || strings.Contains(h.gl.TraceOf(j.ID), guardToken) {
		t.Fatal("the guard token is shown")
	}
	// the poller sleeps one interval (5 s) on the clock, beside the wait's
	// timeout
	if !h.clk.WaitPending(2, wait) {
		t.Fatal("the poller is not sleeping")
	}
	if next := h.clk.Next(); next != 5*time.Second {
		t.Fatalf("next poll in %s", next)
	}
	h.gl.SetPipelineStatus(older, "success")
	h.clk.Advance(5 * time.Second)
	h.launched(j.ID)
	h.waitTrace(j.ID, "paas-runner: pipeline guard: no conflicting pipeline left, going on after")
	if n, _ := gauge(t, h.core, "paas_runner_guard_waiting_jobs", "pipelines:1"); n != 0 {
		t.Fatalf("waiting gauge %v after the wait", n)
	}
}

// oldest_first (the default): of two guarded pipelines, the older goes at
// once, the newer waits for it; neither waits for the other. The newer one
// uses the runner's guard_api_token.
func TestPipelineGuardOldestFirstNoDeadlock(t *testing.T) {
	h := newPipeHarness(t, false)
	h.start()
	p1 := h.gl.AddPipeline(guardProj, "main", "running")
	p2 := h.gl.AddPipeline(guardProj, "main", "running")
	b := h.guardedJob(p2, "GUARD_PRIVATE_TOKEN", "")
	h.waitTrace(b.ID, fmt.Sprintf("pipeline #%d running", p1))
	a := h.guardedJob(p1, "GUARD_ORDER", "oldest_first")
	h.launched(a.ID)
	h.noHost(b.ID)
	h.gl.SetPipelineStatus(p1, "success")
	h.launched(b.ID)
}

func TestPipelineGuardNewestWins(t *testing.T) {
	h := newPipeHarness(t, false)
	h.start()
	p1 := h.gl.AddPipeline(guardProj, "main", "running")
	p2 := h.gl.AddPipeline(guardProj, "main", "running")
	a := h.guardedJob(p1, "GUARD_ORDER", "newest_wins")
	h.failedWith(a.ID, fmt.Sprintf("superseded by pipeline %d", p2), "script_failure")
}

func TestPipelineGuardNoWait(t *testing.T) {
	h := newPipeHarness(t, false)
	h.start()
	p1 := h.gl.AddPipeline(guardProj, "main", "running")
	p2 := h.gl.AddPipeline(guardProj, "main", "running")
	a := h.guardedJob(p2, "GUARD_NO_WAIT", "true")
	h.failedWith(a.ID, fmt.Sprintf("GUARD_NO_WAIT is set and 1 other pipelines in (running) state: #%d: pipeline #%d running", p1, p1), "script_failure")
}

func TestPipelineGuardTimeout(t *testing.T) {
	h := newPipeHarness(t, false)
	h.start()
	h.gl.AddPipeline(guardProj, "main", "running")
	p2 := h.gl.AddPipeline(guardProj, "main", "running")
	a := h.guardedJob(p2, "GUARD_TIMEOUT", "1")
	h.failedWith(a.ID, "Timeout reached after 1 seconds, giving up", "stuck_or_timeout_failure")
}

// GUARD_JOB_REGEX: only a pipeline whose matching job is itself running
// conflicts.
func TestPipelineGuardNarrowedByJobName(t *testing.T) {
	h := newPipeHarness(t, false)
	h.start()
	p1 := h.gl.AddPipeline(guardProj, "main", "running",
		coordinatortest.PipelineJob{Name: "deploy", Stage: "deploy", Status: "running"},
		coordinatortest.PipelineJob{Name: "test", Stage: "test", Status: "success"})
	p2 := h.gl.AddPipeline(guardProj, "main", "running")
	x := h.guardedJob(p2, "GUARD_JOB_REGEX", "^test$")
	h.launched(x.ID)
	h.gl.Finish(x.ID, "success") // concurrent = 2: room for y and z
	y := h.guardedJob(p2, "GUARD_JOB_REGEX", "^deploy$")
	h.waitTrace(y.ID, fmt.Sprintf("pipeline #%d running", p1))
	h.noHost(y.ID)
	z := h.guardedJob(p2, "GUARD_STAGE_REGEX", "^deploy$")
	h.waitTrace(z.ID, fmt.Sprintf("pipeline #%d running", p1))
	h.gl.SetPipelineJobStatus(p1, "deploy", "success") // the pipeline still runs
	h.launched(y.ID)
	h.launched(z.ID)
}

// PAAS_GUARD_PIPELINES=true alone turns the guard on with
// gitlab-job-guard's defaults (ref regex ^\d+\-, status running).
func TestPipelineGuardDefaults(t *testing.T) {
	h := newPipeHarness(t, false)
	h.start()
	h.gl.AddPipeline(guardProj, "main", "running") // not a matching ref
	p1 := h.gl.AddPipeline(guardProj, "12-fix", "running")
	p2 := h.gl.AddPipeline(guardProj, "13-other", "running")
	a := h.guardedJob(p2, "GUARD_REF_REGEX", "", "PAAS_GUARD_PIPELINES", "true")
	h.waitTrace(a.ID, "waiting for 1 other pipelines in (running) state")
	h.waitTrace(a.ID, fmt.Sprintf("pipeline #%d running", p1))
	h.noHost(a.ID)
	h.gl.SetPipelineStatus(p1, "failed")
	h.launched(a.ID)
}

// The pipelines API failing: the job's log says so and the job keeps
// waiting; it goes on once GitLab answers and the conflict is gone.
func TestPipelineGuardAPIOutage(t *testing.T) {
	h := newPipeHarness(t, false)
	h.start()
	p1 := h.gl.AddPipeline(guardProj, "main", "running")
	p2 := h.gl.AddPipeline(guardProj, "main", "running")
	h.gl.Inject(`^GET /api/v4/projects/1/pipelines$`, 502, -1, nil)
	a := h.guardedJob(p2)
	h.waitTrace(a.ID, "pipeline guard: GitLab pipelines API error, retrying in")
	h.gl.WaitFor(wait, "more failed polls", func(s *coordinatortest.Server) bool {
		return s.CountOf("GET /api/v4/projects/1/pipelines") >= 3
	})
	if st := h.gl.Job(a.ID).Status; st != "running" {
		t.Fatalf("job %s during the outage", st)
	}
	h.noHost(a.ID)
	h.gl.ClearInjections()
	h.waitTrace(a.ID, fmt.Sprintf("pipeline #%d running", p1))
	h.gl.SetPipelineStatus(p1, "success")
	h.launched(a.ID)
}

func TestPipelineGuardTokenRejected(t *testing.T) {
	h := newPipeHarness(t, false)
	h.gl.AddAPIToken("glpat-no-api-scope", "read_user")
	h.start()
	h.gl.AddPipeline(guardProj, "main", "running")
	p2 := h.gl.AddPipeline(guardProj, "main", "running")
	a := h.guardedJob(p2, "GUARD_PRIVATE_TOKEN", "glpat-no-api-scope")
	h.failedWith(a.ID, "guard token rejected by GitLab (403)", "script_failure")
	if strings.Contains(h.gl.TraceOf(a.ID), "glpat-no-api-scope") {
		t.Fatal("the token is in the job log")
	}
	b := h.guardedJob(p2, "GUARD_PRIVATE_TOKEN", "glpat-unknown")
	h.failedWith(b.ID, "guard token rejected by GitLab (401)", "script_failure")
	// no token at all: the job is failed with what to set
	h.p.Token = nil
	c := h.guardedJob(p2, "GUARD_PRIVATE_TOKEN", "")
	h.failedWith(c.ID, "pipeline guard: no API token", "script_failure")
}

// Canceled in GitLab while waiting: the job leaves at once, without a host.
func TestPipelineGuardCancelWhileWaiting(t *testing.T) {
	h := newPipeHarness(t, false)
	h.start()
	p1 := h.gl.AddPipeline(guardProj, "main", "running")
	p2 := h.gl.AddPipeline(guardProj, "main", "running")
	a := h.guardedJob(p2)
	h.waitTrace(a.ID, fmt.Sprintf("pipeline #%d running", p1))
	h.gl.Cancel(a.ID)
	h.waitStatus(a.ID, "canceled")
	h.gl.WaitFor(wait, "no waiter left", func(*coordinatortest.Server) bool { return len(h.p.Waiters()) == 0 })
	if err := h.p.Watcher.WaitIdle(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.noHost(a.ID)
}

// A drain leaves a waiting job recorded; at the next start it waits again,
// its wait counted from its acquisition, and is provisioned once.
func TestPipelineGuardResumesAfterRestart(t *testing.T) {
	h := newPipeHarness(t, false)
	h.cfg.ShutdownTimeout = time.Hour
	since := func(runnerID string, jobID int64) time.Time {
		rec, _ := h.store.Get(state.Key{Runner: runnerID, ID: jobID})
		return rec.AcquiredAt
	}
	h.p.Since = since
	h.start()
	p1 := h.gl.AddPipeline(guardProj, "main", "running")
	p2 := h.gl.AddPipeline(guardProj, "main", "running")
	a := h.guardedJob(p2)
	h.waitTrace(a.ID, fmt.Sprintf("pipeline #%d running", p1))
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	key := state.Key{Runner: uniqueName(h.tokens[0]), ID: a.ID}
	rec, ok := h.store.Get(key)
	if !ok || rec.Phase != state.Acquired || h.gl.StatusOf(a.ID) != "running" {
		t.Fatalf("waiting job after the drain: %+v %v %s", rec, ok, h.gl.StatusOf(a.ID))
	}
	h.store.Close()
	h.store = nil
	// next start: a new guard
	w := &pipeguard.Watcher{Interval: func() time.Duration { return 20 * time.Millisecond }, MinGap: 10 * time.Millisecond}
	h.p = guard.NewPipelines(guard.NewCore(), w, "r_000000000000", zaptest.NewLogger(t))
	h.p.Since = since
	h.cfg.Guards = []dispatcher.Guard{h.p}
	h.start()
	h.gl.WaitFor(wait, "waiting again", func(*coordinatortest.Server) bool {
		ws := h.p.Waiters()
		return len(ws) == 1 && len(ws[0].Blocking) == 1
	})
	if ws := h.p.Waiters(); !ws[0].Since.Equal(rec.AcquiredAt) {
		t.Fatalf("wait since %s, acquired at %s", ws[0].Since, rec.AcquiredAt)
	}
	h.noHost(a.ID)
	h.gl.SetPipelineStatus(p1, "success")
	h.launched(a.ID)
	if n := h.calls.of(a.ID); n != 2 { // one provision, one launch
		t.Fatalf("executor calls %d", n)
	}
}

// While the conflicting set stays the same, the job's log still shows the
// elapsed wait every guard.LogEvery.
func TestPipelineGuardLogsElapsedWait(t *testing.T) {
	old := guard.LogEvery
	guard.LogEvery = 100 * time.Millisecond
	t.Cleanup(func() { guard.LogEvery = old })
	h := newPipeHarness(t, true) // manual clock: no new poll meanwhile
	h.start()
	p1 := h.gl.AddPipeline(guardProj, "main", "running")
	p2 := h.gl.AddPipeline(guardProj, "main", "running")
	a := h.guardedJob(p2)
	h.waitTrace(a.ID, fmt.Sprintf("pipeline #%d running", p1))
	h.waitTrace(a.ID, "paas-runner: pipeline guard: still waiting for 1 other pipelines (")
	if n := strings.Count(h.gl.TraceOf(a.ID), fmt.Sprintf("pipeline #%d", p1)); n != 1 {
		t.Fatalf("the unchanged set listed %d times:\n%s", n, h.gl.TraceOf(a.ID))
	}
	h.noHost(a.ID)
}

// A bad rule variable fails the job at once, naming it, without a poll of
// the pipelines API nor a host.
func TestPipelineGuardBadVariables(t *testing.T) {
	h := newPipeHarness(t, false)
	h.start()
	h.gl.AddPipeline(guardProj, "main", "running")
	own := h.gl.AddPipeline(guardProj, "main", "running")
	for _, c := range []struct {
		kv   []string
		want string
	}{
		{[]string{"GUARD_REF_REGEX", "(?=x)"}, `GUARD_REF_REGEX: "(?=x)" is not a valid regular expression`},
		{[]string{"GUARD_STATUS_REGEX", "running)|(x"}, `GUARD_STATUS_REGEX: "running)|(x" is not a valid regular expression`},
		{[]string{"GUARD_STATUS_REGEX", "runing"}, `GUARD_STATUS_REGEX: "runing" matches no pipeline status`},
		{[]string{"GUARD_JOB_REGEX", "["}, `GUARD_JOB_REGEX: "[" is not a valid regular expression`},
		{[]string{"GUARD_ORDER", "lifo"}, `GUARD_ORDER: "lifo" is not one of oldest_first, newest_wins, any`},
		{[]string{"GUARD_TIMEOUT", "soon"}, `GUARD_TIMEOUT: "soon" is not a whole number of seconds`},
		{[]string{"GUARD_NO_WAIT", "maybe"}, `GUARD_NO_WAIT: "maybe" is not true or false`},
		{[]string{"GUARD_CANCEL_OLDER", "true"}, "GUARD_CANCEL_OLDER needs GUARD_ORDER=newest_wins"},
		{[]string{"CI_API_V4_URL", ""}, "pipeline guard: CI_API_V4_URL is not set"},
	} {
		j := h.guardedJob(own, c.kv...)
		h.failedWith(j.ID, c.want, "script_failure")
	}
	if n := h.gl.Count("GET /api/v4/projects/1/pipelines"); n != 0 {
		t.Fatalf("%d pipelines listings for jobs with a bad rule", n)
	}
}

package guard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/job"
	"gitlab.com/paas-runner/paas-runner/pipeguard"
)

// Pipelines is the pipeline-conflict guard (gitlab-job-guard's rule,
// evaluated in the daemon before provisioning): a job declaring one waits,
// parked and without a host, until no conflicting pipeline remains. All
// the daemon's waiting jobs share one pipeguard.Watcher: one poll loop per
// (API URL, project, token). It implements dispatcher.Guard.
type Pipelines struct {
	Watcher *pipeguard.Watcher
	Core    *Core
	Daemon  string // system_id, for /debug/locks
	Logger  *zap.Logger
	// Token is the runner's guard_api_token (may be nil or return "").
	Token func(runnerID string) string
	// Since is when the job was acquired (the state file's record): a job
	// resumed after a restart keeps its wait's start, so its timeout counts
	// from then. nil or zero: now.
	Since func(runnerID string, jobID int64) time.Time

	once    sync.Once
	mu      sync.Mutex
	waiters map[string]*pipeWaiter
}

type pipeWaiter struct {
	ref      JobRef
	guard    string
	since    time.Time
	deadline time.Time
	blocking []pipeguard.Pipeline
	lastErr  string
	// cancelled: GUARD_CANCEL_OLDER's cancels not in the job's log yet
	cancelled []pipeguard.Pipeline
}

// NewPipelines makes the pipeline guard on core (shared with the locks
// guard: its gauges count pipeline waits under guard="pipelines:<project>").
func NewPipelines(core *Core, w *pipeguard.Watcher, daemon string, log *zap.Logger) *Pipelines {
	p := &Pipelines{Watcher: w, Core: core, Daemon: daemon, Logger: log}
	p.init()
	return p
}

func (p *Pipelines) init() {
	p.once.Do(func() {
		if p.Core == nil {
			p.Core = NewCore()
		}
		if p.Watcher == nil {
			p.Watcher = &pipeguard.Watcher{}
		}
		if p.Logger == nil {
			p.Logger = zap.NewNop()
		}
		p.waiters = map[string]*pipeWaiter{}
		p.Core.AddSource(p.counts)
	})
}

func (p *Pipelines) counts() (waiting, held map[string]int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	waiting = map[string]int{}
	for _, w := range p.waiters {
		waiting[w.guard]++
	}
	return waiting, nil
}

// pipelineEvent is what the watcher last said to one waiting job.
type pipelineEvent struct {
	ev    pipeguard.Event
	final bool // the wait ended: d, err
	d     pipeguard.Decision
	err   error
}

// Admit waits while conflicting pipelines run. It implements
// dispatcher.Guard.
func (p *Pipelines) Admit(ctx context.Context, runnerID string, a *job.Acquired, jobLog func(string), blocking func()) ([]job.Variable, error) {
	p.init()
	vars := a.Payload.Variables.Expanded()
	tok := ""
	if p.Token != nil {
		tok = p.Token(runnerID)
	}
	jg, active, err := pipeguard.FromJobVariables(vars.Lookup, tok)
	if err != nil {
		return nil, &WaitError{Reason: "declaration", Msg: err.Error()}
	}
	if !active {
		return nil, nil
	}
	rule := jg.Rule
	since := time.Time{}
	if p.Since != nil {
		since = p.Since(runnerID, a.ID)
	}
	coreSince := since
	if coreSince.IsZero() {
		coreSince = time.Now()
	}
	req := jg.Request
	req.Since = since
	ref := JobRef{Daemon: p.Daemon, Runner: runnerID, JobID: a.ID, PipelineID: jg.PipelineID, Project: jg.Project}
	key := ref.Key()
	pw := &pipeWaiter{ref: ref, guard: req.Name(), since: coreSince, deadline: coreSince.Add(rule.Timeout)}
	p.mu.Lock()
	p.waiters[key] = pw
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		if p.waiters[key] == pw {
			delete(p.waiters, key)
		}
		p.mu.Unlock()
	}()

	// The watcher's wait runs beside the core's: it publishes each event
	// (the latest wins) and wakes the core's check.
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	var mu sync.Mutex
	var latest *pipelineEvent
	changed := make(chan struct{})
	publish := func(e *pipelineEvent) {
		mu.Lock()
		latest = e
		close(changed)
		changed = make(chan struct{})
		mu.Unlock()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		d, err := p.Watcher.Wait(wctx, req, func(ev pipeguard.Event) {
			p.mu.Lock()
			pw.cancelled = append(pw.cancelled, ev.Decision.Cancelled...)
			if ev.Kind == pipeguard.EventAPIError {
				pw.lastErr = ev.Err.Error()
			} else {
				pw.lastErr, pw.blocking = "", ev.Decision.Blocking
			}
			p.mu.Unlock()
			publish(&pipelineEvent{ev: ev})
		})
		p.mu.Lock()
		pw.cancelled = append(pw.cancelled, d.Cancelled...)
		p.mu.Unlock()
		publish(&pipelineEvent{final: true, d: d, err: err})
	}()
	// reportCancels writes the cancels made for the job into its log (from
	// Check: the core's goroutine, which writes the log).
	reportCancels := func() {
		p.mu.Lock()
		done := pw.cancelled
		pw.cancelled = nil
		p.mu.Unlock()
		for _, c := range done {
			jobLog(fmt.Sprintf("paas-runner: pipeline guard: cancelled older pipeline #%d %s %s %s", c.ID, c.Status, c.SHA, c.Ref))
		}
	}
	defer func() { stop(); <-done }()

	lastKey := ""
	err = p.Core.Wait(ctx, Wait{
		Guard: "pipeline guard", Labels: []string{pw.guard}, Passed: "pipeline guard: no conflicting pipeline left, going on", Since: coreSince, Log: jobLog, Blocking: blocking,
		Changed: func() <-chan struct{} { mu.Lock(); defer mu.Unlock(); return changed },
		Check: func(ctx context.Context) (bool, string, string, error) {
			mu.Lock()
			e := latest
			mu.Unlock()
			reportCancels()
			if e == nil {
				return false, fmt.Sprintf("pipeline guard: checking the other pipelines of project %s", jg.Project), "pending", nil
			}
			if e.final {
				return p.outcome(ctx, rule, e.d, e.err)
			}
			ev := e.ev
			ev.Elapsed = time.Since(coreSince)
			var key string
			if ev.Kind == pipeguard.EventAPIError {
				key = "api-error"
			} else {
				key = pipelinesKey(ev.Decision.Blocking)
				ev.Changed = key != lastKey
			}
			lastKey = key
			return false, strings.Join(ev.Lines(rule), "\n"), key, nil
		},
	})
	if err != nil {
		return nil, err
	}
	p.Logger.Info("pipeline guard passed", zap.Int64("job_id", a.ID), zap.String("runner", runnerID),
		zap.String("guard", req.Name()), zap.Duration("waited", time.Since(coreSince)))
	return nil, nil
}

// outcome maps the watcher's end of a wait to the core's.
func (p *Pipelines) outcome(ctx context.Context, rule *pipeguard.Rule, d pipeguard.Decision, err error) (bool, string, string, error) {
	var te *pipeguard.TimeoutError
	switch {
	case err != nil && ctx.Err() != nil:
		return false, "", "", ctx.Err()
	case errors.As(err, &te):
		return false, "", "", &WaitError{Reason: "timeout", Msg: "pipeline guard: " + te.Error() + ": still " + d.Message(rule)}
	case err != nil:
		return false, "", "", &WaitError{Reason: "pipelines_api", Msg: "pipeline guard: " + err.Error()}
	}
	switch d.Verdict {
	case pipeguard.Proceed:
		return true, "", "", nil
	case pipeguard.Superseded:
		return false, "", "", &WaitError{Reason: "superseded", Msg: "pipeline guard: " + d.Message(rule)}
	case pipeguard.Conflict:
		return false, "", "", &WaitError{Reason: "no_wait", Msg: "pipeline guard: GUARD_NO_WAIT is set and " + d.Message(rule) + ": " + describePipelines(d.Blocking)}
	}
	return false, "", "", &WaitError{Reason: "pipelines_api", Msg: fmt.Sprintf("pipeline guard: unexpected verdict %v", d.Verdict)}
}

func pipelinesKey(ps []pipeguard.Pipeline) string {
	var b strings.Builder
	for _, p := range ps {
		fmt.Fprintf(&b, "%d %s %s %s;", p.ID, p.Status, p.SHA, p.Ref)
	}
	return "pipelines:" + b.String()
}

func describePipelines(ps []pipeguard.Pipeline) string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = fmt.Sprintf("pipeline #%d %s %s %s", p.ID, p.Status, p.SHA, p.Ref)
	}
	return strings.Join(out, ", ")
}

// Release implements dispatcher.Guard: a pipeline guard holds nothing.
func (p *Pipelines) Release(string, int64) {}

// PipelineWaiterInfo is one job waiting on a pipeline guard, for
// /debug/locks (no token).
type PipelineWaiterInfo struct {
	Guard     string    `json:"guard"`
	Job       JobRef    `json:"job"`
	Since     time.Time `json:"since"`
	Deadline  time.Time `json:"deadline"`
	Blocking  []string  `json:"blocking"`
	LastError string    `json:"last_error,omitempty"`
}

// Waiters lists the jobs waiting on pipeline guards, oldest first.
func (p *Pipelines) Waiters() []PipelineWaiterInfo {
	p.init()
	p.mu.Lock()
	defer p.mu.Unlock()
	out := []PipelineWaiterInfo{}
	for _, w := range p.waiters {
		bl := []string{}
		for _, b := range w.blocking {
			bl = append(bl, fmt.Sprintf("pipeline #%d %s %s %s", b.ID, b.Status, b.SHA, b.Ref))
		}
		out = append(out, PipelineWaiterInfo{Guard: w.guard, Job: w.ref, Since: w.since, Deadline: w.deadline, Blocking: bl, LastError: w.lastErr})
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Since.Equal(out[j].Since) {
			return out[i].Since.Before(out[j].Since)
		}
		return out[i].Job.JobID < out[j].Job.JobID
	})
	return out
}

// DebugHandler serves GET /debug/locks: the locks guard's report (m may be
// nil) with the pipeline guards' waiting jobs under "pipelines".
func DebugHandler(m *Manager, p *Pipelines) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "GET only", http.StatusMethodNotAllowed)
			return
		}
		var rep struct {
			Report
			Pipelines []PipelineWaiterInfo `json:"pipelines"`
		}
		if m != nil {
			rep.Report = m.Report()
		}
		rep.Pipelines = []PipelineWaiterInfo{}
		if p != nil {
			rep.Pipelines = p.Waiters()
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	})
}

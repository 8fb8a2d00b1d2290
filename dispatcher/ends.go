package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"time"

	"gitlab.com/paas-runner/paas-runner/internal/backoff"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/job"
	"gitlab.com/paas-runner/paas-runner/state"
)

// watchEnds listens to an executor that notices hosts stopping, restarting
// the watch if it fails.
func (d *Dispatcher) watchEnds(ctx context.Context, r *runnerState, w executors.EndWatcher) {
	for attempt := 0; ctx.Err() == nil; attempt++ {
		start := time.Now()
		r.watching.Store(true)
		d.tracker.relane(r)
		err := w.WatchEnds(ctx, func(e executors.End) {
			d.aux.Add(1)
			go func() { defer d.aux.Done(); d.hostEnded(ctx, r, e) }()
		})
		r.watching.Store(false)
		d.tracker.relane(r)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > time.Minute {
			attempt = 0
		}
		r.log.Warn("watching hosts failed; GitLab tracking still notices job ends", zap.Error(err))
		_ = backoff.Sleep(ctx, d.backoff(attempt))
	}
}

// hostEnded handles a host that stopped by itself. If GitLab still has the
// job running, the host died before the job could report (OOM, crash): the
// job is failed with runner_system_failure.
func (d *Dispatcher) hostEnded(ctx context.Context, r *runnerState, e executors.End) {
	d.mu.Lock()
	t := d.jobs[state.Key{Runner: r.ID, ID: e.JobID}]
	d.mu.Unlock()
	if t == nil {
		return
	}
	t.mu.Lock()
	phase := t.rec.Phase
	if phase.Pending() {
		// the host stopped before its launch was recorded: handle it then
		e := e
		t.earlyEnd = &e
	}
	t.mu.Unlock()
	if phase != state.Launched {
		return
	}
	d.stats.hostEnds.Add(1)
	if e.Reported {
		// its inner runner exited saying GitLab has the job's final state
		d.finished(t, "the host stopped after the job reported its end")
		return
	}
	detail := fmt.Sprintf("exit status %d", e.ExitCode)
	if e.Detail != "" {
		detail += ": " + e.Detail
	}
	d.hostDown(ctx, t, "stopped", detail)
}

// hostDown handles a launched job whose host stopped or vanished (what):
// if GitLab still has the job running, it died before the job could report
// (OOM, crash, removed behind the daemon's back) and the job is failed with
// runner_system_failure, detail in its log.
func (d *Dispatcher) hostDown(ctx context.Context, t *tracked, what, detail string) {
	rec := t.get()
	status, err := t.r.Source.JobStatus(ctx, rec.Token)
	switch {
	case errors.Is(err, job.ErrNotRunning) || (err == nil && job.IsFinal(status)):
		d.finished(t, "the host "+what+" after the job ended")
	case err != nil:
		// GitLab unreachable: the tracker decides later.
		t.logger().Warn("the host "+what+" but GitLab could not be asked about the job", zap.Error(err))
	default:
		t.logger().Error("the host "+what+" before the job reported a result", zap.String("detail", detail))
		d.traceLine(ctx, t, "paas-runner: ERROR: the job's host "+what+" before the job reported a result ("+detail+")", true)
		if err := t.r.Source.FailJob(ctx, rec.JobID, rec.Token, job.RunnerSystemFailure); err != nil && ctx.Err() == nil {
			t.logger().Error("could not fail the job in GitLab", zap.Error(err))
		}
		d.finished(t, "the host died")
	}
}

// inspectResumed checks, at a restart, the host of a job recorded as
// launched: one that died or vanished while the daemon was down fails its
// job now rather than at GitLab's timeout.
func (d *Dispatcher) inspectResumed(ctx context.Context, t *tracked, in executors.Inspector) {
	rec := t.get()
	st, err := in.Inspect(ctx, rec.Resource)
	switch {
	case err != nil:
		if ctx.Err() == nil {
			t.logger().Warn("could not check the job's host after the restart; GitLab tracking notices its end", zap.Error(err))
		}
		return
	case st.Exists && st.Running:
		return
	case !st.Exists:
		d.hostDown(ctx, t, "disappeared", "it no longer exists: removed or lost while paas-runner was stopped")
		return
	}
	detail := fmt.Sprintf("exit status %d", st.ExitCode)
	if st.Detail != "" {
		detail += ": " + st.Detail
	}
	d.hostDown(ctx, t, "stopped", detail)
}

// reapAll removes untracked hosts of every runner whose executor can list
// its own. ctx ends it: a drain does not wait for a PaaS API that does not
// answer (the orphans are looked for again at the next start).
func (d *Dispatcher) reapAll(ctx context.Context, grace time.Duration) {
	all := d.store.Jobs()
	for _, r := range d.runnerList() {
		rp, ok := r.Executor.(executors.Reaper)
		if !ok {
			continue
		}
		var keep []executors.Handle
		for _, j := range all {
			if j.RunnerID == r.ID && len(j.Resource) > 0 {
				keep = append(keep, j.Resource)
			}
		}
		removed, err := rp.Reap(ctx, keep, grace)
		for _, name := range removed {
			r.log.Warn("removed a host no job owns (left by a crash?)", zap.String("host", name))
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			r.log.Warn("looking for orphan hosts failed", zap.Error(err))
		}
	}
}

func (d *Dispatcher) reapLoop(ctx context.Context) {
	t := time.NewTicker(d.cfg.ReapInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.reapAll(ctx, d.cfg.ReapGrace)
		}
	}
}

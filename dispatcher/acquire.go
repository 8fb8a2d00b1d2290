package dispatcher

import (
	"context"
	"errors"
	"time"

	"gitlab.com/paas-runner/paas-runner/internal/backoff"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/job"
	"gitlab.com/paas-runner/paas-runner/state"
)

// acquireLoop polls GitLab for r until ctx ends or its poll cycles are
// done. A slot is reserved before each request, so that the limits hold
// however many loops run at once.
//
// A reload that removes r (retired) ends the loop; a job request in
// flight then is let finish (ctx is the request's), so that a job GitLab
// hands out is not lost.
func (d *Dispatcher) acquireLoop(ctx, retired context.Context, r *runnerState) {
	reqCtx := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(retired, cancel)()
	for cycle := 1; ctx.Err() == nil && retired.Err() == nil; cycle++ {
		if d.cfg.PollCycles > 0 && cycle > d.cfg.PollCycles {
			r.log.Info("poll cycles done", zap.Int("poll_cycles", d.cfg.PollCycles))
			return
		}
		if wait := time.Until(r.disabledUntil); wait > 0 {
			_ = backoff.Sleep(ctx, wait)
			continue
		}
		if !d.reserve(r) {
			// Saturated: wait for a slot, re-checking each interval.
			freed := d.freedChan()
			t := time.NewTimer(d.checkInterval())
			select {
			case <-ctx.Done():
			case <-freed:
			case <-t.C:
			}
			t.Stop()
			continue
		}
		a, err := r.Source.RequestJob(reqCtx)
		var unusable UnusableJob
		if errors.As(err, &unusable) {
			d.obs().Polled(r.Runner, "unusable_job")
			d.unreserve(r)
			r.forbidden = 0
			d.aux.Add(1)
			go func() { defer d.aux.Done(); d.rejectJob(r, unusable) }()
			continue
		}
		if err == nil || ctx.Err() == nil {
			d.obs().Polled(r.Runner, pollAnswer(a != nil, err))
		}
		if err != nil || a == nil {
			d.unreserve(r)
			if err != nil && ctx.Err() == nil {
				d.requestFailed(r, err)
			} else if err == nil {
				r.forbidden = 0
				if lp, ok := r.Source.(LongPoller); ok {
					if wait, ok := lp.LongPollRelease(); ok {
						// a long poll let go: the queue changed, or
						// the hold ran out; ask again now
						_ = backoff.Sleep(ctx, wait)
						continue
					}
				}
			}
			d.idle(ctx)
			continue
		}
		r.forbidden = 0
		d.accept(r, a)
		// got one: poll again at once
	}
}

// LongPoller is a JobSource whose "no job" answers may end a long poll
// (GitLab Workhorse holds a job request until the runner's queue changes
// or its hold runs out, then answers 204): LongPollRelease says the last
// one did, and how long to wait before the next request (a moment at
// most, so that Workhorse's 50 ns default hold cannot make the loop spin)
// instead of check_interval.
type LongPoller interface {
	LongPollRelease() (wait time.Duration, ok bool)
}

// requestFailed logs a failed poll and disables the runner after too many
// consecutive 403s (token revoked or runner deleted), like gitlab-runner.
func (d *Dispatcher) requestFailed(r *runnerState, err error) {
	if httpStatus(err) != 403 {
		r.forbidden = 0
		r.log.Warn("requesting a job failed", zap.Error(err))
		return
	}
	r.forbidden++
	if r.UnhealthyLimit > 0 && r.forbidden >= r.UnhealthyLimit {
		r.disabledUntil = time.Now().Add(r.UnhealthyInterval)
		d.obs().RunnerPaused(r.Runner, r.disabledUntil)
		r.log.Error("GitLab refuses this runner's token: not polling for a while; check the token or re-register the runner",
			zap.Int("consecutive_403", r.forbidden), zap.Duration("pause", r.UnhealthyInterval), zap.Error(err))
		r.forbidden = 0
		return
	}
	r.log.Warn("GitLab refused the job request (403)", zap.Int("consecutive_403", r.forbidden), zap.Error(err))
}

// accept takes charge of a job GitLab just assigned; its slot is reserved.
func (d *Dispatcher) accept(r *runnerState, a *job.Acquired) {
	rec := state.Job{RunnerID: r.ID, JobID: a.ID, Token: a.Token, ExpectedWeight: 1,
		Phase: state.Acquired, Executor: r.ExecutorName, AcquiredAt: time.Now().UTC(), Payload: a.Raw}
	t := &tracked{rec: rec, r: r, acquired: a}
	d.adoptReservation(r, t)
	d.mu.Lock()
	if _, dup := d.jobs[rec.Key()]; dup {
		d.mu.Unlock()
		r.log.Error("GitLab assigned a job that is already being handled; ignoring the duplicate", zap.Int64("job_id", a.ID))
		d.releaseJob(t, true)
		return
	}
	d.jobs[rec.Key()] = t
	d.mu.Unlock()
	d.stats.acquired.Add(1)
	// Not written yet: provisionAndLaunch makes the job durable together
	// with its planned host, in one write.
	r.log.Info("job acquired", zap.Int64("job_id", a.ID))
	d.launches.Add(1)
	go d.launchJob(t, false)
}

var errStopped = errors.New("job stopped")

// rejectJob fails in GitLab a job it handed out that cannot be run, rather
// than leaving it to GitLab's timeout: confirmed first (two-phase commit
// accepts no final state before), told why in its log, failed.
func (d *Dispatcher) rejectJob(r *runnerState, e UnusableJob) {
	id, tok := e.UnusableJob()
	log := r.log.With(zap.Int64("job_id", id))
	if id <= 0 || tok == "" {
		log.Error("GitLab handed out a job whose payload cannot even be read for its id and token; it cannot be failed from here (GitLab gives it up after its acknowledgement timeout)", zap.Error(e))
		return
	}
	log.Error("GitLab handed out a job that cannot be run; failing it", zap.Error(e))
	ctx, cancel := context.WithTimeout(d.work, time.Minute)
	defer cancel()
	if _, err := r.Source.ConfirmJob(ctx, id, tok); errors.Is(err, job.ErrNotRunning) {
		return
	}
	_, _ = r.Source.WriteTrace(ctx, id, tok, 0, []byte(ansiRed+"paas-runner: ERROR: this job cannot be run: "+e.Error()+ansiReset+"\n"))
	if err := r.Source.FailJob(ctx, id, tok, job.RunnerSystemFailure); err != nil {
		log.Error("could not fail the unusable job in GitLab", zap.Error(err))
	}
}

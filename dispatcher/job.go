package dispatcher

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"gitlab.com/paas-runner/paas-runner/internal/backoff"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/job"
	"gitlab.com/paas-runner/paas-runner/state"
)

// tracked is a job in the dispatcher's care.
type tracked struct {
	r        *runnerState
	acquired *job.Acquired // parsed payload, while pending (nil after a restart until needed)

	mu     sync.Mutex
	rec    state.Job
	cancel context.CancelFunc // cancels provisioning
	stop   string             // why provisioning must stop (GitLab side)
	status string             // last GitLab status seen
	// earlyEnd is a host end reported before the launch was recorded;
	// it is handled once it is.
	earlyEnd *executors.End
	// confirmed: GitLab was told the job is taken (ConfirmJob) since this
	// daemon started.
	confirmed bool
	// removalFailures counts failed removals of the host; slotFreed: the
	// job's concurrency slot was given back before its host was removed.
	removalFailures int
	slotFreed       bool
	// weight is its part of the weighted quota (Dispatcher.mu).
	weight float64
	// waiting: the job waits for a guard (watched in the tracker's
	// waiting lane, its log writes counting as checks).
	waiting atomic.Bool
	// logMu serialises the daemon's writes to the job log (joblog.go).
	logMu sync.Mutex
	log   jobLog
	// granted: a guard gave the job its locks (Dispatcher.Granted) while
	// it waits; parkedSlots: it gave its slots back to wait (both
	// Dispatcher.mu). Granted and parked, it goes ahead of new
	// acquisitions for the next free slot.
	granted, parkedSlots bool
}

func (t *tracked) get() state.Job {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.rec
}

// isConfirmed: GitLab was told the job is taken (ConfirmJob).
func (t *tracked) isConfirmed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.confirmed
}

func (t *tracked) phase() state.Phase {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.rec.Phase
}

// update changes the record and hands it to the store.
func (t *tracked) update(s Store, fn func(*state.Job)) state.Job {
	t.mu.Lock()
	fn(&t.rec)
	rec := t.rec
	t.mu.Unlock()
	s.Put(rec)
	return rec
}

// stopProvisioning interrupts provisioning because of GitLab (cancel, end).
func (t *tracked) stopProvisioning(why, status string) {
	t.mu.Lock()
	if t.stop == "" {
		t.stop, t.status = why, status
	}
	cancel := t.cancel
	t.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

func (t *tracked) stopped() (string, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stop, t.status
}

// inCare is the duration field of the lifecycle log lines: the time since
// the job was acquired (unknown for jobs of old state files).
func inCare(rec state.Job) zap.Field {
	if rec.AcquiredAt.IsZero() {
		return zap.Skip()
	}
	return zap.Duration("duration", time.Since(rec.AcquiredAt))
}

func (t *tracked) logger() *zap.Logger { return t.r.log.With(zap.Int64("job_id", t.rec.JobID)) }

// launchJob drives a pending job to launched, or to failed. resumed: the
// job comes from the state file (a restart), so GitLab is asked first
// whether it is still running.
func (d *Dispatcher) launchJob(t *tracked, resumed bool) {
	defer d.launches.Done()
	ctx, cancel := context.WithCancel(d.work)
	defer cancel()
	t.mu.Lock()
	t.cancel = cancel
	t.mu.Unlock()
	log := t.logger()

	rec := t.get()
	if resumed && rec.Failure != "" {
		d.failPending(t, errors.New(rec.Failure), false)
		return
	}
	var err error
	if resumed {
		// Confirming is also how a resumed job is checked: GitLab says
		// whether it is still this runner's to run (a job never
		// confirmed before the restart may have been given up on).
		if err = d.confirm(ctx, t); err == nil {
			log.Info("resuming the launch of a job", zap.String("phase", string(rec.Phase)))
		}
	}
	if err == nil && resumed && d.alreadyRunning(ctx, t) {
		return
	}
	if err == nil {
		err = d.provisionAndLaunch(ctx, t)
	}
	if err == nil {
		if resumed {
			// A resumed launch may have adopted a host that had already
			// started the job and stopped while paas-runner was down:
			// no event will tell, so look at it now.
			if in, ok := t.r.Executor.(executors.Inspector); ok {
				d.inspectResumed(d.work, t, in)
			}
		}
		return
	}
	if why, status := t.stopped(); why != "" {
		d.abandon(t, why, status)
		return
	}
	if d.work.Err() != nil || errors.Is(err, errDraining) {
		d.flushHeld(t)
		log.Info("launch interrupted by shutdown; it resumes at next start", zap.String("phase", string(t.phase())))
		return
	}
	d.failPending(t, err, true)
}

func (d *Dispatcher) provisionAndLaunch(ctx context.Context, t *tracked) error {
	r, ex := t.r, t.r.Executor
	rec := t.get()
	if why, _ := t.stopped(); why != "" {
		return errStopped
	}
	ej := executors.Job{RunnerID: rec.RunnerID, ID: rec.JobID, Token: rec.Token, Payload: rec.Payload}
	if rec.Phase == state.Acquired {
		if len(d.cfg.Guards) > 0 {
			// Guards may wait long: the job is durable meanwhile.
			t.update(d.store, func(*state.Job) {})
			if err := d.store.Sync(ctx); err != nil {
				return fmt.Errorf("saving state: %w", err)
			}
			if err := d.confirm(ctx, t); err != nil {
				return err
			}
			if err := d.admit(ctx, t); err != nil {
				return err
			}
			ej.Payload = t.get().Payload // with the guards' variables
		}
		if err := d.fitWeight(ctx, t, ej); err != nil {
			return err
		}
		h, err := ex.Plan(ctx, ej)
		if err != nil {
			return &stepError{op: "plan", err: err}
		}
		rec = t.update(d.store, func(j *state.Job) { j.Resource = h; j.Phase = state.Provisioning })
		// Write-ahead: the host's handle is durable before it is created.
		if err := d.store.Sync(ctx); err != nil {
			return fmt.Errorf("saving state before provisioning: %w", err)
		}
		// The job is durable: only now is GitLab told it is taken. A crash
		// before this leaves the job unconfirmed, and GitLab hands it out
		// again after its acknowledgement timeout.
		if err := d.confirm(ctx, t); err != nil {
			return err
		}
		// Only a confirmed job has a log: GitLab takes a job token
		// (trace PATCH) only for a running job (Ci::AuthJobFinder), and
		// answers 403 Job-Status: pending before. The line is held (sent
		// with the next, or handed to the inner runner).
		d.holdLine(t, fmt.Sprintf("paas-runner: provisioning a %s host for this job…", r.ExecutorName))
		t.logger().Info("provisioning a host", inCare(rec))
	} else {
		d.holdLine(t, fmt.Sprintf("paas-runner: provisioning a %s host for this job…", r.ExecutorName))
	}
	d.spaceLaunches(ctx)
	start := time.Now()
	h, err := retry(ctx, d, t, "provision", func() (executors.Handle, error) { return ex.Provision(ctx, rec.Resource, ej) })
	if err != nil {
		return err
	}
	took := time.Since(start)
	d.obs().Provisioned(r.Runner, took)
	changed := !bytes.Equal(h, rec.Resource)
	rec = t.update(d.store, func(j *state.Job) { j.Resource = h; j.Phase = state.Launching })
	t.logger().Info("host ready: launching the job", zap.Duration("provisioning", took), inCare(rec))
	if changed {
		if err := d.store.Sync(ctx); err != nil {
			return fmt.Errorf("saving state after provisioning: %w", err)
		}
	}
	d.holdLine(t, fmt.Sprintf("paas-runner: host ready after %.1fs; starting the job on it", time.Since(start).Seconds()))
	if why, _ := t.stopped(); why != "" {
		return errStopped
	}
	h, err = retry(ctx, d, t, "launch", func() (executors.Handle, error) {
		// the log's offset and checksum to go on from, and the daemon's
		// last lines for the inner runner to send or written now
		d.handOver(ctx, t, &ej)
		return ex.Launch(ctx, rec.Resource, ej)
	})
	if err != nil {
		return err
	}
	d.markLaunched(t, h, true)
	t.logger().Info("job launched", zap.Duration("provisioning", time.Since(start)), inCare(t.get()))
	d.afterLaunch(t)
	return nil
}

// markLaunched records that the job runs on its host h. launched: this
// daemon launched it just now (its next check in GitLab is a full
// interval away); else it was found running after a restart, and the
// check due since its confirmation stays (what happened while the daemon
// was down is looked at soon).
func (d *Dispatcher) markLaunched(t *tracked, h executors.Handle, launched bool) {
	t.mu.Lock()
	t.cancel = nil
	t.mu.Unlock()
	t.acquired = nil
	t.update(d.store, func(j *state.Job) {
		j.Resource = h
		j.Phase = state.Launched
		j.LaunchedAt = time.Now().UTC()
		j.Payload = nil
	})
	if launched {
		d.tracker.launched(t)
	}
	d.leaveProvisioning()
	d.stats.launched.Add(1)
}

// afterLaunch handles a host end reported before the launch was recorded.
func (d *Dispatcher) afterLaunch(t *tracked) {
	t.mu.Lock()
	early := t.earlyEnd
	t.earlyEnd = nil
	t.mu.Unlock()
	if early != nil {
		d.hostEnded(d.work, t.r, *early)
	}
}

// alreadyRunning handles a job resumed in the launching phase whose host,
// inspected, already runs it: the launch happened before the restart (the
// crash came before it was recorded). It is recorded as launched without
// being handed to its host again, whatever the executor's Launch would do.
func (d *Dispatcher) alreadyRunning(ctx context.Context, t *tracked) bool {
	rec := t.get()
	in, ok := t.r.Executor.(executors.Inspector)
	if !ok || rec.Phase != state.Launching || len(rec.Resource) == 0 {
		return false
	}
	st, err := in.Inspect(ctx, rec.Resource)
	if err != nil || !st.Exists || !st.Running {
		return false
	}
	d.markLaunched(t, rec.Resource, false)
	t.logger().Info("the job's host already runs it (launched before the restart): tracking it, not launching it again")
	d.afterLaunch(t)
	return true
}

// confirm tells GitLab the job is taken (two-phase job commit), once it is
// durable, and starts watching it. It retries while GitLab cannot be
// reached: an unconfirmed job must not run (GitLab refuses its final
// state), and GitLab gives it to another runner if the confirmation never
// comes. A job GitLab no longer wants run stops provisioning (errStopped).
func (d *Dispatcher) confirm(ctx context.Context, t *tracked) error {
	t.mu.Lock()
	done := t.confirmed
	t.mu.Unlock()
	if done {
		return nil
	}
	rec := t.get()
	for attempt := 0; ; attempt++ {
		status, err := t.r.Source.ConfirmJob(ctx, rec.JobID, rec.Token)
		switch {
		case err == nil && status == job.StatusCanceling:
			t.stopProvisioning("the job was canceled in GitLab", job.StatusCanceling)
			return errStopped
		case err == nil:
			t.mu.Lock()
			t.confirmed = true
			t.mu.Unlock()
			d.tracker.add(t)
			return nil
		case errors.Is(err, job.ErrNotRunning):
			t.stopProvisioning("the job is not this runner's to run any more in GitLab (ended, canceled, or given up before it was confirmed)", job.StatusCanceled)
			return errStopped
		case ctx.Err() != nil:
			return ctx.Err()
		}
		if st := httpStatus(err); st >= 400 && st < 500 && st != 408 && st != 409 && st != 429 {
			return fmt.Errorf("confirming the job to GitLab: %w", err)
		}
		wait := d.backoff(attempt)
		t.logger().Warn("confirming the job to GitLab failed; retrying", zap.Int("attempt", attempt+1), zap.Duration("wait", wait), zap.Error(err))
		if backoff.Sleep(ctx, wait) != nil {
			return ctx.Err()
		}
	}
}

func (d *Dispatcher) admit(ctx context.Context, t *tracked) error {
	if t.acquired == nil {
		a, err := job.Parse(t.get().Payload)
		if err != nil {
			return &stepError{op: "read the job payload", err: executors.Permanent("payload", err)}
		}
		t.acquired = a
	}
	// A guard may wait long: the job gives its slots back meanwhile
	// (parked) and takes them again before provisioning. Draining ends
	// the wait; the job resumes waiting at next start.
	gctx, stop := context.WithCancel(ctx)
	defer stop()
	defer context.AfterFunc(d.stopWaiting, stop)()
	parked := false
	defer func() {
		if t.waiting.Swap(false) {
			d.tracker.move(t)
		}
	}()
	park := func() {
		if !t.waiting.Swap(true) {
			d.tracker.move(t)
		}
		// A guard may wait long: the job is durable meanwhile (it waits
		// again after a restart).
		t.update(d.store, func(*state.Job) {})
		if err := d.store.Sync(ctx); err != nil && ctx.Err() == nil {
			t.logger().Warn("could not save the waiting job; it is lost if paas-runner stops now", zap.Error(err))
		}
		d.mu.Lock()
		if !parked && d.parked < d.cfg.MaxWaiting {
			parked = true
			t.parkedSlots = true
			if t.granted {
				d.grantedLocked(t, 1)
			}
			d.parked++
			d.total--
			d.provisioning--
			t.r.inFlight--
			d.parkWeightLocked(t)
			d.signalLocked()
		}
		d.mu.Unlock()
	}
	var added []job.Variable
	var err error
	for _, g := range d.cfg.Guards {
		var vs []job.Variable
		vs, err = g.Admit(gctx, t.r.ID, t.acquired, func(line string) { d.traceLine(ctx, t, line, false) }, park)
		if err != nil {
			break
		}
		added = append(added, vs...)
	}
	if parked {
		d.mu.Lock()
		d.parked--
		d.mu.Unlock()
		d.unpark(ctx, t, err == nil)
	}
	d.mu.Lock()
	if t.granted && t.parkedSlots {
		d.grantedLocked(t, -1) // it has its slots again: acquisitions go on
	}
	t.granted, t.parkedSlots = false, false
	d.mu.Unlock()
	switch {
	case err != nil && d.stopWaiting.Err() != nil && ctx.Err() == nil:
		return errDraining
	case err != nil && ctx.Err() != nil:
		return ctx.Err()
	case err != nil:
		return guardError(err)
	}
	if len(added) > 0 {
		raw, perr := withVariables(t.get().Payload, added)
		if perr != nil {
			return &stepError{op: "read the job payload", err: executors.Permanent("payload", perr)}
		}
		a, perr := job.Parse(raw)
		if perr != nil {
			return &stepError{op: "read the job payload", err: executors.Permanent("payload", perr)}
		}
		t.acquired = a
		t.update(d.store, func(j *state.Job) { j.Payload = raw })
	}
	return nil
}

var errDraining = errors.New("draining: guard wait interrupted")

// Granted tells that a guard has just given a job waiting in its guards
// what it waited for (its locks). Called before the guard's release that
// freed them returns, so before the slot of the job that released them is
// given back: from then until the granted job, if it gave its slots back
// to wait, has them again, no new job takes the slot it needs (reserve).
func (d *Dispatcher) Granted(runnerID string, jobID int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	t := d.jobs[state.Key{Runner: runnerID, ID: jobID}]
	if t == nil || t.granted {
		return
	}
	t.granted = true
	if t.parkedSlots {
		d.grantedLocked(t, 1)
	}
}

// grantedLocked counts granted jobs waiting for their slots (d.mu held).
func (d *Dispatcher) grantedLocked(t *tracked, n int) {
	d.grantedWaiting += n
	t.r.grantedWaiting += n
	if n < 0 {
		d.signalLocked()
	}
}

// unpark takes a parked job's slots again: waiting for them when it goes
// on, at once (over the limits, for the failure path to give them back)
// when it does not or ctx ends.
func (d *Dispatcher) unpark(ctx context.Context, t *tracked, goOn bool) {
	r := t.r
	for {
		if goOn && ctx.Err() == nil && !d.reserveInto(r, &t.weight) {
			freed := d.freedChan()
			tm := time.NewTimer(d.checkInterval())
			select {
			case <-ctx.Done():
			case <-freed:
			case <-tm.C:
			}
			tm.Stop()
			continue
		}
		if !goOn || ctx.Err() != nil {
			d.mu.Lock()
			d.total++
			d.provisioning++
			r.inFlight++
			d.mu.Unlock()
		}
		return
	}
}

// guardError makes a guard's refusal a permanent job failure with the
// guard's failure reason.
func guardError(err error) error {
	var ee *executors.Error
	if errors.As(err, &ee) {
		return err
	}
	reason := job.ScriptFailure
	var fr interface{ FailureReason() string }
	if errors.As(err, &fr) {
		reason = fr.FailureReason()
	}
	return &executors.Error{Op: "guard", Permanent: true, FailureReason: reason, Err: err}
}

// withVariables appends variables to a payload's list (replacing earlier
// entries of the same keys), keeping every other field as it is.
func withVariables(raw json.RawMessage, vs []job.Variable) (json.RawMessage, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	var list []json.RawMessage
	if v, ok := doc["variables"]; ok && string(v) != "null" {
		if err := json.Unmarshal(v, &list); err != nil {
			return nil, fmt.Errorf("job variables: %w", err)
		}
	}
	keys := map[string]bool{}
	for _, v := range vs {
		keys[v.Key] = true
	}
	kept := list[:0]
	for _, item := range list {
		var k struct {
			Key string `json:"key"`
		}
		if json.Unmarshal(item, &k) == nil && keys[k.Key] {
			continue
		}
		kept = append(kept, item)
	}
	for _, v := range vs {
		b, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		kept = append(kept, b)
	}
	var err error
	if doc["variables"], err = json.Marshal(kept); err != nil {
		return nil, err
	}
	return json.Marshal(doc)
}

// spaceLaunches applies paas_min_seconds_between_launches.
func (d *Dispatcher) spaceLaunches(ctx context.Context) {
	if d.cfg.MinBetweenLaunches <= 0 {
		return
	}
	d.mu.Lock()
	at := time.Now()
	if d.nextLaunch.After(at) {
		at = d.nextLaunch
	}
	d.nextLaunch = at.Add(d.cfg.MinBetweenLaunches)
	d.mu.Unlock()
	_ = backoff.Sleep(ctx, time.Until(at))
}

// stepError says which step failed.
type stepError struct {
	op       string
	err      error
	attempts int
}

func (e *stepError) Error() string {
	if e.attempts > 1 {
		return fmt.Sprintf("could not %s the host (%d attempts): %v", e.op, e.attempts, e.err)
	}
	return fmt.Sprintf("could not %s the host: %v", e.op, e.err)
}
func (e *stepError) Unwrap() error { return e.err }

// retry runs step until it succeeds, fails permanently, runs out of
// attempts or ctx ends, telling the job log about each retry.
func retry(ctx context.Context, d *Dispatcher, t *tracked, op string, step func() (executors.Handle, error)) (executors.Handle, error) {
	for attempt := 0; ; attempt++ {
		h, err := step()
		if err == nil {
			return h, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if executors.IsPermanent(err) || attempt+1 >= d.cfg.ProvisionAttempts {
			return nil, &stepError{op: op, err: err, attempts: attempt + 1}
		}
		wait := d.backoff(attempt)
		t.logger().Warn("executor step failed; retrying", zap.String("step", op), zap.Int("attempt", attempt+1), zap.Duration("wait", wait), zap.Error(err))
		d.traceLine(ctx, t, fmt.Sprintf("paas-runner: %s failed (attempt %d of %d), retrying in %.0fs: %v", op, attempt+1, d.cfg.ProvisionAttempts, wait.Seconds(), err), true)
		if backoff.Sleep(ctx, wait) != nil {
			return nil, ctx.Err()
		}
	}
}

const (
	ansiRed   = "\x1b[31;1m"
	ansiReset = "\x1b[0;m"
)

// failPending reports a launch failure to GitLab, then removes (or keeps)
// the host. report=false: the failure was recorded before a restart.
func (d *Dispatcher) failPending(t *tracked, cause error, fresh bool) {
	log := t.logger()
	if !t.isConfirmed() && !t.get().Reported {
		// GitLab takes neither a log line nor a final state from a job
		// still waiting for its runner's confirmation (two-phase commit:
		// 403 to the PATCH, 400 to PUT state=failed): confirm it first.
		ctx, cancel := context.WithTimeout(d.work, time.Minute)
		err := d.durableConfirm(ctx, t)
		cancel()
		if why, status := t.stopped(); why != "" {
			d.abandon(t, why, status)
			return
		}
		if err != nil {
			log.Warn("could not confirm the failed job to GitLab before failing it", zap.Error(err))
		}
	}
	rec := t.get()
	msg := cause.Error()
	if fresh {
		d.stats.launchFailures.Add(1)
		d.obs().LaunchFailed(t.r.Runner, executors.FailureReason(cause))
		log.Error("job launch failed", zap.Error(cause), inCare(rec))
		ctx, cancel := context.WithTimeout(d.work, 30*time.Second)
		d.traceLine(ctx, t, "paas-runner: ERROR: "+msg, true)
		cancel()
		rec = t.update(d.store, func(j *state.Job) { j.Failure = msg })
	}
	if !rec.Reported {
		reason := executors.FailureReason(cause)
		err := t.r.Source.FailJob(d.work, rec.JobID, rec.Token, reason)
		if err != nil && d.work.Err() != nil {
			log.Info("reporting the failure interrupted by shutdown; it is reported at next start")
			return
		}
		if err != nil {
			log.Error("could not report the launch failure to GitLab", zap.Error(err))
		}
		t.update(d.store, func(j *state.Job) { j.Reported = true })
	}
	d.endPending(t, d.cfg.DecommissionLaunchFailures)
}

// abandon ends a pending job that GitLab canceled or ended.
func (d *Dispatcher) abandon(t *tracked, why, status string) {
	log := t.logger()
	log.Info("job stopped before launch; removing its host", zap.String("reason", why))
	if status == job.StatusCanceling {
		// complete the cancellation (canceling → canceled)
		rec := t.get()
		if err := t.r.Source.FailJob(d.work, rec.JobID, rec.Token, job.UnknownFailure); err != nil && d.work.Err() == nil {
			log.Warn("could not complete the cancellation in GitLab", zap.Error(err))
		}
	}
	d.endPending(t, true)
}

// endPending releases a job that will not be launched: its host is removed
// (decommission) or kept and left in the state file for the admin.
func (d *Dispatcher) endPending(t *tracked, decommission bool) {
	d.tracker.remove(t)
	rec := t.get()
	if len(rec.Resource) == 0 || rec.Phase == state.Acquired {
		d.forget(t, true)
		return
	}
	if !decommission {
		t.logger().Warn("keeping the host of a failed launch (paas_decommission_launch_failures = false); remove it by hand", zap.ByteString("handle", rec.Resource))
		t.update(d.store, func(j *state.Job) { j.KeepResources = true; j.Phase = state.Decommissioning; j.Payload = nil })
		d.untrack(t)
		d.releaseJob(t, true)
		return
	}
	t.update(d.store, func(j *state.Job) { j.Phase = state.Decommissioning; j.Payload = nil })
	d.leaveProvisioning()
	d.decoms.enqueue(t)
}

// forget drops a job that left nothing behind.
func (d *Dispatcher) forget(t *tracked, provisioning bool) {
	d.store.Delete(t.get().Key())
	d.untrack(t)
	d.releaseJob(t, provisioning)
}

func (d *Dispatcher) untrack(t *tracked) {
	k := t.get().Key()
	d.mu.Lock()
	delete(d.jobs, k)
	d.mu.Unlock()
	for _, g := range d.cfg.Guards {
		g.Release(t.r.ID, k.ID)
	}
}

// finished handles a launched job that ended.
func (d *Dispatcher) finished(t *tracked, how string) {
	t.mu.Lock()
	if t.rec.Phase != state.Launched {
		t.mu.Unlock()
		return
	}
	t.rec.Phase = state.Decommissioning
	if d.cfg.KeepFinished {
		t.rec.KeepResources = true
	}
	rec := t.rec
	t.mu.Unlock()
	d.store.Put(rec)
	d.tracker.remove(t)
	d.stats.finished.Add(1)
	d.obs().JobEnded(t.r.Runner, rec.Key())
	running := zap.Skip()
	if !rec.LaunchedAt.IsZero() {
		running = zap.Duration("running", time.Since(rec.LaunchedAt))
	}
	t.logger().Info("job finished", zap.String("how", how), inCare(rec), running)
	if d.cfg.KeepFinished {
		t.logger().Info("keeping the host (paas_finished_jobs_keep_resources = true)", zap.ByteString("handle", rec.Resource))
		d.untrack(t)
		d.releaseJob(t, false)
		return
	}
	d.decoms.enqueue(t)
}

// resume takes over the jobs of the state file.
func (d *Dispatcher) resume() {
	recs := d.store.Jobs()
	var pending, launched, decom, foreign int
	var inspect []func(context.Context)
	defer func() { d.inspectAll(inspect) }()
	for _, rec := range recs {
		r, ok := d.runners[rec.RunnerID]
		if !ok {
			if r, ok = d.aliases[rec.RunnerID]; ok {
				d.log.Info("taking over a job recorded under the runner's Heptapod ID",
					zap.String("runner", r.Name), zap.String("legacy_id", rec.RunnerID), zap.String("runner_id", r.ID), zap.Int64("job_id", rec.JobID))
				// Put before Delete: a crash in between leaves the job
				// twice, which the next start folds again, never zero times.
				old := rec.Key()
				rec.RunnerID = r.ID
				d.store.Put(rec)
				d.store.Delete(old)
			}
		}
		if !ok {
			foreign++
			d.log.Error("the state file has a job of a runner that is not configured; leaving it in the state file (its host is not removed)",
				zap.String("runner_name", rec.RunnerID), zap.Int64("job_id", rec.JobID), zap.ByteString("handle", rec.Resource))
			continue
		}
		if rec.KeepResources {
			continue
		}
		t := &tracked{rec: rec, r: r}
		d.mu.Lock()
		d.jobs[rec.Key()] = t
		d.total++
		r.inFlight++
		d.recountLocked(t)
		if rec.Phase.Pending() {
			d.provisioning++
		}
		d.mu.Unlock()
		switch {
		case rec.Phase.Pending():
			pending++
			d.launches.Add(1)
			go d.launchJob(t, true)
		case rec.Phase == state.Launched:
			launched++
			d.tracker.add(t)
			if in, ok := r.Executor.(executors.Inspector); ok {
				inspect = append(inspect, func(ctx context.Context) { d.inspectResumed(ctx, t, in) })
			}
		default:
			decom++
			d.decoms.enqueue(t)
		}
	}
	if len(recs) > 0 {
		d.log.Info("resumed jobs from the state file", zap.Int("pending", pending), zap.Int("launched", launched),
			zap.Int("to_decommission", decom), zap.Int("unknown_runner", foreign))
	}
}

// inspectAll runs the resume-time host checks, a few at a time, in the
// background.
func (d *Dispatcher) inspectAll(checks []func(context.Context)) {
	if len(checks) == 0 {
		return
	}
	d.aux.Add(1)
	go func() {
		defer d.aux.Done()
		sem := make(chan struct{}, 8)
		var wg sync.WaitGroup
		for _, check := range checks {
			sem <- struct{}{}
			wg.Add(1)
			go func() { defer wg.Done(); defer func() { <-sem }(); check(d.work) }()
		}
		wg.Wait()
	}()
}

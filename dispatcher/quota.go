package dispatcher

import (
	"context"
	"fmt"
	"slices"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/job"
	"gitlab.com/paas-runner/paas-runner/state"
)

// The weighted quota (Heptapod's quota_computation) caps the sum of the
// weights of the jobs in the daemon's care, from acquisition to host
// removal, besides concurrent (which counts jobs). A job's weight is known
// only once GitLab handed it out (its flavor is a job variable), so:
//
//   - before each job request, QuotaUnit (the reference flavor's weight) is
//     reserved, if it fits;
//   - once the job is there and before anything is provisioned, its
//     reservation becomes its weight: at once if that fits (always when it
//     is lighter), else the job gives its reservation back and queues;
//   - queued jobs are admitted first come first served, each once its
//     whole weight fits; no job is requested while any is queued, so that
//     the queue drains as the running jobs end (no deadlock between jobs
//     holding parts of the quota, no starvation of heavy jobs);
//   - a job heavier than the whole quota could never run: it fails at once.
//
// The sum never exceeds the quota, except after a restart with a smaller
// quota than the state file's jobs weigh: then nothing is acquired until
// enough of them ended.

// quotaState is the weighted quota's bookkeeping, guarded by Dispatcher.mu.
type quotaState struct {
	used float64
	// queue: jobs waiting for their weight to fit, oldest first.
	queue []*tracked
}

// quotaSlack absorbs float rounding: weights are sums of powers.
func (d *Dispatcher) quotaSlack() float64 { return d.cfg.Quota * 1e-9 }

func (d *Dispatcher) quotaOn() bool { return d.cfg.Quota > 0 }

// quotaRoomLocked tells whether a job may be requested: a unit fits and
// no job waits for room.
func (d *Dispatcher) quotaRoomLocked() bool {
	if !d.quotaOn() {
		return true
	}
	return len(d.quota.queue) == 0 && d.quota.used+d.cfg.QuotaUnit <= d.cfg.Quota+d.quotaSlack()
}

// reserveWeightLocked takes the unit into *w (a request's reservation, or
// a job's weight when it takes its slots again after a guard's wait).
func (d *Dispatcher) reserveWeightLocked(w *float64) {
	if d.quotaOn() {
		d.quota.used += d.cfg.QuotaUnit - *w
		*w = d.cfg.QuotaUnit
	}
}

// parkWeightLocked gives back the weight of a job that waits for a guard
// without its slots (parked): it takes a unit again with them.
func (d *Dispatcher) parkWeightLocked(t *tracked) {
	d.quota.used -= t.weight
	t.weight = 0
}

// unreserve gives back the slots reserved for a request that brought no job.
func (d *Dispatcher) unreserve(r *runnerState) {
	d.mu.Lock()
	d.quota.used -= r.reserved
	r.reserved = 0
	d.mu.Unlock()
	d.release(r, true)
}

// adoptReservation makes the reservation of r's request the weight of the
// job it brought.
func (d *Dispatcher) adoptReservation(r *runnerState, t *tracked) {
	if !d.quotaOn() {
		return
	}
	d.mu.Lock()
	t.weight, r.reserved = r.reserved, 0
	d.mu.Unlock()
	t.rec.ExpectedWeight = t.weight
}

// recountLocked counts a job resumed from the state file at its recorded
// expected weight (Heptapod's expected_weight: 1 when absent).
func (d *Dispatcher) recountLocked(t *tracked) {
	if !d.quotaOn() {
		return
	}
	w := t.rec.ExpectedWeight
	if !(w > 0) {
		w = 1
	}
	t.weight = w
	d.quota.used += w
}

// releaseJob gives back a job's slots and its weight.
func (d *Dispatcher) releaseJob(t *tracked, provisioning bool) {
	d.mu.Lock()
	d.quota.used -= t.weight
	t.weight = 0
	if len(d.quota.queue) == 0 && d.quota.used < d.quotaSlack() {
		d.quota.used = 0 // no drift from float sums
	}
	d.mu.Unlock()
	d.release(t.r, provisioning)
}

// fitWeight weighs a job not provisioned yet and holds it until its weight
// fits in the quota, recording its weight as expected_weight.
func (d *Dispatcher) fitWeight(ctx context.Context, t *tracked, ej executors.Job) error {
	if !d.quotaOn() {
		return nil
	}
	var w float64
	_, err := retry(ctx, d, t, "weigh", func() (executors.Handle, error) {
		var err error
		w, err = executors.JobWeight(ctx, t.r.Executor, ej)
		return nil, err
	})
	if err == nil && !(w > 0) {
		w = 1
	}
	if err == nil && w > d.cfg.Quota+d.quotaSlack() {
		err = &executors.Error{Op: "quota", Permanent: true, FailureReason: job.ScriptFailure,
			Err: fmt.Errorf("this job's host weighs %.2f, more than this daemon's whole weighted quota (%.2f, quota_computation): it can never run here; ask for a smaller flavor", w, d.cfg.Quota)}
	}
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		// GitLab accepts no final state for a job not confirmed.
		if cerr := d.durableConfirm(ctx, t); cerr != nil {
			return cerr
		}
		return err
	}
	d.mu.Lock()
	fits := d.quota.used-t.weight+w <= d.cfg.Quota+d.quotaSlack()
	if fits && (w <= t.weight || len(d.quota.queue) == 0) {
		d.quota.used += w - t.weight
		t.weight = w
		d.mu.Unlock()
		t.update(d.store, func(j *state.Job) { j.ExpectedWeight = w })
		return nil
	}
	// Wait in line, holding nothing.
	d.quota.used -= t.weight
	t.weight = 0
	d.quota.queue = append(d.quota.queue, t)
	used := d.quota.used
	d.signalLocked()
	d.mu.Unlock()
	admitted := false
	defer func() {
		if !admitted {
			d.mu.Lock()
			d.quota.queue = slices.DeleteFunc(d.quota.queue, func(q *tracked) bool { return q == t })
			d.signalLocked()
			d.mu.Unlock()
		}
	}()
	t.logger().Info("waiting for room in the weighted quota", zap.Float64("weight", w), zap.Float64("weight_used", used), zap.Float64("weight_quota", d.cfg.Quota))
	// The wait may be long: the job is made durable and confirmed to
	// GitLab first (as for guards).
	t.update(d.store, func(j *state.Job) { j.ExpectedWeight = w })
	if err := d.durableConfirm(ctx, t); err != nil {
		return err
	}
	d.traceLine(ctx, t, fmt.Sprintf("paas-runner: waiting for room in the weighted quota: this job's host weighs %.2f, %.2f of %.2f are in use…", w, used, d.cfg.Quota), false)
	for {
		d.mu.Lock()
		if d.quota.queue[0] == t && d.quota.used+w <= d.cfg.Quota+d.quotaSlack() {
			d.quota.queue = d.quota.queue[1:]
			d.quota.used += w
			t.weight = w
			admitted = true
			d.signalLocked()
			d.mu.Unlock()
			t.logger().Info("room in the weighted quota: provisioning", zap.Float64("weight", w))
			return nil
		}
		freed := d.slotFreed
		d.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-d.stopWaiting.Done():
			// Draining: the job is durable and waits again at next start.
			return errDraining
		case <-freed:
		}
		if why, _ := t.stopped(); why != "" {
			return errStopped
		}
	}
}

// durableConfirm makes the job durable, then confirms it to GitLab.
func (d *Dispatcher) durableConfirm(ctx context.Context, t *tracked) error {
	t.update(d.store, func(*state.Job) {})
	if err := d.store.Sync(ctx); err != nil {
		return fmt.Errorf("saving state: %w", err)
	}
	return d.confirm(ctx, t)
}

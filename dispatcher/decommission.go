package dispatcher

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/executors"
)

// decommissioner removes hosts with a bounded number of workers. A removal
// that fails is tried again later with backoff (a host left behind costs
// money), without holding a worker meanwhile; after removalSlotAttempts
// failures the job's concurrency slot is given back, so that a PaaS that
// cannot delete does not stop the runner from taking jobs, and every
// further failure is logged as an error and counted.
type decommissioner struct {
	d        *Dispatcher
	mu       sync.Mutex
	cond     *sync.Cond
	queue    []*tracked
	draining bool
	stopped  bool
	workers  sync.WaitGroup
}

const (
	decommissionWorkers = 16
	// removalSlotAttempts failed removals free the job's slot.
	removalSlotAttempts = 3
)

func newDecommissioner(d *Dispatcher) *decommissioner {
	dc := &decommissioner{d: d}
	dc.cond = sync.NewCond(&dc.mu)
	return dc
}

func (dc *decommissioner) enqueue(t *tracked) {
	dc.mu.Lock()
	dc.queue = append(dc.queue, t)
	dc.cond.Signal()
	dc.mu.Unlock()
}

// start starts the workers; they stop when ctx ends, or after drain once
// the queue is empty.
func (dc *decommissioner) start(ctx context.Context) {
	for i := 0; i < decommissionWorkers; i++ {
		dc.workers.Add(1)
		go dc.worker(ctx)
	}
	context.AfterFunc(ctx, func() {
		dc.mu.Lock()
		dc.stopped = true
		dc.cond.Broadcast()
		dc.mu.Unlock()
	})
}

// drain makes workers finish the queue and stop; removals that fail from
// now on are not tried again before the next start.
func (dc *decommissioner) drain() {
	dc.mu.Lock()
	dc.draining = true
	dc.cond.Broadcast()
	dc.mu.Unlock()
}

func (dc *decommissioner) wait() { dc.workers.Wait() }

func (dc *decommissioner) take() *tracked {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	for len(dc.queue) == 0 && !dc.draining && !dc.stopped {
		dc.cond.Wait()
	}
	if dc.stopped || len(dc.queue) == 0 {
		return nil
	}
	t := dc.queue[0]
	dc.queue[0] = nil
	dc.queue = dc.queue[1:]
	return t
}

func (dc *decommissioner) worker(ctx context.Context) {
	defer dc.workers.Done()
	for {
		t := dc.take()
		if t == nil {
			return
		}
		dc.d.decommission(ctx, t, dc)
	}
}

func (dc *decommissioner) isDraining() bool {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	return dc.draining || dc.stopped
}

// retryLater queues t again after wait, unless the daemon stops first.
func (dc *decommissioner) retryLater(ctx context.Context, t *tracked, wait time.Duration) {
	timer := time.AfterFunc(wait, func() {
		if ctx.Err() == nil && !dc.isDraining() {
			dc.enqueue(t)
		}
	})
	context.AfterFunc(ctx, func() { timer.Stop() })
}

// decommission tries once to remove t's host.
func (d *Dispatcher) decommission(ctx context.Context, t *tracked, dc *decommissioner) {
	rec := t.get()
	log := t.logger()
	err := t.r.Executor.Decommission(ctx, rec.Resource)
	if err != nil {
		if ctx.Err() != nil {
			return // stays in the state file: removed at next start
		}
		d.stats.decommissionErrors.Add(1)
		t.mu.Lock()
		t.removalFailures++
		attempt := t.removalFailures
		freeSlot := attempt >= removalSlotAttempts && !t.slotFreed
		if freeSlot {
			t.slotFreed = true
		}
		t.mu.Unlock()
		wait := d.backoff(attempt - 1)
		fields := []zap.Field{zap.Int("attempt", attempt), zap.ByteString("handle", rec.Resource), zap.Duration("retry_in", wait), zap.Error(err)}
		switch {
		case dc.isDraining():
			log.Error("removing the host failed; shutting down: it is removed at next start (it may be billing meanwhile)", fields...)
			return
		case freeSlot:
			log.Error("removing the host keeps failing: its job slot is freed, removal goes on in the background; check the PaaS (the host may be billing)", fields...)
			d.releaseJob(t, false)
		case attempt >= removalSlotAttempts || executors.IsPermanent(err):
			log.Error("removing the host failed again; retrying", fields...)
		default:
			log.Warn("removing the host failed; retrying", fields...)
		}
		dc.retryLater(ctx, t, wait)
		return
	}
	d.store.Delete(rec.Key())
	d.untrack(t)
	t.mu.Lock()
	freed := t.slotFreed
	t.slotFreed = true
	failures := t.removalFailures
	t.mu.Unlock()
	if !freed {
		d.releaseJob(t, false)
	}
	d.stats.decommissioned.Add(1)
	d.obs().HostRemoved(t.r.Runner, rec.Key())
	if failures > 0 {
		log.Info("host removed after failed attempts", zap.Int("failed_attempts", failures), inCare(rec))
		return
	}
	log.Info("host removed", inCare(rec))
}

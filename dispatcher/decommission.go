package dispatcher

import (
	"context"
	"sync"

	"gitlab.com/paas-runner/paas-runner/internal/backoff"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/executors"
)

// decommissioner removes hosts with a bounded number of workers, retrying
// failures with backoff: a host left behind costs money.
type decommissioner struct {
	d        *Dispatcher
	mu       sync.Mutex
	cond     *sync.Cond
	queue    []*tracked
	draining bool
	stopped  bool
	workers  sync.WaitGroup
}

const decommissionWorkers = 16

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

// start starts the workers; they stop when ctx ends or after drain.
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

// drain makes workers finish what they are doing and take nothing new.
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
	if dc.draining || dc.stopped || len(dc.queue) == 0 {
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
	return dc.draining
}

func (d *Dispatcher) decommission(ctx context.Context, t *tracked, dc *decommissioner) {
	rec := t.get()
	log := t.logger()
	for attempt := 0; ; attempt++ {
		err := t.r.Executor.Decommission(ctx, rec.Resource)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return // stays in the state file: removed at next start
		}
		d.stats.decommissionErrors.Add(1)
		level := log.Warn
		if executors.IsPermanent(err) {
			level = log.Error
		}
		level("removing the host failed; retrying", zap.Int("attempt", attempt+1), zap.ByteString("handle", rec.Resource), zap.Error(err))
		if dc.isDraining() {
			log.Info("shutting down: the host is removed at next start")
			return
		}
		if backoff.Sleep(ctx, d.backoff(attempt)) != nil {
			return
		}
	}
	d.store.Delete(rec.Key())
	d.untrack(t)
	d.release(t.r, false)
	d.stats.decommissioned.Add(1)
	d.obs().HostRemoved(t.r.Runner, rec.Key())
	log.Info("host removed")
}

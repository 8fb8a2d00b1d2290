package dispatcher

import (
	"container/heap"
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/executors"
)

// Reconfigure applies a reloaded configuration to a dispatcher, running or
// not, without dropping anything it holds:
//
//   - Concurrent, MaxProvisioning, CheckInterval, TrackingRPS and MaxWaiting
//     of cfg replace the current ones (zero values take the defaults, as in
//     New); the other fields of cfg are ignored (they need a restart).
//     Waiters for slots are woken: a raised limit is used at once; a lowered
//     one keeps the jobs already in flight and admits no new job until they
//     are below it.
//   - runners is the new list. A runner whose ID is already known keeps its
//     state, executor and job source (those of the new entry are ignored;
//     the caller reports their changes as needing a restart); only its
//     Limit is taken. A runner no longer listed stops acquiring (a request
//     in flight is let finish, and a job it returns is taken in charge); its
//     jobs stay tracked and their hosts are removed when they end. A new
//     runner starts polling (and its executor's end watch) at once when the
//     dispatcher runs.
//
// Nothing is changed when it returns an error.
func (d *Dispatcher) Reconfigure(cfg Config, runners []*Runner) error {
	cfg.defaults()
	seen := map[string]*Runner{}
	for _, r := range runners {
		if r.ID == "" || r.Executor == nil || r.Source == nil {
			return fmt.Errorf("runner %q: unique name, executor and job source are required", r.Name)
		}
		if o, dup := seen[r.ID]; dup {
			return fmt.Errorf("runners %q and %q share the unique name %q", o.Name, r.Name, r.ID)
		}
		seen[r.ID] = r
	}
	d.reconf.Lock()
	defer d.reconf.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	select {
	case <-d.draining:
		return fmt.Errorf("draining: the configuration is not reloaded")
	default:
	}
	d.cfg.Concurrent, d.cfg.MaxProvisioning, d.cfg.CheckInterval = cfg.Concurrent, cfg.MaxProvisioning, cfg.CheckInterval
	d.cfg.TrackingRPS, d.cfg.MaxWaiting = cfg.TrackingRPS, cfg.MaxWaiting
	d.tracker.setPoll(cfg.CheckInterval, cfg.TrackingRPS)

	var order []*runnerState
	for _, r := range runners {
		rs, ok := d.runners[r.ID]
		if ok {
			rs.limit = r.Limit
			order = append(order, rs)
			continue
		}
		if rs, ok = d.retired[r.ID]; ok {
			// Removed earlier and back before its jobs ended: the same state
			// (its jobs count against its limit) polls again.
			delete(d.retired, r.ID)
			rs.limit = r.Limit
			rs.log.Info("runner added back: polling again")
		} else {
			rs = d.newRunnerState(r)
			rs.log.Info("runner added: polling starts")
		}
		d.runners[r.ID] = rs
		order = append(order, rs)
		d.startRunnerLocked(rs)
	}
	for _, rs := range d.order {
		if _, keep := seen[rs.ID]; keep {
			continue
		}
		delete(d.runners, rs.ID)
		d.retired[rs.ID] = rs
		rs.retire()
		rs.log.Info("runner removed: no more jobs are acquired for it; its jobs in flight are still watched and their hosts removed",
			zap.Int("jobs_in_flight", rs.inFlight))
	}
	d.order = order
	d.signalLocked()
	close(d.reloaded)
	d.reloaded = make(chan struct{})
	return nil
}

// reloadedChan is closed at the next Reconfigure: an idle wait of the old
// check interval is cut short.
func (d *Dispatcher) reloadedChan() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.reloaded
}

// idle waits for the check interval, or less when a reload changes it.
func (d *Dispatcher) idle(ctx context.Context) {
	reloaded := d.reloadedChan()
	t := time.NewTimer(d.checkInterval())
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-reloaded:
	}
}

// newRunnerState wraps r for the dispatcher.
func (d *Dispatcher) newRunnerState(r *Runner) *runnerState {
	rs := &runnerState{Runner: r, limit: r.Limit, log: d.log.With(zap.String("runner", r.Name), zap.String("executor", r.ExecutorName))}
	rs.retired, rs.retire = context.WithCancel(context.Background())
	return rs
}

// startRunnerLocked starts rs's acquisition loop (and its executor's end
// watch, for a runner new to this dispatcher) when the dispatcher
// acquires; before Run, Run starts them. d.mu is held.
func (d *Dispatcher) startRunnerLocked(rs *runnerState) {
	if d.acqCtx == nil {
		return
	}
	if rs.retired.Err() != nil {
		rs.retired, rs.retire = context.WithCancel(context.Background())
	}
	if rs.looping {
		// Removed, then added back while its loop still finishes a
		// request: that loop goes on instead of ending.
		rs.revived = true
		return
	}
	if w, ok := rs.Executor.(executors.EndWatcher); ok && !rs.watchStarted {
		rs.watchStarted = true
		d.startBG(func(ctx context.Context) { d.watchEnds(ctx, rs, w) })
	}
	d.loops.Add(1)
	d.liveLoops++
	rs.looping = true
	retired := rs.retired
	go func() {
		defer d.loops.Done()
		for {
			d.acquireLoop(d.acqCtx, retired, rs)
			d.mu.Lock()
			if rs.revived {
				rs.revived = false
				retired = rs.retired
				d.mu.Unlock()
				continue
			}
			rs.looping = false
			d.liveLoops--
			if d.liveLoops == 0 && d.cfg.PollCycles > 0 {
				d.loopsDoneOnce.Do(func() { close(d.loopsDone) })
			}
			d.mu.Unlock()
			return
		}
	}()
}

// runnerList is the current runners, for loops that run beside reloads.
func (d *Dispatcher) runnerList() []*runnerState {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]*runnerState(nil), d.order...)
}

// checkInterval is the current CheckInterval (reloads change it).
func (d *Dispatcher) checkInterval() time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg.CheckInterval
}

// Polling is how many runners' acquisition loops run (a removed runner's
// ends once the job request it had in flight returned).
func (d *Dispatcher) Polling() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.liveLoops
}

// RunnerIDs lists the IDs of the runners that acquire jobs, in order.
func (d *Dispatcher) RunnerIDs() []string {
	var ids []string
	for _, rs := range d.runnerList() {
		ids = append(ids, rs.ID)
	}
	return ids
}

// setPoll changes the poll lane's interval and request spacing; checks
// due later than a shortened interval are brought forward.
func (tr *tracker) setPoll(interval time.Duration, rps float64) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	ln := tr.lanes[pollLane]
	ln.interval, ln.spacing = interval, time.Duration(float64(time.Second)/rps)
	latest := time.Now().Add(interval)
	for i := range ln.q {
		if ln.q[i].due.After(latest) {
			ln.q[i].due = latest
		}
	}
	heap.Init(&ln.q)
	tr.signalLocked()
}

package dispatcher

import (
	"context"
	"errors"
	"sync"
	"time"

	"gitlab.com/paas-runner/paas-runner/internal/backoff"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/job"
	"gitlab.com/paas-runner/paas-runner/state"
)

// tracker watches jobs in GitLab (GET /job with the job token) to notice
// ends and cancellations. Jobs are checked in turn, each at most every
// CheckInterval, and never more than TrackingRPS requests per second in
// all: 5,000 jobs cost the same request rate as 150.
type tracker struct {
	d       *Dispatcher
	mu      sync.Mutex
	queue   []entry // FIFO, ordered by due time
	head    int
	members map[*tracked]bool
	wake    chan struct{}
}

type entry struct {
	t   *tracked
	due time.Time
}

func newTracker(d *Dispatcher) *tracker {
	return &tracker{d: d, members: map[*tracked]bool{}, wake: make(chan struct{}, 1)}
}

func (tr *tracker) add(t *tracked) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.members[t] {
		return
	}
	tr.members[t] = true
	tr.queue = append(tr.queue, entry{t, time.Now().Add(tr.d.cfg.CheckInterval)})
	tr.signalLocked()
}

func (tr *tracker) remove(t *tracked) {
	tr.mu.Lock()
	delete(tr.members, t)
	tr.mu.Unlock()
}

// next pops the next member entry, or reports there is none.
func (tr *tracker) next() (entry, bool) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for tr.head < len(tr.queue) {
		e := tr.queue[tr.head]
		tr.queue[tr.head] = entry{}
		tr.head++
		if tr.head > 1024 && tr.head*2 > len(tr.queue) {
			tr.queue = append([]entry(nil), tr.queue[tr.head:]...)
			tr.head = 0
		}
		if tr.members[e.t] {
			return e, true
		}
	}
	return entry{}, false
}

func (tr *tracker) requeue(t *tracked) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.members[t] {
		tr.queue = append(tr.queue, entry{t, time.Now().Add(tr.d.cfg.CheckInterval)})
		tr.signalLocked()
	}
}

func (tr *tracker) signalLocked() {
	select {
	case tr.wake <- struct{}{}:
	default:
	}
}

func (tr *tracker) run(ctx context.Context) {
	d := tr.d
	spacing := time.Duration(float64(time.Second) / d.cfg.TrackingRPS)
	sem := make(chan struct{}, d.cfg.TrackingWorkers)
	var wg sync.WaitGroup
	defer wg.Wait()
	var last time.Time
	for {
		e, ok := tr.next()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-tr.wake:
				continue
			}
		}
		wait := max(time.Until(e.due), time.Until(last.Add(spacing)))
		if backoff.Sleep(ctx, wait) != nil {
			return
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		last = time.Now()
		wg.Add(1)
		go func(t *tracked) {
			defer wg.Done()
			defer func() { <-sem }()
			d.check(ctx, t)
			tr.requeue(t)
		}(e.t)
	}
}

// check asks GitLab about one job and acts on the answer.
func (d *Dispatcher) check(ctx context.Context, t *tracked) {
	rec := t.get()
	d.stats.trackingRequests.Add(1)
	status, err := t.r.Source.JobStatus(ctx, rec.Token)
	switch {
	case errors.Is(err, job.ErrNotRunning) || (err == nil && job.IsFinal(status)):
		d.jobEnded(t, "the job ended in GitLab")
	case err != nil:
		if ctx.Err() == nil {
			t.logger().Debug("checking the job in GitLab failed", zap.Error(err))
		}
	case status == job.StatusCanceling:
		if t.phase().Pending() {
			t.stopProvisioning("the job was canceled in GitLab", job.StatusCanceling)
		}
	}
}

func (d *Dispatcher) jobEnded(t *tracked, why string) {
	switch t.phase() {
	case state.Launched:
		d.finished(t, why)
	case state.Acquired, state.Provisioning, state.Launching:
		t.stopProvisioning(why, job.StatusCanceled)
	}
}

package dispatcher

import (
	"container/heap"
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/job"
	"gitlab.com/paas-runner/paas-runner/state"
)

// tracker watches jobs in GitLab (GET /job with the job token) to notice
// ends and cancellations, in two lanes:
//
//   - poll: jobs whose end nothing else reports (executors that cannot
//     watch their hosts, jobs still being provisioned). Each is checked at
//     most every CheckInterval, and never more than TrackingRPS requests
//     per second in all: 5,000 jobs cost the same request rate as 150.
//   - safety: launched jobs of executors that report host ends themselves
//     (EndWatcher, while the watch runs). Their end is seen from the host,
//     and GitLab is asked at once then; cancellation reaches the inner
//     runner directly. GitLab is only asked as a safety net: each job at
//     most every SafetyInterval (first check spread at random over it),
//     and SafetyPerMinute requests a minute in all.
//   - waiting: jobs waiting for a guard (locks, pools). The guard writes
//     their log at least every minute and GitLab's answer to that write
//     tells an ended or canceling job (traceLine): each successful write
//     postpones the job's check by 1.5 WaitingInterval (touch), so that
//     GitLab is asked only when the log goes quiet: at most one request a
//     minute per waiting job, first checks spread at random.
type tracker struct {
	d       *Dispatcher
	mu      sync.Mutex
	members map[*tracked]uint64 // membership generation: stale entries are skipped
	gen     uint64
	lanes   [3]*lane
	wake    chan struct{}
}

const (
	pollLane = iota
	safetyLane
	waitLane
)

type lane struct {
	interval time.Duration
	spacing  time.Duration // between two checks of this lane
	spread   bool          // first due time at random within interval
	q        entryHeap
	last     time.Time
}

type entry struct {
	t   *tracked
	gen uint64
	due time.Time
}

type entryHeap []entry

func (h entryHeap) Len() int           { return len(h) }
func (h entryHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h entryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *entryHeap) Push(x any)        { *h = append(*h, x.(entry)) }
func (h *entryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = entry{}
	*h = old[:len(old)-1]
	return e
}

func newTracker(d *Dispatcher) *tracker {
	c := d.cfg
	return &tracker{d: d, members: map[*tracked]uint64{}, wake: make(chan struct{}, 1), lanes: [3]*lane{
		{interval: c.CheckInterval, spacing: time.Duration(float64(time.Second) / c.TrackingRPS)},
		{interval: c.SafetyInterval, spacing: time.Duration(float64(time.Minute) / c.SafetyPerMinute), spread: true},
		{interval: c.WaitingInterval, spacing: time.Duration(float64(time.Second) / c.TrackingRPS), spread: true},
	}}
}

// laneOf tells how t is watched now.
func (tr *tracker) laneOf(t *tracked) int {
	if t.waiting.Load() {
		return waitLane
	}
	if t.phase() == state.Launched && t.r.watching.Load() {
		return safetyLane
	}
	return pollLane
}

// add starts watching t (again, in the lane that fits it now).
func (tr *tracker) add(t *tracked) {
	l := tr.laneOf(t)
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.pushLocked(t, l, true)
}

func (tr *tracker) pushLocked(t *tracked, l int, first bool) {
	tr.gen++
	tr.members[t] = tr.gen
	ln := tr.lanes[l]
	wait := ln.interval
	if first && ln.spread {
		wait = rand.N(ln.interval) + 1
	}
	heap.Push(&ln.q, entry{t: t, gen: tr.gen, due: time.Now().Add(wait)})
	tr.signalLocked()
}

// launched moves t, just launched, to the lane that fits it now, due a
// full interval from now: a job launched on a host whose end the executor
// reports is next asked about in a minute, not at the provisioning poll
// left from before (spreading is for many jobs taken over at once).
func (tr *tracker) launched(t *tracked) {
	l := tr.laneOf(t)
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if _, ok := tr.members[t]; ok {
		tr.pushLocked(t, l, false)
	}
}

// move puts t in the lane that fits it now (it started or stopped
// waiting for a guard), if it is watched.
func (tr *tracker) move(t *tracked) {
	l := tr.laneOf(t)
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if _, ok := tr.members[t]; ok {
		tr.pushLocked(t, l, true)
	}
}

// touch tells that GitLab just answered about waiting job t (its log was
// written): its next check is postponed by one and a half WaitingInterval,
// so that a log written every interval (the guard's at-least-every-minute
// line) always comes first and no status check is spent.
func (tr *tracker) touch(t *tracked) {
	if !t.waiting.Load() {
		return
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if _, ok := tr.members[t]; ok {
		tr.gen++
		tr.members[t] = tr.gen
		ln := tr.lanes[waitLane]
		heap.Push(&ln.q, entry{t: t, gen: tr.gen, due: time.Now().Add(ln.interval + ln.interval/2)})
		tr.signalLocked()
	}
}

func (tr *tracker) remove(t *tracked) {
	tr.mu.Lock()
	delete(tr.members, t)
	tr.mu.Unlock()
}

// relane moves r's jobs to the lane that fits them now (r's end watch
// started or stopped).
func (tr *tracker) relane(r *runnerState) {
	tr.mu.Lock()
	var ts []*tracked
	for t := range tr.members {
		if t.r == r {
			ts = append(ts, t)
		}
	}
	tr.mu.Unlock()
	for _, t := range ts {
		l := tr.laneOf(t)
		tr.mu.Lock()
		if _, ok := tr.members[t]; ok {
			tr.pushLocked(t, l, true)
		}
		tr.mu.Unlock()
	}
}

// next returns the entry to check next and when, or ok=false when there
// is none.
func (tr *tracker) next() (e entry, at time.Time, l int, ok bool) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for i, ln := range tr.lanes {
		for ln.q.Len() > 0 && tr.members[ln.q[0].t] != ln.q[0].gen {
			heap.Pop(&ln.q) // stale: removed or moved
		}
		if ln.q.Len() == 0 {
			continue
		}
		when := ln.q[0].due
		if g := ln.last.Add(ln.spacing); g.After(when) {
			when = g
		}
		if !ok || when.Before(at) {
			e, at, l, ok = ln.q[0], when, i, true
		}
	}
	return e, at, l, ok
}

// take pops e from lane l if it is still its head.
func (tr *tracker) take(e entry, l int) bool {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	ln := tr.lanes[l]
	if ln.q.Len() == 0 || ln.q[0].t != e.t || ln.q[0].gen != e.gen || tr.members[e.t] != e.gen {
		return false
	}
	heap.Pop(&ln.q)
	ln.last = time.Now()
	return true
}

func (tr *tracker) requeue(t *tracked, gen uint64) {
	l := tr.laneOf(t)
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.members[t] == gen {
		tr.pushLocked(t, l, false)
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
	sem := make(chan struct{}, d.cfg.TrackingWorkers)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		e, at, l, ok := tr.next()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-tr.wake:
				continue
			}
		}
		if wait := time.Until(at); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-tr.wake: // something new may come first
				t.Stop()
				continue
			case <-t.C:
			}
		}
		if !tr.take(e, l) {
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		wg.Add(1)
		go func(e entry) {
			defer wg.Done()
			defer func() { <-sem }()
			d.check(ctx, e.t)
			tr.requeue(e.t, e.gen)
		}(e)
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

package pipeguard

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"sync"
	"time"

	"gitlab.com/paas-runner/paas-runner/internal/backoff"
)

// Clock is the time source of a Watcher (a fake one in tests and
// benchmarks).
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time                         { return time.Now() }
func (systemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// SystemClock is the real clock.
var SystemClock Clock = systemClock{}

// JitterInterval is gitlab-job-guard's pause between two polls while
// conflicts remain: a random 3 to 15 s (collision avoidance).
func JitterInterval() time.Duration {
	return 3*time.Second + time.Duration(rand.Int64N(int64(12*time.Second)+1))
}

// MinGap is the shortest time between two polls of a project: a job that
// starts waiting wakes its project's poller early, but not more often.
const MinGap = 3 * time.Second

// ErrorBackoff is the wait after failed polls: doubling from 2 s, at most
// 30 s, jittered; at least GitLab's Retry-After (up to 30 s) on a 429 or
// 503.
var ErrorBackoff = backoff.Policy{Min: 2 * time.Second, Max: 30 * time.Second}

// ErrTimeout ends a wait that reached the rule's timeout.
var ErrTimeout = errors.New("timeout")

// TimeoutError says how long the wait lasted.
type TimeoutError struct{ After time.Duration }

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("Timeout reached after %d seconds, giving up ...", int(e.After/time.Second))
}

// Is makes errors.Is(err, ErrTimeout) hold.
func (e *TimeoutError) Is(target error) bool { return target == ErrTimeout }

// Request is one job's wait.
type Request struct {
	APIURL  string // CI_API_V4_URL
	Project string // CI_PROJECT_ID (or full path)
	Token   string // never logged
	// PipelineID is the job's own pipeline (CI_PIPELINE_ID).
	PipelineID int64
	Rule       *Rule
	// Since is when the wait began (kept across a daemon restart so the
	// timeout counts from the first start); zero = now.
	Since time.Time
}

// EventKind tells what an Event reports.
type EventKind int

// Event kinds.
const (
	EventPolled   EventKind = iota // a poll decided Wait for this job
	EventAPIError                  // a poll failed; retried after RetryIn
)

// Event is what a waiting job learns at each poll.
type Event struct {
	Kind     EventKind
	Decision Decision // EventPolled
	// Changed: the blocking pipelines (id, status, sha, ref) differ from
	// the previous EventPolled event's (always true for the first one with
	// conflicts).
	Changed bool
	Elapsed time.Duration
	Err     error         // EventAPIError
	RetryIn time.Duration // EventAPIError
}

// Watcher runs the polls of waiting jobs: one poller per project and token,
// shared by all the jobs waiting on it, polling every Interval while any
// waits. Wait blocks one job until its decision.
type Watcher struct {
	HTTP      *http.Client // nil = 10 s timeout
	UserAgent string
	Clock     Clock                // nil = SystemClock
	Interval  func() time.Duration // nil = JitterInterval
	Backoff   *backoff.Policy      // nil = ErrorBackoff
	// MinGap overrides the package's MinGap when positive.
	MinGap time.Duration

	mu      sync.Mutex
	groups  map[string]*group
	stopped chan struct{} // closed and replaced when a poller stops
}

type group struct {
	key           string
	apiURL, token string
	project       string
	waiters       map[*waiter]bool
	wake          chan struct{}
	lastPoll      time.Time
	// listings: the last successful poll's, by query key (nil after a
	// failed one), to answer a job that starts waiting (under Watcher.mu).
	listings map[string]*Snapshot
}

type waiter struct {
	req Request
	ch  chan outcome // cap 1, latest wins
	// What the last poll said (under Watcher.mu), for Waiting.
	blocking []Pipeline
	polled   time.Time
	lastErr  error
}

// Waiting describes one waiting job (for /debug/locks and metrics).
type Waiting struct {
	Guard      string // pipelines:<project>
	PipelineID int64
	Since      time.Time
	Blocking   []Pipeline // as of LastPoll
	LastPoll   time.Time  // zero: not polled yet
	LastError  string     // the last poll's error, "" if it succeeded
}

// Waiting lists the jobs waiting now, oldest wait first.
func (w *Watcher) Waiting() []Waiting {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []Waiting
	for _, g := range w.groups {
		for wt := range g.waiters {
			e := Waiting{Guard: wt.req.Name(), PipelineID: wt.req.PipelineID, Since: wt.req.Since,
				Blocking: wt.blocking, LastPoll: wt.polled}
			if wt.lastErr != nil {
				e.LastError = wt.lastErr.Error()
			}
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Since.Equal(out[j].Since) {
			return out[i].Since.Before(out[j].Since)
		}
		return out[i].PipelineID < out[j].PipelineID
	})
	return out
}

type outcome struct {
	d       Decision
	err     error // permanent error for this waiter
	pollErr error // transient poll error
	retryIn time.Duration
	at      time.Time // when the poll began
}

func (w *Watcher) clock() Clock {
	if w.Clock != nil {
		return w.Clock
	}
	return SystemClock
}

// Wait blocks until the job may proceed (nil error, Verdict Proceed), must
// give way or fail (Verdict Conflict or Superseded), the rule's timeout
// passes (a *TimeoutError), the guard token is rejected or GitLab answers a
// permanent error (an *APIError), or ctx ends. events, when not nil, is
// called from this goroutine after every poll that did not end the wait.
func (w *Watcher) Wait(ctx context.Context, req Request, events func(Event)) (Decision, error) {
	clk := w.clock()
	if req.Since.IsZero() {
		req.Since = clk.Now()
	}
	deadline := req.Since.Add(req.Rule.Timeout)
	wt := &waiter{req: req, ch: make(chan outcome, 1)}
	w.join(wt)
	defer w.leave(wt)
	timeout := clk.After(deadline.Sub(clk.Now()))
	var last []Pipeline
	first := true
	for {
		select {
		case <-ctx.Done():
			return Decision{}, ctx.Err()
		case <-timeout:
			return Decision{Verdict: Wait, Blocking: last}, &TimeoutError{After: req.Rule.Timeout}
		case o := <-wt.ch:
			elapsed := o.at.Sub(req.Since)
			switch {
			case o.err != nil:
				return o.d, o.err
			case o.pollErr != nil:
				if events != nil {
					events(Event{Kind: EventAPIError, Err: o.pollErr, RetryIn: o.retryIn, Elapsed: elapsed})
				}
			case o.d.Verdict != Wait:
				return o.d, nil
			default:
				changed := first || !samePipelines(last, o.d.Blocking)
				first = false
				last = o.d.Blocking
				if events != nil {
					events(Event{Kind: EventPolled, Decision: o.d, Changed: changed, Elapsed: elapsed})
				}
			}
		}
	}
}

func samePipelines(a, b []Pipeline) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func groupKey(r Request) string {
	h := sha256.Sum256([]byte(r.Token))
	return fmt.Sprintf("%s\x00%s\x00%x", r.APIURL, r.Project, h[:8])
}

func (w *Watcher) join(wt *waiter) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.groups == nil {
		w.groups = map[string]*group{}
	}
	k := groupKey(wt.req)
	g, ok := w.groups[k]
	if !ok {
		g = &group{key: k, apiURL: wt.req.APIURL, token: wt.req.Token, project: wt.req.Project,
			waiters: map[*waiter]bool{}, wake: make(chan struct{}, 1)}
		w.groups[k] = g
		g.waiters[wt] = true
		go w.run(g)
		return
	}
	g.waiters[wt] = true
	if w.answerFromLast(g, wt) {
		return
	}
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// answerFromLast answers a job that starts waiting from the project's last
// listing when that says it must wait (a conflicting pipeline was there at
// the last poll: waiting until the next one is safe), so that jobs joining
// a wait in progress cost no request of their own: one listing per
// interval, however many jobs arrive. Any other verdict, a narrowed rule
// (it needs jobs lists) or a cancel is left to a fresh poll (the wake,
// MinGap after the last one). Called with w.mu held.
func (w *Watcher) answerFromLast(g *group, wt *waiter) bool {
	r := wt.req.Rule
	snap := g.listings[r.Query().Key()]
	if snap == nil || r.Narrowed() || r.CancelOlder {
		return false
	}
	d := r.Evaluate(snap, wt.req.PipelineID)
	if d.Verdict != Wait {
		return false
	}
	wt.blocking, wt.polled = d.Blocking, snap.At
	send(wt, outcome{d: d, at: w.clock().Now()})
	return true
}

func (w *Watcher) leave(wt *waiter) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if g, ok := w.groups[groupKey(wt.req)]; ok {
		delete(g.waiters, wt)
		if len(g.waiters) == 0 {
			select { // let its poller stop now
			case g.wake <- struct{}{}:
			default:
			}
		}
	}
}

func send(wt *waiter, o outcome) {
	for {
		select {
		case wt.ch <- o:
			return
		default:
		}
		select {
		case <-wt.ch: // drop the stale one: latest wins
		default:
		}
	}
}

// WaitIdle blocks until no project is being polled (every poller has
// stopped), or ctx ends.
func (w *Watcher) WaitIdle(ctx context.Context) error {
	for {
		w.mu.Lock()
		if len(w.groups) == 0 {
			w.mu.Unlock()
			return nil
		}
		if w.stopped == nil {
			w.stopped = make(chan struct{})
		}
		ch := w.stopped
		w.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Groups is the number of projects being polled (for tests and metrics).
func (w *Watcher) Groups() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.groups)
}

func (w *Watcher) run(g *group) {
	clk := w.clock()
	poller := &Poller{Client: &Client{APIURL: g.apiURL, HTTP: w.HTTP, UserAgent: w.UserAgent}, Now: clk.Now}
	interval := w.Interval
	if interval == nil {
		interval = JitterInterval
	}
	pol := ErrorBackoff
	if w.Backoff != nil {
		pol = *w.Backoff
	}
	gap := MinGap
	if w.MinGap > 0 {
		gap = w.MinGap
	}
	failures := 0
	for {
		w.mu.Lock()
		if len(g.waiters) == 0 {
			delete(w.groups, g.key)
			if w.stopped != nil {
				close(w.stopped)
				w.stopped = nil
			}
			w.mu.Unlock()
			return
		}
		ws := make([]*waiter, 0, len(g.waiters))
		for wt := range g.waiters {
			ws = append(ws, wt)
		}
		w.mu.Unlock()
		in := make([]Waiter, len(ws))
		for i, wt := range ws {
			in[i] = Waiter{PipelineID: wt.req.PipelineID, Rule: wt.req.Rule}
		}
		g.lastPoll = clk.Now()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		results, err := poller.Poll(ctx, g.token, g.project, in)
		cancel()
		var pause time.Duration
		switch {
		case err != nil && Permanent(err):
			w.mu.Lock()
			g.listings = nil
			for _, wt := range ws {
				delete(g.waiters, wt)
			}
			w.mu.Unlock()
			for _, wt := range ws {
				send(wt, outcome{err: err})
			}
			continue
		case err != nil:
			w.mu.Lock()
			g.listings = nil
			w.mu.Unlock()
			// GitLab's rate limit says when to come back (within the
			// backoff's bound: a job log says when the next try is).
			pause = max(pol.Wait(failures), min(RetryAfter(err), pol.Max))
			failures++
			w.mu.Lock()
			for _, wt := range ws {
				wt.polled, wt.lastErr = g.lastPoll, err
			}
			w.mu.Unlock()
			for _, wt := range ws {
				send(wt, outcome{pollErr: err, retryIn: pause, at: g.lastPoll})
			}
		default:
			failures = 0
			w.mu.Lock()
			g.listings = poller.Listings()
			for i, wt := range ws {
				wt.polled, wt.lastErr, wt.blocking = g.lastPoll, nil, results[i].Decision.Blocking
				if results[i].Err != nil || results[i].Decision.Verdict != Wait {
					delete(g.waiters, wt)
				}
			}
			w.mu.Unlock()
			for i, wt := range ws {
				send(wt, outcome{d: results[i].Decision, err: results[i].Err, at: g.lastPoll})
			}
			pause = interval()
		}
		w.mu.Lock()
		empty := len(g.waiters) == 0
		w.mu.Unlock()
		if empty {
			continue // the loop's head removes the group
		}
		select {
		case <-clk.After(pause):
		case <-g.wake:
			w.mu.Lock()
			empty := len(g.waiters) == 0
			w.mu.Unlock()
			if empty {
				continue
			}
			// A job started waiting: answer it soon, but never poll the
			// project more often than every MinGap.
			if rest := gap - clk.Now().Sub(g.lastPoll); rest > 0 && err == nil {
				<-clk.After(rest)
			} else if err != nil {
				<-clk.After(max(pause-clk.Now().Sub(g.lastPoll), 0))
			}
		}
	}
}

// Lines is what a job's log shows for an event (the daemon's guard stage
// writes them; it prints unchanged EventPolled ones at least every minute,
// for the elapsed time).
func (e Event) Lines(r *Rule) []string {
	switch {
	case e.Kind == EventAPIError:
		return []string{fmt.Sprintf("pipeline guard: GitLab pipelines API error, retrying in %s: %v", e.RetryIn.Round(time.Second), e.Err)}
	case e.Changed:
		out := []string{fmt.Sprintf("pipeline guard: waiting for %d other pipelines in (%s) state (%s elapsed)",
			len(e.Decision.Blocking), r.StatusRegex, e.Elapsed.Round(time.Second))}
		for _, p := range e.Decision.Blocking {
			out = append(out, fmt.Sprintf("  pipeline #%d %s %s %s", p.ID, p.Status, p.SHA, p.Ref))
		}
		return out
	}
	return []string{fmt.Sprintf("pipeline guard: still waiting for %d other pipelines (%s elapsed)",
		len(e.Decision.Blocking), e.Elapsed.Round(time.Second))}
}

package pipeguard

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/pipeguard/pipeguardtest"
)

const listRoute = "GET /api/v4/projects/7/pipelines"

type harness struct {
	t   *testing.T
	srv *coordinatortest.Server
	clk *pipeguardtest.Clock
	w   *Watcher
	// events receives every event of the jobs started (buffered).
	events chan Event
}

func newHarness(t *testing.T) *harness {
	srv := coordinatortest.New(t)
	srv.AddAPIToken(apiToken, "api")
	clk := pipeguardtest.NewClock()
	return &harness{t: t, srv: srv, clk: clk, events: make(chan Event, 100),
		w: &Watcher{Clock: clk, Interval: func() time.Duration { return 5 * time.Second }}}
}

type waitResult struct {
	d   Decision
	err error
}

// start runs Wait for pipeline own in a goroutine; events are collected,
// and each is also sent on h.events.
func (h *harness) start(ctx context.Context, own int64, s Spec) (<-chan waitResult, func() []Event) {
	r := mustRule(h.t, s)
	var mu sync.Mutex
	var evs []Event
	ch := make(chan waitResult, 1)
	go func() {
		d, err := h.w.Wait(ctx, Request{APIURL: h.srv.URL + "/api/v4", Project: "7", Token: apiToken, PipelineID: own, Rule: r},
			func(e Event) {
				mu.Lock()
				evs = append(evs, e)
				mu.Unlock()
				select {
				case h.events <- e:
				default:
				}
			})
		ch <- waitResult{d, err}
	}()
	return ch, func() []Event { mu.Lock(); defer mu.Unlock(); return append([]Event(nil), evs...) }
}

// polls waits until the fake GitLab has seen n listings and the clock has
// pending timers (everyone asleep again).
func (h *harness) polls(n, pending int) {
	h.t.Helper()
	h.srv.WaitFor(10*time.Second, "pipelines listings", func(s *coordinatortest.Server) bool { return s.CountOf(listRoute) >= n })
	if !h.clk.WaitPending(pending, 10*time.Second) {
		h.t.Fatalf("timers pending: %d, want %d", h.clk.Pending(), pending)
	}
}

// event waits for the next event of the started jobs.
func (h *harness) event() Event {
	h.t.Helper()
	select {
	case e := <-h.events:
		return e
	case <-time.After(10 * time.Second):
		h.t.Fatal("no event")
	}
	return Event{}
}

func (h *harness) idle() {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.w.WaitIdle(ctx); err != nil {
		h.t.Fatal("pollers still running: ", err)
	}
}

func (h *harness) result(ch <-chan waitResult) waitResult {
	h.t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		h.t.Fatal("Wait did not return")
	}
	return waitResult{}
}

func TestWaitWhileOlderRuns(t *testing.T) {
	h := newHarness(t)
	old := h.srv.AddPipeline(7, "1-old", "running")
	own := h.srv.AddPipeline(7, "2-own", "running")
	ch, events := h.start(context.Background(), own, Spec{})
	for i := 1; i <= 3; i++ {
		h.polls(i, 2) // Wait's timeout timer + the poller's interval
		h.event()     // seen by the job before time moves on
		select {
		case r := <-ch:
			t.Fatalf("returned while the older pipeline runs: %+v", r)
		default:
		}
		h.clk.Advance(5 * time.Second)
	}
	h.polls(4, 2)
	h.event()
	if ws := h.w.Waiting(); len(ws) != 1 || ws[0].Guard != "pipelines:7" || ws[0].PipelineID != own ||
		len(ws[0].Blocking) != 1 || ws[0].Blocking[0].ID != old || ws[0].LastPoll.Sub(ws[0].Since) != 15*time.Second {
		t.Fatalf("waiting: %+v", ws)
	}
	h.srv.SetPipelineStatus(old, "success")
	h.clk.Advance(5 * time.Second) // one interval
	r := h.result(ch)
	if r.err != nil || r.d.Verdict != Proceed {
		t.Fatalf("%+v", r)
	}
	ev := events()
	if len(ev) != 4 || !ev[0].Changed || ev[1].Changed || ev[0].Decision.Blocking[0].ID != old ||
		ev[3].Elapsed != 15*time.Second {
		t.Fatalf("events %+v", ev)
	}
	h.idle()
}

func TestOldestFirstNeverDeadlocks(t *testing.T) {
	h := newHarness(t)
	a := h.srv.AddPipeline(7, "1-a", "running")
	b := h.srv.AddPipeline(7, "2-b", "running")
	chB, _ := h.start(context.Background(), b, Spec{})
	h.polls(1, 2)
	chA, _ := h.start(context.Background(), a, Spec{})
	// A's arrival wakes the poller, which waits MinGap, then polls: A (the
	// older) proceeds, B keeps waiting. Timers before the clock moves: both
	// jobs' timeouts, the first interval and the MinGap wait (with 3, the
	// clock could move before the poller had set its MinGap wait, which
	// then never fired: a flake seen on a loaded CI).
	if !h.clk.WaitPending(4, 10*time.Second) {
		t.Fatalf("timers pending: %d, want 4", h.clk.Pending())
	}
	h.clk.Advance(MinGap)
	if r := h.result(chA); r.err != nil || r.d.Verdict != Proceed {
		t.Fatalf("A: %+v", r)
	}
	// Timers: both jobs' timeouts, the first interval (not fired) and the
	// poller's new interval.
	h.polls(2, 4)
	select {
	case r := <-chB:
		t.Fatalf("B returned while A runs: %+v", r)
	default:
	}
	h.srv.SetPipelineStatus(a, "success")
	h.clk.Advance(5 * time.Second)
	if r := h.result(chB); r.err != nil || r.d.Verdict != Proceed {
		t.Fatalf("B: %+v", r)
	}
}

func TestNewestWinsSupersedes(t *testing.T) {
	h := newHarness(t)
	a := h.srv.AddPipeline(7, "1-a", "running")
	b := h.srv.AddPipeline(7, "2-b", "running")
	chA, _ := h.start(context.Background(), a, Spec{Order: NewestWins})
	r := h.result(chA)
	if r.err != nil || r.d.Verdict != Superseded || r.d.Message(mustRule(t, Spec{})) != "superseded by pipeline "+itoa(b) {
		t.Fatalf("%+v", r)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestNoWait(t *testing.T) {
	h := newHarness(t)
	old := h.srv.AddPipeline(7, "1-old", "running")
	own := h.srv.AddPipeline(7, "2-own", "running")
	ch, _ := h.start(context.Background(), own, Spec{NoWait: true})
	r := h.result(ch)
	if r.err != nil || r.d.Verdict != Conflict || len(r.d.Blocking) != 1 || r.d.Blocking[0].ID != old {
		t.Fatalf("%+v", r)
	}
}

func TestTimeout(t *testing.T) {
	h := newHarness(t)
	h.srv.AddPipeline(7, "1-old", "running")
	own := h.srv.AddPipeline(7, "2-own", "running")
	ch, _ := h.start(context.Background(), own, Spec{Timeout: 12 * time.Second})
	h.polls(1, 2)
	h.clk.Advance(5 * time.Second)
	h.polls(2, 2)
	h.clk.Advance(5 * time.Second)
	h.polls(3, 2)
	h.clk.Advance(2 * time.Second)
	r := h.result(ch)
	if !errors.Is(r.err, ErrTimeout) || r.err.Error() != "Timeout reached after 12 seconds, giving up ..." {
		t.Fatalf("%+v", r)
	}
}

func TestSinceCountsFromFirstStart(t *testing.T) {
	h := newHarness(t)
	h.srv.AddPipeline(7, "1-old", "running")
	own := h.srv.AddPipeline(7, "2-own", "running")
	r := mustRule(t, Spec{Timeout: 60 * time.Second})
	// A daemon restarted 61 s after the job began waiting: timed out.
	_, err := h.w.Wait(context.Background(), Request{APIURL: h.srv.URL + "/api/v4", Project: "7", Token: apiToken,
		PipelineID: own, Rule: r, Since: h.clk.Now().Add(-61 * time.Second)}, nil)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v", err)
	}
}

func TestAPIOutageBacksOff(t *testing.T) {
	h := newHarness(t)
	own := h.srv.AddPipeline(7, "2-own", "running")
	h.srv.Inject(`^GET /api/v4/projects/7/pipelines$`, 502, 6, nil)
	ch, events := h.start(context.Background(), own, Spec{})
	for i := 1; i <= 6; i++ {
		h.polls(i, 2)
		h.event() // seen before time moves on (a slow job sees only the latest)
		h.clk.Advance(h.clk.Next())
	}
	r := h.result(ch)
	if r.err != nil || r.d.Verdict != Proceed {
		t.Fatalf("%+v", r)
	}
	if len(h.w.Waiting()) != 0 {
		t.Fatal("still listed as waiting")
	}
	ev := events()
	if len(ev) != 6 {
		t.Fatalf("%d events, want 6 API errors", len(ev))
	}
	prev := time.Duration(0)
	for i, e := range ev {
		if e.Kind != EventAPIError || !strings.Contains(e.Err.Error(), "502") || e.RetryIn > 30*time.Second || e.RetryIn < time.Second {
			t.Fatalf("event %d: %+v", i, e)
		}
		prev = max(prev, e.RetryIn)
	}
	if prev < 15*time.Second {
		t.Fatalf("backoff did not grow: max %v", prev)
	}
}

func TestTokenRejected(t *testing.T) {
	for _, status := range []int{401, 403} {
		h := newHarness(t)
		own := h.srv.AddPipeline(7, "2-own", "running")
		h.srv.Inject(`^GET /api/v4/projects/7/pipelines$`, status, -1, nil)
		ch, _ := h.start(context.Background(), own, Spec{})
		r := h.result(ch)
		if !TokenRejected(r.err) || r.err.Error() != "guard token rejected by GitLab ("+itoa(int64(status))+")" {
			t.Fatalf("%d: %v", status, r.err)
		}
	}
}

func TestCancelledWhileWaiting(t *testing.T) {
	h := newHarness(t)
	h.srv.AddPipeline(7, "1-old", "running")
	own := h.srv.AddPipeline(7, "2-own", "running")
	ctx, cancel := context.WithCancel(context.Background())
	ch, _ := h.start(ctx, own, Spec{})
	h.polls(1, 2)
	cancel()
	if r := h.result(ch); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("%+v", r)
	}
	h.idle()
}

func TestEventLines(t *testing.T) {
	r := mustRule(t, Spec{})
	p := Pipeline{ID: 12, Status: "running", SHA: "abc123", Ref: "3-fix"}
	got := Event{Kind: EventPolled, Changed: true, Elapsed: 61 * time.Second, Decision: Decision{Blocking: []Pipeline{p}}}.Lines(r)
	want := []string{"pipeline guard: waiting for 1 other pipelines in (running) state (1m1s elapsed)", "  pipeline #12 running abc123 3-fix"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("%q", got)
	}
	got = Event{Kind: EventPolled, Elapsed: 2 * time.Minute, Decision: Decision{Blocking: []Pipeline{p}}}.Lines(r)
	if len(got) != 1 || got[0] != "pipeline guard: still waiting for 1 other pipelines (2m0s elapsed)" {
		t.Fatalf("%q", got)
	}
	got = Event{Kind: EventAPIError, RetryIn: 4200 * time.Millisecond, Err: errors.New("GitLab answered 502")}.Lines(r)
	if len(got) != 1 || got[0] != "pipeline guard: GitLab pipelines API error, retrying in 4s: GitLab answered 502" {
		t.Fatalf("%q", got)
	}
}

// A 429 with Retry-After (GitLab's rate limits): the next poll comes no
// sooner than asked, within the 30 s bound.
func TestRateLimitedWaitsRetryAfter(t *testing.T) {
	for _, c := range []struct {
		after string
		want  time.Duration
	}{{"20", 20 * time.Second}, {"600", 30 * time.Second}} {
		h := newHarness(t)
		own := h.srv.AddPipeline(7, "2-own", "running")
		h.srv.Inject(`^GET /api/v4/projects/7/pipelines$`, 429, 1, http.Header{"Retry-After": {c.after}})
		ch, _ := h.start(context.Background(), own, Spec{})
		h.polls(1, 2)
		if e := h.event(); e.Kind != EventAPIError || e.RetryIn != c.want || !strings.Contains(e.Err.Error(), "429") {
			t.Fatalf("Retry-After %s: %+v", c.after, e)
		}
		if next := h.clk.Next(); next != c.want {
			t.Fatalf("Retry-After %s: next poll in %v", c.after, next)
		}
		h.clk.Advance(c.want)
		if r := h.result(ch); r.err != nil || r.d.Verdict != Proceed {
			t.Fatalf("%+v", r)
		}
	}
}

// The pause between polls is gitlab-job-guard's random 3 to 15 s, and a
// Watcher without an Interval uses it.
func TestJitterInterval(t *testing.T) {
	lo, hi := time.Hour, time.Duration(0)
	for range 5000 {
		d := JitterInterval()
		if d < 3*time.Second || d > 15*time.Second {
			t.Fatalf("%v outside 3-15 s", d)
		}
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo > 4*time.Second || hi < 14*time.Second {
		t.Fatalf("5000 draws within %v-%v: not spread over 3-15 s", lo, hi)
	}
	seen := map[time.Duration]bool{}
	for range 3 {
		h := newHarness(t)
		h.w.Interval = nil
		h.srv.AddPipeline(7, "1-old", "running")
		own := h.srv.AddPipeline(7, "2-own", "running")
		ctx, cancel := context.WithCancel(context.Background())
		ch, _ := h.start(ctx, own, Spec{})
		h.polls(1, 2)
		next := h.clk.Next()
		if next < 3*time.Second || next > 15*time.Second {
			t.Fatalf("next poll in %v", next)
		}
		seen[next] = true
		cancel()
		h.result(ch)
	}
	if len(seen) < 2 {
		t.Fatalf("the same pause three times: %v", seen)
	}
}

// Jobs that start waiting while a conflict is known are answered from the
// project's last listing, without a request nor waking the poller: 50 jobs
// arriving one after the other cost no listing of their own; the next
// interval's one listing answers them all.
func TestJoiningJobsShareTheLastListing(t *testing.T) {
	h := newHarness(t)
	old := h.srv.AddPipeline(7, "1-old", "running")
	var chs []<-chan waitResult
	for i := range 50 {
		own := h.srv.AddPipeline(7, fmt.Sprintf("feature/%d", i), "running")
		ch, _ := h.start(context.Background(), own, Spec{})
		chs = append(chs, ch)
		if i == 0 {
			h.polls(1, 2)
		}
		e := h.event() // without the clock moving
		if e.Kind != EventPolled || !e.Changed || !slices.Equal(ids(e.Decision.Blocking), []int64{old}) {
			t.Fatalf("job %d: %+v", i, e)
		}
	}
	if n := h.srv.Count(listRoute); n != 1 {
		t.Fatalf("%d listings for 50 jobs joining a wait, want 1", n)
	}
	if len(h.w.Waiting()) != 50 {
		t.Fatalf("%d waiting", len(h.w.Waiting()))
	}
	// The jobs' timeouts and one poll interval: nothing else pending.
	if !h.clk.WaitPending(51, 10*time.Second) || h.clk.Pending() != 51 {
		t.Fatalf("timers pending: %d, want 51", h.clk.Pending())
	}
	h.srv.SetPipelineStatus(old, "success")
	h.clk.Advance(5 * time.Second)
	for i, ch := range chs {
		if r := h.result(ch); r.err != nil || r.d.Verdict != Proceed {
			t.Fatalf("job %d: %+v", i, r)
		}
	}
	if n := h.srv.Count(listRoute); n != 2 {
		t.Fatalf("%d listings, want 2", n)
	}
}

// A job the last listing would let go is not answered from it (that
// listing may be up to an interval old): it gets a fresh poll, MinGap after
// the last one, which sees the conflict that began since.
func TestJoiningJobFreeGetsAFreshPoll(t *testing.T) {
	h := newHarness(t)
	h.srv.AddPipeline(7, "1-old", "running")
	b := h.srv.AddPipeline(7, "3-b", "running")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h.start(ctx, b, Spec{})
	h.polls(1, 2)
	h.event()
	// After that listing: a pipeline conflicting with a's rule (same
	// query), older than a's.
	conflict := h.srv.AddPipeline(7, "2-new", "running")
	a := h.srv.AddPipeline(7, "feature/a", "running")
	chA, _ := h.start(ctx, a, Spec{RefRegex: "^2-"})
	if !h.clk.WaitPending(4, 10*time.Second) { // both timeouts, the interval, the MinGap wait
		t.Fatalf("timers pending: %d, want 4", h.clk.Pending())
	}
	select {
	case r := <-chA:
		t.Fatalf("a answered from the last listing: %+v", r)
	case e := <-h.events:
		t.Fatalf("an event from the last listing: %+v", e)
	default:
	}
	h.clk.Advance(MinGap)
	for {
		e := h.event()
		if e.Kind == EventPolled && slices.Equal(ids(e.Decision.Blocking), []int64{conflict}) {
			break // a's
		}
	}
	if n := h.srv.Count(listRoute); n != 2 {
		t.Fatalf("%d listings, want 2", n)
	}
}

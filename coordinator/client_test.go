package coordinator_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

const runnerToken = "glrt-testtoken0123456789"

func newClient(t *testing.T, gl *coordinatortest.Server) *coordinator.Client {
	t.Helper()
	c, err := coordinator.New(coordinator.Config{URL: gl.URL + "/", Token: runnerToken, SystemID: "r_abcdefabcdef",
		Info:  coordinator.Info{Name: "paas-runner", Executor: "docker", Features: map[string]bool{"cancel_gracefully": true}},
		Retry: coordinator.RetryPolicy{Min: time.Millisecond, Max: 10 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func TestRequestJob(t *testing.T) {
	gl := coordinatortest.New(t)
	gl.AddRunner(runnerToken)
	c := newClient(t, gl)
	j, err := c.RequestJob(ctx(t))
	if j != nil || err != nil {
		t.Fatalf("empty queue: %v %v", j, err)
	}
	queued := gl.Enqueue("", nil)
	j, err = c.RequestJob(ctx(t))
	if err != nil || j == nil || j.ID != queued.ID || j.Token != queued.Token {
		t.Fatalf("got %+v %v", j, err)
	}
	if !strings.Contains(string(j.Raw), `"git_info"`) {
		t.Error("raw payload incomplete")
	}
	if gl.Job(queued.ID).Status != "running" {
		t.Error("job not running after acquisition")
	}
	// no second hand-out
	if j, err := c.RequestJob(ctx(t)); j != nil || err != nil {
		t.Fatalf("second request: %v %v", j, err)
	}
}

func TestLastUpdateIsEchoed(t *testing.T) {
	gl := coordinatortest.New(t)
	gl.AddRunner(runnerToken)
	gl.LongPoll = 50 * time.Millisecond
	c := newClient(t, gl)
	c.RequestJob(ctx(t)) // learns last_update
	start := time.Now()
	c.RequestJob(ctx(t)) // same last_update: the server holds it (long poll)
	if time.Since(start) < 40*time.Millisecond {
		t.Error("last_update was not sent back")
	}
}

// A request Workhorse held and let go with a 204 of its own (no
// X-GitLab-Last-Update: the queue changed, or the hold ran out) says so
// (LongPollRelease), so that the daemon asks again at once, but never
// sooner than LongPollMinInterval after the previous request started (a
// 50 ns hold lets every request go at once); a 204 from Rails (with the
// header) is an ordinary one.
func TestLongPollRelease(t *testing.T) {
	longPolling := func(t *testing.T, hold, minInterval time.Duration) (*coordinatortest.Server, *coordinator.Client) {
		gl := coordinatortest.New(t)
		gl.AddRunner(runnerToken)
		gl.LongPoll = hold
		c, err := coordinator.New(coordinator.Config{URL: gl.URL + "/", Token: runnerToken, LongPollMinInterval: minInterval,
			Info: coordinator.Info{Name: "paas-runner", Executor: "docker"}})
		if err != nil {
			t.Fatal(err)
		}
		j, err := c.RequestJob(ctx(t)) // learns last_update
		if _, released := c.LongPollRelease(); j != nil || err != nil || released {
			t.Fatalf("first request (Rails' 204): %v %v, released %v", j, err, released)
		}
		return gl, c
	}
	t.Run("job queued while held", func(t *testing.T) {
		gl, c := longPolling(t, time.Hour, time.Nanosecond)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if j, err := c.RequestJob(ctx(t)); j != nil || err != nil {
				t.Errorf("held request: %v %v", j, err)
			}
		}()
		gl.WaitFor(time.Minute, "the request held", func(s *coordinatortest.Server) bool { return s.Holding() == 1 })
		q := gl.Enqueue(runnerToken, nil)
		<-done
		if wait, ok := c.LongPollRelease(); !ok || wait != 0 {
			t.Fatalf("a long poll let go: released %v, wait %v", ok, wait)
		}
		if j, err := c.RequestJob(ctx(t)); err != nil || j == nil || j.ID != q.ID {
			t.Fatalf("asked again: %v %v, want job %d", j, err, q.ID)
		}
		if _, ok := c.LongPollRelease(); ok {
			t.Error("a 201 reported as a long poll let go")
		}
	})
	t.Run("hold ran out", func(t *testing.T) {
		_, c := longPolling(t, 20*time.Millisecond, time.Nanosecond)
		j, err := c.RequestJob(ctx(t))
		if _, ok := c.LongPollRelease(); j != nil || err != nil || !ok {
			t.Fatalf("%v %v, released %v", j, err, ok)
		}
	})
	t.Run("let go at once: not sooner than a second after", func(t *testing.T) {
		_, c := longPolling(t, time.Nanosecond, 0)
		start := time.Now()
		j, err := c.RequestJob(ctx(t))
		wait, ok := c.LongPollRelease()
		if j != nil || err != nil || !ok {
			t.Fatalf("%v %v, released %v", j, err, ok)
		}
		if next := time.Since(start) + wait; next < coordinator.DefaultLongPollMinInterval-10*time.Millisecond {
			t.Errorf("next request %v after the last one started, want %v", next, coordinator.DefaultLongPollMinInterval)
		}
	})
}

func TestRequestJobErrors(t *testing.T) {
	gl := coordinatortest.New(t)
	gl.AddRunner(runnerToken)
	c := newClient(t, gl)
	for _, status := range []int{403, 409, 422, 400} {
		gl.Inject("jobs/request", status, 1, nil)
		_, err := c.RequestJob(ctx(t))
		if coordinator.StatusOf(err) != status {
			t.Errorf("%d: got %v", status, err)
		}
	}
	// 502 and 429 are retried transparently
	gl.Inject("jobs/request", 502, 2, nil)
	gl.Inject("jobs/request", 429, 1, http.Header{"Retry-After": {"0"}})
	queued := gl.Enqueue("", nil)
	j, err := c.RequestJob(ctx(t))
	if err != nil || j == nil || j.ID != queued.ID {
		t.Fatalf("after retries: %v %v", j, err)
	}
	if n := gl.Count("POST /api/v4/jobs/request"); n < 4+4 {
		t.Errorf("requests: %d", n)
	}
	// but not forever: 5 attempts then the error
	gl.Inject("jobs/request", 503, -1, nil)
	_, err = c.RequestJob(ctx(t))
	if coordinator.StatusOf(err) != 503 || !coordinator.IsTransient(err) {
		t.Fatalf("persistent 503: %v", err)
	}
	gl.ClearInjections()
	// unknown token
	bad, _ := coordinator.New(coordinator.Config{URL: gl.URL, Token: "nope"})
	_, err = bad.RequestJob(ctx(t))
	var ae *coordinator.APIError
	if !errors.As(err, &ae) || ae.Status != 403 || ae.Message != "403 Forbidden" {
		t.Fatalf("bad token: %v", err)
	}
	if !strings.Contains(err.Error(), "POST /api/v4/jobs/request: 403") {
		t.Errorf("message: %v", err)
	}
}

func TestTransportErrorAndCancel(t *testing.T) {
	gl := coordinatortest.New(t)
	url := gl.URL
	gl.Close()
	c, _ := coordinator.New(coordinator.Config{URL: url, Token: runnerToken})
	_, err := c.RequestJob(ctx(t))
	if err == nil || !coordinator.IsTransient(err) {
		t.Fatalf("transport error: %v", err)
	}
	cctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.RequestJob(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}

func TestJobStatusAndFail(t *testing.T) {
	gl := coordinatortest.New(t)
	gl.AddRunner(runnerToken)
	c := newClient(t, gl)
	q := gl.Enqueue("", nil)
	j, _ := c.RequestJob(ctx(t))
	st, err := c.JobStatus(ctx(t), j.Token)
	if st != "running" || err != nil {
		t.Fatalf("status %q %v", st, err)
	}
	gl.Cancel(q.ID) // runner advertised cancel_gracefully
	if st, _ := c.JobStatus(ctx(t), j.Token); st != "canceling" {
		t.Fatalf("after cancel: %q", st)
	}
	gl.Inject(`PUT /api/v4/jobs/\d+$`, 502, 6, nil) // more than one retry round
	if err := c.FailJob(ctx(t), j.ID, j.Token, "runner_system_failure"); err != nil {
		t.Fatal(err)
	}
	got := gl.Job(q.ID)
	if got.Status != "canceled" || got.FailureReason != "runner_system_failure" {
		t.Fatalf("job %+v", got)
	}
	if _, err := c.JobStatus(ctx(t), j.Token); !errors.Is(err, coordinator.ErrJobNotRunning) {
		t.Fatalf("finished job: %v", err)
	}
	// failing a final job is a no-op success (403 not running)
	if err := c.FailJob(ctx(t), j.ID, j.Token, "runner_system_failure"); err != nil {
		t.Fatal(err)
	}
}

func TestFailJobGivesUpWithContext(t *testing.T) {
	gl := coordinatortest.New(t)
	gl.AddRunner(runnerToken)
	c := newClient(t, gl)
	gl.Enqueue("", nil)
	j, _ := c.RequestJob(ctx(t))
	gl.Inject(`PUT`, 500, -1, nil)
	cctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := c.FailJob(cctx, j.ID, j.Token, "runner_system_failure")
	if err == nil || !strings.Contains(err.Error(), "500") {
		t.Fatalf("got %v", err)
	}
}

func TestAppendTrace(t *testing.T) {
	gl := coordinatortest.New(t)
	gl.AddRunner(runnerToken)
	c := newClient(t, gl)
	q := gl.Enqueue("", nil)
	j, _ := c.RequestJob(ctx(t))
	res, err := c.AppendTrace(ctx(t), j.ID, j.Token, 0, []byte("hello\n"))
	if err != nil || res.Offset != 6 || res.JobStatus != "running" || res.UpdateInterval != 3*time.Second {
		t.Fatalf("%+v %v", res, err)
	}
	// someone else (the inner runner) wrote meanwhile: 416, resume at GitLab's end
	gl.AppendTrace(q.ID, "inner\n")
	res, err = c.AppendTrace(ctx(t), j.ID, j.Token, 6, []byte("daemon\n"))
	if err != nil || res.Offset != 19 {
		t.Fatalf("%+v %v", res, err)
	}
	if tr := string(gl.Job(q.ID).Trace); tr != "hello\ninner\ndaemon\n" {
		t.Fatalf("trace %q", tr)
	}
	gl.Finish(q.ID, "success")
	_, err = c.AppendTrace(ctx(t), j.ID, j.Token, 19, []byte("late"))
	if !errors.Is(err, coordinator.ErrJobNotRunning) || coordinator.StatusOf(err) != 403 {
		t.Fatalf("after end: %v", err)
	}
}

func TestBaseURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://g.example":         "https://g.example/api/v4/",
		"https://g.example/":        "https://g.example/api/v4/",
		"https://g.example/ci":      "https://g.example/api/v4/",
		"http://g.example/gitlab/":  "http://g.example/gitlab/api/v4/",
		"https://g.example/x?y=1#z": "https://g.example/x/api/v4/",
	} {
		u, err := coordinator.BaseURL(in)
		if err != nil || u.String() != want {
			t.Errorf("%s: %v %v", in, u, err)
		}
	}
	for _, bad := range []string{"ftp://x", "g.example", "https://"} {
		if _, err := coordinator.BaseURL(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestBackoffBounds(t *testing.T) {
	p := coordinator.RetryPolicy{Min: 100 * time.Millisecond, Max: time.Second}
	for i := 0; i < 20; i++ {
		d := p.Backoff(i)
		if d < 50*time.Millisecond || d > time.Second {
			t.Fatalf("attempt %d: %v", i, d)
		}
	}
}

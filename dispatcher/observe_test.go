package dispatcher_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/dispatcher"
	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/state"
)

type recorder struct {
	mu     sync.Mutex
	events []string
	added  chan struct{}
}

func (r *recorder) add(format string, args ...any) {
	r.mu.Lock()
	r.events = append(r.events, fmt.Sprintf(format, args...))
	r.mu.Unlock()
	select {
	case r.added <- struct{}{}:
	default:
	}
}

func (r *recorder) has(e string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.events, e)
}

func (r *recorder) waitFor(t *testing.T, e string) {
	t.Helper()
	timeout := time.After(wait)
	for !r.has(e) {
		select {
		case <-r.added:
		case <-time.After(10 * time.Millisecond): // an event between has() and the select
		case <-timeout:
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("no %q event; got %q", e, r.events)
		}
	}
}

func (r *recorder) Started()  { r.add("started") }
func (r *recorder) Draining() { r.add("draining") }
func (r *recorder) Polled(ru *dispatcher.Runner, a string) {
	if a != "no_job" {
		r.add("polled %s", a)
	}
}
func (r *recorder) RunnerPaused(ru *dispatcher.Runner, _ time.Time) { r.add("paused %s", ru.Name) }
func (r *recorder) Provisioned(ru *dispatcher.Runner, took time.Duration) {
	if took > 0 {
		r.add("provisioned %s", ru.ExecutorName)
	}
}
func (r *recorder) LaunchFailed(ru *dispatcher.Runner, reason string) {
	r.add("launch failed %s", reason)
}
func (r *recorder) JobEnded(_ *dispatcher.Runner, k state.Key)    { r.add("ended %d", k.ID) }
func (r *recorder) HostRemoved(_ *dispatcher.Runner, k state.Key) { r.add("removed %d", k.ID) }

func TestObserverSeesTheLifecycle(t *testing.T) {
	h := newHarness(t, 1)
	rec := &recorder{added: make(chan struct{}, 1)}
	h.cfg.Observer = rec
	failing := h.gl.Enqueue("", nil)
	h.fake.OnProvision = func(ctx context.Context, j executors.Job) error {
		if j.ID == failing.ID {
			return &executors.Error{Op: "provision", Permanent: true, FailureReason: "environment_creation_failure", Err: errors.New("no")}
		}
		return nil
	}
	h.start()
	rec.waitFor(t, "started")
	rec.waitFor(t, "launch failed environment_creation_failure")
	ok := h.gl.Enqueue("", nil)
	rec.waitFor(t, "provisioned fake")
	var jobs []dispatcher.JobView
	for deadline := time.Now().Add(wait); ; {
		jobs = h.d.Jobs()
		if len(jobs) == 1 && jobs[0].Phase == state.Launched || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond) // launching runs in the dispatcher's goroutine; Jobs() is a snapshot
	}
	if len(jobs) != 1 || jobs[0].JobID != ok.ID || jobs[0].Phase != state.Launched || jobs[0].Host != h.hostName(h.tokens[0], ok.ID) || jobs[0].RunnerName != "runner-0" {
		t.Fatalf("Jobs() = %+v", jobs)
	}
	h.gl.Finish(ok.ID, "success")
	rec.waitFor(t, fmt.Sprintf("ended %d", ok.ID))
	rec.waitFor(t, fmt.Sprintf("removed %d", ok.ID))
	if !rec.has("polled job") {
		t.Fatal("no acquisition seen")
	}
	h.gl.RemoveRunner(h.tokens[0]) // 403s: paused after 3
	rec.waitFor(t, "paused runner-0")
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	if !rec.has("draining") || !rec.has("polled forbidden") {
		t.Fatalf("events %q", rec.events)
	}
}

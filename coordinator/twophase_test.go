package coordinator_test

import (
	"errors"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/job"
)

func newTwoPhaseClient(t *testing.T, gl *coordinatortest.Server) *coordinator.Client {
	t.Helper()
	c, err := coordinator.New(coordinator.Config{URL: gl.URL, Token: runnerToken, SystemID: "r_abcdefabcdef",
		Info:  coordinator.Info{Name: "paas-runner", Features: map[string]bool{"two_phase_job_commit": true, "cancel_gracefully": true}},
		Retry: coordinator.RetryPolicy{Min: time.Millisecond, Max: 10 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// With two-phase commit a job stays pending until PUT state=running; the
// confirmation is then a keep-alive, safe to repeat.
func TestConfirmJob(t *testing.T) {
	gl := coordinatortest.New(t)
	gl.AddRunner(runnerToken)
	c := newTwoPhaseClient(t, gl)
	q := gl.Enqueue("", nil)
	a, err := c.RequestJob(ctx(t))
	if err != nil || a == nil {
		t.Fatal(a, err)
	}
	if got := gl.Job(q.ID); got.Status != "pending" || !got.WaitingAck {
		t.Fatalf("after 201: %s waiting=%v", got.Status, got.WaitingAck)
	}
	// a final state before the confirmation is refused (400)
	if _, err := c.UpdateJob(ctx(t), a.ID, a.Token, coordinator.Update{State: "success"}); coordinator.StatusOf(err) != 400 {
		t.Fatalf("success while waiting for ack: %v", err)
	}
	// keep-alive
	if res, err := c.UpdateJob(ctx(t), a.ID, a.Token, coordinator.Update{State: "pending"}); err != nil || !res.Accepted {
		t.Fatalf("keep-alive: %+v %v", res, err)
	}
	for i := 0; i < 2; i++ {
		st, err := c.ConfirmJob(ctx(t), a.ID, a.Token)
		if err != nil || st != job.StatusRunning {
			t.Fatalf("confirm %d: %q %v", i, st, err)
		}
	}
	if got := gl.Job(q.ID); got.Status != "running" || got.WaitingAck {
		t.Fatalf("after confirmation: %s waiting=%v", got.Status, got.WaitingAck)
	}
	// outside two-phase commit, state=pending is a bad request
	if _, err := c.UpdateJob(ctx(t), a.ID, a.Token, coordinator.Update{State: "pending"}); coordinator.StatusOf(err) != 400 {
		t.Fatalf("pending on a running job: %v", err)
	}
	gl.Cancel(q.ID)
	if st, err := c.ConfirmJob(ctx(t), a.ID, a.Token); err != nil || st != job.StatusCanceling {
		t.Fatalf("confirm of a canceling job: %q %v", st, err)
	}
	gl.Finish(q.ID, "failed")
	if _, err := c.ConfirmJob(ctx(t), a.ID, a.Token); !errors.Is(err, coordinator.ErrJobNotRunning) {
		t.Fatalf("confirm of an ended job: %v", err)
	}
}

// A job never confirmed is dropped after the ack timeout with
// runner_provisioning_timeout, and a retry is queued: nothing is lost.
func TestUnconfirmedJobIsRetried(t *testing.T) {
	gl := coordinatortest.New(t)
	gl.AckTimeout = 50 * time.Millisecond
	gl.AddRunner(runnerToken)
	c := newTwoPhaseClient(t, gl)
	q := gl.Enqueue("", map[string]any{"job_info": map[string]any{"name": "build", "project_id": 7}})
	a, err := c.RequestJob(ctx(t))
	if err != nil || a == nil {
		t.Fatal(a, err)
	}
	gl.WaitFor(10*time.Second, "ack timeout", func(s *coordinatortest.Server) bool { return s.StatusOf(q.ID) == "failed" })
	got := gl.Job(q.ID)
	if got.FailureReason != "runner_provisioning_timeout" || got.RetriedAs == 0 {
		t.Fatalf("dropped job: %+v", got)
	}
	if _, err := c.ConfirmJob(ctx(t), a.ID, a.Token); !errors.Is(err, coordinator.ErrJobNotRunning) {
		t.Fatalf("late confirmation: %v", err)
	}
	r, err := c.RequestJob(ctx(t))
	if err != nil || r == nil || r.ID != got.RetriedAs || r.Token == a.Token {
		t.Fatalf("retry: %+v %v", r, err)
	}
	if r.Payload.JobInfo.Name != "build" || r.Payload.JobInfo.ID != r.ID || r.Payload.Variables.Get("CI_JOB_TOKEN") != r.Token {
		t.Fatalf("retry payload: %+v", r.Payload.JobInfo)
	}
	// a keep-alive holds the job
	gl.AckTimeout = time.Second
	q2 := gl.Enqueue("", nil)
	a2, _ := c.RequestJob(ctx(t))
	if a2 == nil || a2.ID != q2.ID {
		t.Fatal("second job not handed out")
	}
	for i := 0; i < 4; i++ {
		time.Sleep(300 * time.Millisecond) // lets the fake's ack clock run past AckTimeout; not synchronisation
		if _, err := c.UpdateJob(ctx(t), a2.ID, a2.Token, coordinator.Update{State: "pending"}); err != nil {
			t.Fatalf("keep-alive %d: %v", i, err)
		}
	}
	if st, err := c.ConfirmJob(ctx(t), a2.ID, a2.Token); err != nil || st != "running" {
		t.Fatalf("confirm after keep-alives: %q %v", st, err)
	}
}

// A 201 payload that cannot be used still yields the job's id and token,
// so that the job can be failed in GitLab.
func TestPayloadErrorCarriesIDAndToken(t *testing.T) {
	gl := coordinatortest.New(t)
	gl.AddRunner(runnerToken)
	c := newClient(t, gl)
	q := gl.Enqueue("", map[string]any{"steps": "not a list"})
	a, err := c.RequestJob(ctx(t))
	var pe *coordinator.PayloadError
	if a != nil || !errors.As(err, &pe) || pe.JobID != q.ID || pe.Token != q.Token {
		t.Fatalf("got %v %v", a, err)
	}
}

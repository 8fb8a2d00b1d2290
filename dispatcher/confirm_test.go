package dispatcher_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/dispatcher"
	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/executortest"
)

// planFails is the fake executor whose Plan fails for good: the job fails
// before it was confirmed to GitLab.
type planFails struct{ *executortest.Fake }

func (planFails) Plan(context.Context, executors.Job) (executors.Handle, error) {
	return nil, &executors.Error{Op: "plan", Permanent: true, FailureReason: "script_failure", Err: errors.New("no such flavor")}
}

// GitLab takes a log line or a final state only from a confirmed job
// (two-phase commit): a job that fails before its confirmation is
// confirmed, then told why and failed, not left pending until GitLab gives
// it up and hands it out again.
func TestJobFailedBeforeConfirmationIsConfirmedFirst(t *testing.T) {
	h := newHarness(t, 1)
	h.wrapRunner = func(_ int, r *dispatcher.Runner) { r.Executor = planFails{h.fake} }
	q := h.gl.Enqueue("", nil)
	h.start()
	h.gl.WaitFor(wait, "the job failed", func(s *coordinatortest.Server) bool { return s.StatusOf(q.ID) == "failed" })
	got := h.gl.Job(q.ID)
	if got.FailureReason != "script_failure" || !strings.Contains(string(got.Trace), "no such flavor") || got.RetriedAs != 0 {
		t.Fatalf("job: %s %q retried as %d\n%s", got.Status, got.FailureReason, got.RetriedAs, got.Trace)
	}
	if n := len(got.Updates); n < 2 || got.Updates[0]["state"] != "running" || got.Updates[n-1]["state"] != "failed" {
		t.Fatalf("updates: %v", got.Updates)
	}
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
}

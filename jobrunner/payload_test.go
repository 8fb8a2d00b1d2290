package jobrunner

import (
	"strings"
	"testing"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

// A job written with run: (CI/CD steps) comes with no script step: run as
// it is, it would pass having done nothing.
func TestRunStepsJobFails(t *testing.T) {
	j, f := runFake(t, jobSpec{script: []string{"echo never"}, setup: func(_ *coordinatortest.Server, q *coordinatortest.Job) {
		delete(q.Payload, "steps")
		q.Payload["run"] = `[{"name":"hello","script":"echo hello"}]`
	}})
	if j.Status != "failed" || j.FailureReason != "runner_unsupported" || !strings.Contains(string(j.Trace), "run: keyword") {
		t.Fatalf("%s %s\n%s", j.Status, j.FailureReason, j.Trace)
	}
	if n := len(f.created()); n != 0 {
		t.Fatalf("%d containers created", n)
	}
}

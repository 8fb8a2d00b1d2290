package dispatcher_test

import (
	"fmt"
	"testing"
)

// GUARD_CANCEL_OLDER (with newest_wins) in the daemon: a read_api token is
// refused, and the job fails saying the api scope is needed, without a
// host and without touching the older pipeline; with an api token (here
// the runner's guard_api_token) the older pipeline is canceled and the job
// goes on.
func TestPipelineGuardCancelOlder(t *testing.T) {
	h := newPipeHarness(t, false)
	h.start()
	old := h.gl.AddPipeline(guardProj, "main", "running")
	own := h.gl.AddPipeline(guardProj, "main", "running")
	a := h.guardedJob(own, "GUARD_ORDER", "newest_wins", "GUARD_CANCEL_OLDER", "true")
	h.failedWith(a.ID, fmt.Sprintf("cannot cancel older pipeline %d: GUARD_CANCEL_OLDER needs a guard token with the api scope", old), "script_failure")
	h.noHost(a.ID)
	if st := h.gl.PipelineOf(old).Status; st != "running" {
		t.Fatalf("older pipeline %s after a refused cancel", st)
	}
	b := h.guardedJob(own, "GUARD_ORDER", "newest_wins", "GUARD_CANCEL_OLDER", "true", "GUARD_PRIVATE_TOKEN", "")
	h.launched(b.ID)
	if st := h.gl.PipelineOf(old).Status; st != "canceled" {
		t.Fatalf("older pipeline %s", st)
	}
	h.waitTrace(b.ID, fmt.Sprintf("paas-runner: pipeline guard: cancelled older pipeline #%d canceled %s main\n", old, h.gl.PipelineOf(old).SHA))
}

package jobrunner

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

// GitLab stored a chunk but its 202 was lost (a proxy answered 502): the
// retry gets a 416 saying GitLab has it, and it is not written twice.
func TestTraceLostAnswerNotWrittenTwice(t *testing.T) {
	tr, gl, id := traceFor(t, nil, 0)
	ctx := context.Background()
	tr.Write([]byte("first chunk\n"))
	gl.LoseTraceAnswers(1)
	if err := tr.flush(ctx); err != nil {
		t.Fatal(err)
	}
	tr.Write([]byte("second\n"))
	size, sum, err := tr.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := "daemon\nfirst chunk\nsecond\n"
	if log := string(gl.Job(id).Trace); log != want {
		t.Fatalf("log %q, want %q", log, want)
	}
	if size != int64(len(want)) || sum != coordinator.Checksum([]byte(want)) {
		t.Fatalf("size %d sum %s", size, sum)
	}
}

// GitLab lost the end of what it had acknowledged: the 416 says where it
// is, and the trace resends from there out of its own buffer.
func TestTraceResendsWhatGitLabLost(t *testing.T) {
	tr, gl, id := traceFor(t, nil, 0)
	ctx := context.Background()
	tr.Write([]byte("one\n"))
	if err := tr.flush(ctx); err != nil {
		t.Fatal(err)
	}
	tr.Write([]byte("two\n"))
	if err := tr.flush(ctx); err != nil {
		t.Fatal(err)
	}
	gl.TruncateTrace(id, len("daemon\none\n"))
	tr.Write([]byte("three\n"))
	size, sum, err := tr.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := "daemon\none\ntwo\nthree\n"
	if log := string(gl.Job(id).Trace); log != want {
		t.Fatalf("log %q, want %q", log, want)
	}
	if size != int64(len(want)) || sum != coordinator.Checksum([]byte(want)) {
		t.Fatalf("size %d sum %s, want %d %s", size, sum, len(want), coordinator.Checksum([]byte(want)))
	}
}

// Over GitLab's trace size limit the PATCH gets 403 without Job-Status
// and GitLab drops the job: the inner runner stops it at once, like
// gitlab-runner, instead of running it to its end with no log.
func TestTraceRefusedStopsJob(t *testing.T) {
	start := time.Now()
	j := runJob(t, jobSpec{
		script: []string{"i=0; while [ $i -lt 300 ]; do echo line-$i-0123456789012345678901234567890123456789; i=$((i+1)); done", "sleep 150", "echo never"},
		after:  []string{"echo after"},
		setup:  func(gl *coordinatortest.Server, q *coordinatortest.Job) { gl.TraceLimit = 4000 },
	})
	if j.Status != "failed" || j.FailureReason != "trace_size_exceeded" {
		t.Fatalf("%s %s", j.Status, j.FailureReason)
	}
	if el := time.Since(start); el > 100*time.Second {
		t.Fatalf("the job ran on for %v after GitLab refused its log", el)
	}
}

// A 403 without Job-Status on the log (a token GitLab refuses, say) stops
// the job at once, though nothing else told it to stop.
func TestTrace403WithoutStatusStopsJob(t *testing.T) {
	start := time.Now()
	j := runJob(t, jobSpec{
		// the job keeps logging, and nothing but the 403 tells it to stop
		script: []string{"echo started", "i=0; while [ $i -lt 150 ]; do echo tick; sleep 1; i=$((i+1)); done", "echo never"},
		during: func(gl *coordinatortest.Server, id int64) {
			gl.WaitFor(time.Minute, "the script to start", func(s *coordinatortest.Server) bool { return s.TraceContains(id, "started\n") })
			gl.Inject(`^PATCH /api/v4/jobs/\d+/trace$`, http.StatusForbidden, -1, nil)
		},
	})
	if el := time.Since(start); el > 100*time.Second {
		t.Fatalf("the job ran on for %v after GitLab refused its log", el)
	}
	if strings.Contains(string(j.Trace), "Job succeeded") {
		t.Fatalf("log:\n%s", j.Trace)
	}
}

// A final update answered 202 (GitLab still persisting the log's chunks)
// is repeated after the interval GitLab gives, until it is applied.
func TestFinalUpdateRepeatedOn202(t *testing.T) {
	j := runJob(t, jobSpec{
		script: []string{"echo done"},
		setup:  func(gl *coordinatortest.Server, q *coordinatortest.Job) { gl.FinalUpdatePending = 2 },
	})
	if j.Status != "success" || len(j.FinalWaits) != 2 {
		t.Fatalf("%s, %d waits\n%s", j.Status, len(j.FinalWaits), j.Trace)
	}
	// GitLab asked for 1 s, then 2 s
	if d := j.FinalWaits[1].Sub(j.FinalWaits[0]); d < time.Second {
		t.Errorf("repeated after %v, GitLab asked for 1 s", d)
	}
	if d := j.FinishedAt.Sub(j.FinalWaits[1]); d < 2*time.Second {
		t.Errorf("repeated after %v, GitLab asked for 2 s", d)
	}
	var finals int
	for _, u := range j.Updates {
		if u["state"] == "success" {
			finals++
		}
	}
	if finals != 3 {
		t.Errorf("%d final updates, want 3", finals)
	}
}

// 404 on updates: the job is gone from GitLab; the inner runner stops and
// does not retry its final update.
func TestJobGone404(t *testing.T) {
	var gl *coordinatortest.Server
	j := runJob(t, jobSpec{
		script: []string{"echo started", "sleep 150"},
		during: func(s *coordinatortest.Server, id int64) {
			gl = s
			s.WaitFor(time.Minute, "the script to start", func(s *coordinatortest.Server) bool { return s.TraceContains(id, "started\n") })
			s.Inject(`^PUT /api/v4/jobs/\d+$`, http.StatusNotFound, -1, nil)
			s.Inject(`^PATCH /api/v4/jobs/\d+/trace$`, http.StatusNotFound, -1, nil)
		},
	})
	puts := gl.Count(fmt.Sprintf("PUT /api/v4/jobs/%d", j.ID))
	if puts > 4 {
		t.Errorf("%d PUTs to a job that is gone", puts)
	}
	if strings.Contains(string(j.Trace), "Job succeeded") {
		t.Errorf("log:\n%s", j.Trace)
	}
}

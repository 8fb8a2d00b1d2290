package jobrunner

import (
	"context"
	"fmt"
	"hash/crc32"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

// A line written after a quiet spell goes out without waiting for the
// interval (an hour here): the job's first lines, a script's first line.
// The daemon's lead goes first, in the same update.
func TestTraceFirstLinesAtOnce(t *testing.T) {
	tr, gl, id := traceFor(t, []string{"s3cr3t-value"}, 0)
	tr.Lead([]byte("paas-runner: host ready\n"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tr.Run(ctx); close(done) }()
	tr.Write([]byte("Running with paas-runner\n"))
	gl.WaitFor(time.Minute, "the first line", func(s *coordinatortest.Server) bool {
		return s.TraceOf(id) == "daemon\npaas-runner: host ready\nRunning with paas-runner\n"
	})
	tr.Write([]byte("$ echo s3cr3t-value\n"))
	gl.WaitFor(time.Minute, "the script's first line", func(s *coordinatortest.Server) bool { return s.TraceContains(id, "$ echo [MASKED]\n") })
	cancel()
	<-done
	size, sum, err := tr.Close(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	log := gl.TraceOf(id)
	if size != int64(len(log)) || sum != coordinator.Checksum32(crc32.ChecksumIEEE([]byte(log))) {
		t.Fatalf("size %d checksum %s for log %q", size, sum, log)
	}
}

// However the output comes, the log costs at most traceBurst PATCHes
// plus one per interval.
func TestTraceRateBound(t *testing.T) {
	tr, gl, id := traceFor(t, nil, 0)
	gl.TraceUpdate = 0 // GitLab says no interval: the trace keeps its own
	iv := 200 * time.Millisecond
	tr.interval = iv
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tr.Run(ctx); close(done) }()
	start := time.Now()
	const lines = 10
	for i := 0; i < lines; i++ {
		line := fmt.Sprintf("line %d\n", i)
		tr.Write([]byte(line))
		gl.WaitFor(time.Minute, line, func(s *coordinatortest.Server) bool { return s.TraceContains(id, line) })
	}
	elapsed := time.Since(start)
	cancel()
	<-done
	n := gl.Count(fmt.Sprintf("PATCH /api/v4/jobs/%d/trace", id))
	if bound := traceBurst + int(elapsed/iv) + 1; n > bound || n < traceBurst {
		t.Fatalf("%d PATCHes for %d lines in %v (interval %v): want %d to %d", n, lines, elapsed, iv, traceBurst, bound)
	}
}

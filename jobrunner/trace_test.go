package jobrunner

import (
	"context"
	"fmt"
	"hash/crc32"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

func traceFor(t testing.TB, secrets []string, limit int64) (*Trace, *coordinatortest.Server, int64) {
	gl := coordinatortest.New(t)
	gl.AddRunner("glrt-trace-0123456789")
	q := gl.Enqueue("", nil)
	c, _ := coordinator.New(coordinator.Config{URL: gl.URL, Token: "glrt-trace-0123456789"})
	if a, err := c.RequestJob(context.Background()); err != nil || a == nil {
		t.Fatal(err)
	}
	gl.AppendTrace(q.ID, "daemon\n")
	crc := crc32.ChecksumIEEE([]byte("daemon\n"))
	return NewTrace(c, q.ID, q.Token, 7, &crc, secrets, nil, limit, time.Hour, nil), gl, q.ID
}

func TestMaskingAcrossWritesAndPatches(t *testing.T) {
	tr, gl, id := traceFor(t, []string{"s3cr3t-value"}, 0)
	ctx := context.Background()
	// split across writes, with a flush (a PATCH) in between
	tr.Write([]byte("a s3cr3t-"))
	tr.flush(ctx)
	tr.Write([]byte("value b s3cr3t-value c s3c"))
	tr.flush(ctx)
	tr.Write([]byte("r3t-value\n"))
	size, sum, err := tr.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	log := string(gl.Job(id).Trace)
	want := "daemon\na [MASKED] b [MASKED] c [MASKED]\n"
	if log != want {
		t.Fatalf("log %q, want %q", log, want)
	}
	if size != int64(len(want)) || sum != coordinator.Checksum([]byte(want)) {
		t.Fatalf("size %d sum %s", size, sum)
	}
	if gl.Count("PATCH /api/v4/jobs/"+itoa(id)+"/trace") < 2 {
		t.Fatal("the log was not sent in several PATCHes")
	}
}

func TestResumeAfter416(t *testing.T) {
	tr, gl, id := traceFor(t, nil, 0)
	ctx := context.Background()
	gl.AppendTrace(id, "someone else\n") // GitLab's log is longer than we think
	tr.Write([]byte("ours\n"))
	size, sum, err := tr.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if log := string(gl.Job(id).Trace); log != "daemon\nsomeone else\nours\n" {
		t.Fatalf("log %q", log)
	}
	if size != int64(len("daemon\nsomeone else\nours\n")) || sum != "" {
		t.Fatalf("size %d sum %q (unknown content: no checksum)", size, sum)
	}
}

func TestOutputLimit(t *testing.T) {
	tr, gl, id := traceFor(t, nil, 100)
	tr.Write([]byte(strings.Repeat("x", 50)))
	tr.Write([]byte(strings.Repeat("y", 80)))
	tr.Write([]byte("zzz\n")) // past the limit: dropped
	tr.Close(context.Background())
	log := string(gl.Job(id).Trace)
	// the daemon's 7 bytes, the 50 x, then the 43 y that fit below 100
	want := "daemon\n" + strings.Repeat("x", 50) + strings.Repeat("y", 43) + "\n"
	if !strings.HasPrefix(log, want) || strings.Contains(log, strings.Repeat("y", 44)) || strings.Contains(log, "zzz") ||
		!strings.Contains(log, "exceeded limit of 100 bytes") {
		t.Fatalf("log %q", log)
	}
}

// 50 MB through the trace with flat memory: writers wait for the sender.
func TestLargeOutputBoundedMemory(t *testing.T) {
	tr, gl, _ := traceFor(t, []string{"never-there"}, 100<<20)
	gl.TraceSizeOnly = true
	runtime.GC()
	ctx, cancel := context.WithCancel(context.Background())
	tr.interval = time.Millisecond
	done := make(chan struct{})
	go func() { tr.Run(ctx); close(done) }()
	peakHeap := sampleHeap()
	line := []byte(strings.Repeat("0123456789", 10) + "\n") // 101 bytes
	const total = 50 << 20
	for n := 0; n < total; n += len(line) {
		tr.Write(line)
	}
	cancel()
	<-done
	size, _, err := tr.Close(context.Background())
	peak := peakHeap()
	if err != nil {
		t.Fatal(err)
	}
	if size < total {
		t.Fatalf("sent %d bytes", size)
	}
	// The trace buffers at most ~1 MB; allow for the HTTP stack and GC lag.
	if peak > 32<<20 {
		t.Fatalf("heap peaked at %d MB while streaming a 50 MB log", peak>>20)
	}
	t.Logf("heap peak %d MB for 50 MB of output", peak>>20)
}

// BenchmarkTrace50MB streams 50 MB of output through the trace to a
// loopback GitLab (which keeps only the log's length), masking the job
// token and three masked variables as a job's log is: one line in 100
// holds a secret, and the lines end in characters that begin none (so
// nothing is held back), as most output does.
func BenchmarkTrace50MB(b *testing.B) {
	for i := 0; i < b.N; i++ {
		secrets := []string{"glcbt-64_J9xPq3sVt2LmN8wZkYfR", "s3cr3t-database-password", "AKIAIOSFODNN7EXAMPLE", "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy"}
		tr, gl, _ := traceFor(b, secrets, 100<<20)
		gl.TraceSizeOnly = true
		tr.interval = time.Millisecond
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { tr.Run(ctx); close(done) }()
		peakHeap := sampleHeap()
		line := []byte(strings.Repeat("0123456789", 10) + "\n")
		secretLine := []byte("connecting with s3cr3t-database-password to the db, token glcbt-64_J9xPq3sVt2LmN8wZkYfR ok\n")
		start := time.Now()
		for n, k := 0, 0; n < 50<<20; k++ {
			l := line
			if k%100 == 99 {
				l = secretLine
			}
			tr.Write(l)
			n += len(l)
		}
		cancel()
		<-done
		tr.Close(context.Background())
		el := time.Since(start)
		peak := peakHeap()
		b.ReportMetric(50/el.Seconds(), "MB/s")
		b.ReportMetric(float64(peak>>20), "heap-peak-MB")
	}
}

// sampleHeap samples the heap in use every 5 ms until the returned
// function is called; that function returns the peak.
func sampleHeap() func() uint64 {
	var peak uint64
	stop, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond): // a sampling period
				runtime.ReadMemStats(&ms)
				peak = max(peak, ms.HeapInuse)
			}
		}
	}()
	return func() uint64 { close(stop); <-sampled; return peak }
}

// BenchmarkLiveLogLatency measures how long a line written to the trace
// takes to be in GitLab's log when GitLab asks for a 3 s interval (as while
// someone watches the log): lines are written at random moments of the
// interval, with nothing after them.
func BenchmarkLiveLogLatency(b *testing.B) {
	var lat []time.Duration
	for i := 0; i < b.N; i++ {
		tr, gl, id := traceFor(b, []string{"glcbt-64_J9xPq3sVt2LmN8wZkYfR"}, 0)
		gl.TraceUpdate = 3
		tr.interval = 3 * time.Second
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { tr.Run(ctx); close(done) }()
		for k := 0; k < 6; k++ {
			time.Sleep(time.Duration(k) * 550 * time.Millisecond) // spread over the interval, not a synchronisation
			line := fmt.Sprintf("line %d-%d\n", i, k)
			start := time.Now()
			tr.Write([]byte(line))
			gl.WaitFor(time.Minute, "the line", func(s *coordinatortest.Server) bool { return s.TraceContains(id, line) })
			lat = append(lat, time.Since(start))
		}
		cancel()
		<-done
		tr.Close(context.Background())
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(lat[len(lat)/2].Seconds(), "p50-s")
	b.ReportMetric(lat[len(lat)-1].Seconds(), "max-s")
}

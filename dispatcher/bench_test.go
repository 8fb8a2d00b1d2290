package dispatcher_test

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/executors"
)

// BenchmarkAcquireToProvision measures the daemon's own overhead per job:
// from GitLab handing a job out (loopback fake GitLab) to the executor's
// Provision call, through the real coordinator client and the real state
// file (write-ahead fsync included). Jobs finish as soon as they launch.
func BenchmarkAcquireToProvision(b *testing.B) {
	b.Run("burst", func(b *testing.B) { benchAcquire(b, false, false) })
	b.Run("one-at-a-time", func(b *testing.B) { benchAcquire(b, true, false) })
	b.Run("one-at-a-time-jobs-end", func(b *testing.B) { benchAcquire(b, true, true) })
}

// benchAcquire queues b.N jobs at once (burst), or one after the other
// once the previous reached Provision (one-at-a-time: the unloaded path).
// jobsEnd: each job ends right after its launch (its host reports the
// end), so the state file stays small; otherwise launched jobs pile up and
// every write-ahead rewrites all of them.
func benchAcquire(b *testing.B, serial, jobsEnd bool) {
	h := newHarness(b, 1)
	if d := os.Getenv("BENCH_STATE_DIR"); d != "" {
		h.statePath = filepath.Join(d, "bench-state.json")
		os.Remove(h.statePath)
	}
	h.cfg.Logger = zap.NewNop()
	h.cfg.Concurrent = 100000
	h.cfg.MaxProvisioning = 64
	h.cfg.TrackingRPS = 50
	// production's safety net for executors that report host ends (the
	// harness makes it fast for tests that end jobs in GitLab only)
	h.cfg.SafetyInterval, h.cfg.SafetyPerMinute = time.Minute, 100
	var mu sync.Mutex
	var lat []time.Duration
	done := make(chan struct{})
	next := make(chan struct{}, 1)
	h.fake.OnProvision = func(ctx context.Context, j executors.Job) error {
		acq := h.gl.Job(j.ID).AcquiredAt
		mu.Lock()
		lat = append(lat, time.Since(acq))
		n := len(lat)
		mu.Unlock()
		if n == b.N {
			close(done)
		}
		next <- struct{}{}
		return nil
	}
	if jobsEnd {
		h.fake.OnLaunch = func(ctx context.Context, j executors.Job) error {
			go func() {
				h.gl.Finish(j.ID, "success")
				h.fake.End(executors.End{JobID: j.ID})
			}()
			return nil
		}
	}
	if !serial {
		for i := 0; i < b.N; i++ {
			h.gl.Enqueue("", nil)
		}
	}
	h.cfg.CheckInterval = time.Millisecond // poll often: time in GitLab's queue is not measured anyway
	b.ResetTimer()
	start := time.Now()
	h.start()
	if serial {
		go func() {
			for i := 0; i < b.N; i++ {
				h.gl.Enqueue("", nil)
				<-next
			}
		}()
	} else {
		go func() {
			for range next {
			}
		}()
	}
	select {
	case <-done:
	case <-time.After(10 * time.Minute):
		b.Fatal("timeout")
	}
	elapsed := time.Since(start)
	b.StopTimer()
	h.stop()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*9/10].Microseconds())/1000, "p90-ms")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "jobs/s")
}

package dispatcher_test

import (
	"context"
	"math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/dispatcher"
	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/executortest"
	"gitlab.com/paas-runner/paas-runner/guard"
	"gitlab.com/paas-runner/paas-runner/pipeguard"
	"gitlab.com/paas-runner/paas-runner/pipeguard/pipeguardtest"
)

// BenchmarkPipelineGuardGoOn measures, through the whole daemon (the
// dispatcher, the pipeline guard, the real Watcher with the real 3–15 s
// jittered interval on a manual clock, the fake GitLab over loopback HTTP
// and the fake executor), the time from a job's last conflicting pipeline
// finishing to its host's provisioning call: the simulated time to the next
// poll (the conflict ends at a uniformly random point of the poller's
// sleep) plus the wall time from that poll to Provision. One job waits at a
// time; each iteration is one job.
func BenchmarkPipelineGuardGoOn(b *testing.B) {
	h := newHarness(b, 1)
	h.cfg.Logger = zap.NewNop()
	clk := pipeguardtest.NewClock()
	var intervals []time.Duration
	var imu sync.Mutex
	w := &pipeguard.Watcher{Clock: clk, Interval: func() time.Duration {
		d := pipeguard.JitterInterval()
		imu.Lock()
		intervals = append(intervals, d)
		imu.Unlock()
		return d
	}}
	h.gl.AddAPIToken(guardToken, "read_api")
	p := guard.NewPipelines(guard.NewCore(), w, "r_000000000000", zap.NewNop())
	h.cfg.Guards = []dispatcher.Guard{p}
	provisioned := make(chan time.Time, 1)
	h.fake.OnProvision = func(context.Context, executors.Job) error { provisioned <- time.Now(); return nil }
	h.start()
	ph := &pipeHarness{harness: h}
	var total, wall []time.Duration
	for i := 0; i < b.N; i++ {
		older := h.gl.AddPipeline(guardProj, "main", "running")
		own := h.gl.AddPipeline(guardProj, "main", "running")
		before := clk.Pending()
		j := ph.guardedJob(own, "GUARD_TIMEOUT", "864000")
		h.gl.WaitFor(wait, "waiting", func(s *coordinatortest.Server) bool {
			return s.TraceContains(j.ID, "pipeline #"+strconv.FormatInt(older, 10)+" running")
		})
		if !clk.WaitPending(before+2, wait) { // the wait's timeout, the poller's sleep
			b.Fatal("the poller does not sleep")
		}
		next := clk.Next()
		early := time.Duration(rand.Float64() * float64(next))
		clk.Advance(early)
		h.gl.SetPipelineStatus(older, "success")
		start := time.Now()
		clk.Advance(next - early)
		var at time.Time
		select {
		case at = <-provisioned:
		case <-time.After(wait):
			b.Fatal("not provisioned")
		}
		wall = append(wall, at.Sub(start))
		total = append(total, next-early+at.Sub(start))
		h.waitFake("launched", func(f *executortest.Fake) bool {
			hh, ok := f.LiveLocked(h.hostName(h.tokens[0], j.ID))
			return ok && hh.Launches == 1
		})
		h.gl.SetPipelineStatus(own, "success")
		h.gl.Finish(j.ID, "success")
	}
	b.StopTimer()
	pct := func(ds []time.Duration, q float64) float64 {
		s := append([]time.Duration(nil), ds...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return s[int(q*float64(len(s)-1))].Seconds()
	}
	imu.Lock()
	var sum time.Duration
	for _, d := range intervals {
		sum += d
	}
	mean := sum / time.Duration(max(len(intervals), 1))
	imu.Unlock()
	b.ReportMetric(pct(total, 0.5), "p50-gone-to-provision-s")
	b.ReportMetric(pct(total, 1), "max-gone-to-provision-s")
	b.ReportMetric(pct(wall, 0.5)*1000, "p50-poll-to-provision-wall-ms")
	b.ReportMetric(mean.Seconds(), "mean-interval-s")
}

package pipeguard

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/pipeguard/pipeguardtest"
)

// BenchmarkWaiters100 runs 100 jobs of one project waiting on the same rule
// (GUARD_REF_REGEX=^deploy/ while an older deploy pipeline runs) for 10 minutes of a manual clock,
// through the real Watcher, client and fake GitLab, with the real 3–15 s
// jittered interval, then ends the conflict. It reports GitLab requests per
// simulated minute while they wait, the simulated time from the conflict's
// end to each job's decision (p50, max), and the wall time the last poll
// took to decide for all 100 jobs.
//
// "shared": the jobs share a token, so one poller serves them all (what the
// daemon does). "per-job": each job has its own token, hence its own poller:
// the cost of one gitlab-job-guard per job, for comparison.
func BenchmarkWaiters100(b *testing.B) {
	for _, mode := range []string{"shared", "per-job"} {
		b.Run(mode, func(b *testing.B) {
			var perMin, p50, worst, wall float64
			for range b.N {
				r := simulate(b, 100, mode == "per-job", 10*time.Minute)
				perMin += r.perMinute
				p50 += r.p50.Seconds()
				worst += r.max.Seconds()
				wall += r.wall.Seconds() * 1000
			}
			n := float64(b.N)
			b.ReportMetric(perMin/n, "requests/min")
			b.ReportMetric(p50/n, "p50-decision-s")
			b.ReportMetric(worst/n, "max-decision-s")
			b.ReportMetric(wall/n, "last-poll-wall-ms")
		})
	}
}

type simResult struct {
	perMinute float64
	p50, max  time.Duration
	wall      time.Duration
}

func simulate(b *testing.B, jobs int, perJobToken bool, span time.Duration) simResult {
	srv := coordinatortest.New(b)
	clk := pipeguardtest.NewClock()
	w := &Watcher{Clock: clk}
	// An older deploy pipeline runs; 100 jobs of other pipelines (running,
	// not deploys) wait for deploy pipelines to be done.
	old := srv.AddPipeline(7, "deploy/old", "running")
	rule, err := NewRule(Spec{RefRegex: "^deploy/"})
	if err != nil {
		b.Fatal(err)
	}
	type done struct {
		at  time.Time
		err error
	}
	results := make(chan done, jobs)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range jobs {
		tok := "glpat-bench"
		if perJobToken {
			tok = fmt.Sprintf("glpat-bench-%d", i)
		}
		srv.AddAPIToken(tok, "read_api")
		own := srv.AddPipeline(7, fmt.Sprintf("feature/%d", i), "running")
		go func() {
			_, err := w.Wait(ctx, Request{APIURL: srv.URL + "/api/v4", Project: "7", Token: tok, PipelineID: own, Rule: rule}, nil)
			results <- done{clk.Now(), err}
		}()
	}
	pollers := 1
	if perJobToken {
		pollers = jobs
	}
	// Every job's timeout timer plus every poller's interval timer: all
	// asleep.
	asleep := func() {
		if !clk.WaitPending(jobs+pollers, time.Minute) {
			b.Fatalf("pending timers %d, want %d", clk.Pending(), jobs+pollers)
		}
	}
	asleep()
	base := srv.Count("GET /api/v4/projects/7/pipelines")
	t0 := clk.Now()
	for clk.Now().Sub(t0) < span {
		clk.Advance(clk.Next())
		asleep()
	}
	requests := srv.Count("GET /api/v4/projects/7/pipelines") - base
	elapsed := clk.Now().Sub(t0)
	// The older pipeline ends in the middle of an interval.
	clk.Advance(clk.Next() / 2)
	srv.SetPipelineStatus(old, "success")
	ended := clk.Now()
	var lat []time.Duration
	var wall time.Duration
	perPoller := jobs / pollers
	for len(lat) < jobs {
		fired := clk.Advance(clk.Next())
		t := time.Now()
		for range fired * perPoller {
			select {
			case d := <-results:
				if d.err != nil {
					b.Fatal(d.err)
				}
				lat = append(lat, d.at.Sub(ended))
			case <-time.After(time.Minute):
				b.Fatal("jobs did not proceed")
			}
		}
		wall = time.Since(t)
	}
	slices.Sort(lat)
	return simResult{perMinute: float64(requests) / elapsed.Minutes(), p50: lat[len(lat)/2], max: lat[len(lat)-1], wall: wall}
}

// BenchmarkWaiters100Arriving: the 100 jobs of BenchmarkWaiters100
// ("shared") do not arrive at once but one every 2 s (simulated) while the
// deploy pipeline runs, as GitLab hands them out; GitLab requests per
// simulated minute over the 200 s of arrivals plus 10 minutes of waiting,
// the first poll included. A job joining a wait in progress is answered
// from the last listing: no request of its own.
func BenchmarkWaiters100Arriving(b *testing.B) {
	var perMin, arrivalPerMin float64
	for range b.N {
		all, arrival := simulateArriving(b, 100, 2*time.Second, 10*time.Minute)
		perMin += all
		arrivalPerMin += arrival
	}
	b.ReportMetric(perMin/float64(b.N), "requests/min")
	b.ReportMetric(arrivalPerMin/float64(b.N), "arrival-requests/min")
}

func simulateArriving(b *testing.B, jobs int, every, span time.Duration) (perMin, arrivalPerMin float64) {
	srv := coordinatortest.New(b)
	clk := pipeguardtest.NewClock()
	w := &Watcher{Clock: clk}
	srv.AddPipeline(7, "deploy/old", "running")
	srv.AddAPIToken("glpat-bench", "read_api")
	rule, err := NewRule(Spec{RefRegex: "^deploy/"})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	answered := make(chan struct{}, jobs)
	asleep := func(n int) {
		if !clk.WaitPending(n, time.Minute) {
			b.Fatalf("pending timers %d, want %d", clk.Pending(), n)
		}
	}
	// advance moves the clock by d, one due timer at a time, letting the
	// poller go back to sleep (n timers pending) after each.
	advance := func(d time.Duration, n int) {
		target := clk.Now().Add(d)
		for {
			next := clk.Next()
			if next <= 0 || clk.Now().Add(next).After(target) {
				clk.Advance(target.Sub(clk.Now()))
				return
			}
			clk.Advance(next)
			asleep(n)
		}
	}
	route := "GET /api/v4/projects/7/pipelines"
	t0 := clk.Now()
	for i := range jobs {
		if i > 0 {
			advance(every, i+1) // i jobs' timeouts, the poller's interval
		}
		own := srv.AddPipeline(7, fmt.Sprintf("feature/%d", i), "running")
		first := true
		go func() {
			_, _ = w.Wait(ctx, Request{APIURL: srv.URL + "/api/v4", Project: "7", Token: "glpat-bench", PipelineID: own, Rule: rule},
				func(Event) {
					if first {
						first = false
						answered <- struct{}{}
					}
				})
		}()
		select {
		case <-answered:
		case <-time.After(time.Minute):
			b.Fatalf("job %d not answered", i)
		}
		asleep(i + 2)
	}
	arrival := clk.Now().Sub(t0)
	arrivalRequests := srv.Count(route)
	advance(span, jobs+1)
	return float64(srv.Count(route)) / clk.Now().Sub(t0).Minutes(), float64(arrivalRequests) / arrival.Minutes()
}

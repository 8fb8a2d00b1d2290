package cleverdocker

import (
	"context"
	"sort"
	"testing"
	"time"
)

// BenchmarkJob: one job's Plan → Provision → Launch → Decommission against
// the fake Clever API (instant answers, repository CREATED at the first
// GET, real git push over loopback to git http-backend), caches warm.
// Reports the Clever API calls per job and the executor's own latency
// from Plan to the pushed commit.
func BenchmarkJob(b *testing.B) {
	for _, mode := range []string{"fixed-orga", "multi-tenant"} {
		b.Run(mode, func(b *testing.B) {
			var f *fixture
			if mode == "fixed-orga" {
				f = newFixture(b, nil)
			} else {
				f = newMT(b).fixture
			}
			ctx := context.Background()
			var prov []time.Duration
			run := func(id int64) time.Duration {
				j := nsJob(id, "acme")
				start := time.Now()
				h, _ := f.e.Plan(ctx, j)
				h, err := f.e.Provision(ctx, h, j)
				prov = append(prov, time.Since(start))
				if err == nil {
					h, err = f.e.Launch(ctx, h, j)
				}
				if err != nil {
					b.Fatal(err)
				}
				d := time.Since(start)
				if err := f.e.Decommission(ctx, h); err != nil {
					b.Fatal(err)
				}
				return d
			}
			run(1) // warm the caches
			f.calls.Store(0)
			prov = nil
			var lat []time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				lat = append(lat, run(int64(100+i)))
			}
			b.StopTimer()
			sort.Slice(lat, func(i, k int) bool { return lat[i] < lat[k] })
			b.ReportMetric(float64(f.calls.Load())/float64(b.N), "api-calls/job")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*9/10].Microseconds())/1000, "p90-ms")
			sort.Slice(prov, func(i, k int) bool { return prov[i] < prov[k] })
			b.ReportMetric(float64(prov[len(prov)/2].Microseconds())/1000, "provision-p50-ms")
		})
	}
}

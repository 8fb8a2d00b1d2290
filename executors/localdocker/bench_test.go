package localdocker

import (
	"context"
	"sort"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/executors"
)

// BenchmarkProvisionLaunch: Plan → Provision → Launch until the host
// container runs (container created from the host image, job.json and
// runner.toml copied in, started), with the base image warm. Hosts are
// removed outside the timing.
func BenchmarkProvisionLaunch(b *testing.B) {
	if !dockerOK {
		b.Skip("no Docker engine")
	}
	for _, mode := range []string{"default-base-image", "heptapod-inner-image"} {
		b.Run(mode, func(b *testing.B) {
			o := Options{RunnerID: "glrt-bnc", RunnerLabel: "bench", RunnerURL: "http://127.0.0.1:1", SystemID: "r_bench0000000",
				Binary: staticBin, Version: testVersion, NetworkMode: "host"}
			if mode == "heptapod-inner-image" {
				o.InnerImage = innerImage
			}
			e, err := New(o)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			if _, err := e.hostImage(ctx); err != nil { // warm
				b.Fatal(err)
			}
			var lat []time.Duration
			var hs []executors.Handle
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				j := executors.Job{RunnerID: o.RunnerID, ID: int64(1000 + i), Payload: payload(int64(1000+i), "sleep")}
				start := time.Now()
				h, _ := e.Plan(ctx, j)
				h, err := e.Provision(ctx, h, j)
				if err == nil {
					h, err = e.Launch(ctx, h, j)
				}
				if err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
				hs = append(hs, h)
			}
			b.StopTimer()
			for _, h := range hs {
				e.Decommission(ctx, h)
			}
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*9/10].Milliseconds()), "p90-ms")
			e.Close()
		})
	}
}

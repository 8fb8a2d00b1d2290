package guard

import (
	"context"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"go.uber.org/zap"
)

// benchGrant measures the grant latency after a release: from the
// holder's Release call to the waiter's Admit returning, one waiter at a
// time, and reports its p50 and p95.
func benchGrant(b *testing.B, m *Manager) {
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	holder := &tjob{id: 1, pipeline: 1, timeout: 3600, vars: map[string]string{VarLock: "bench"}}
	if _, err := m.Admit(ctx, "runner1", holder.acquired(b), func(string) {}, nil); err != nil {
		b.Fatal(err)
	}
	prev := int64(1)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id := int64(i + 2)
		j := &tjob{id: id, pipeline: id, timeout: 3600, vars: map[string]string{VarLock: "bench"}}
		a := j.acquired(b)
		queued := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			_, err := m.Admit(ctx, "runner1", a, func(string) {}, func() { close(queued) })
			done <- err
		}()
		<-queued // it waits (it gave its slots back)
		start := time.Now()
		m.Release("runner1", prev)
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		prev = id
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*95/100].Microseconds())/1000, "p95-ms")
}

func BenchmarkGrantAfterReleaseLocal(b *testing.B) {
	be, err := OpenLocal(filepath.Join(b.TempDir(), "state.json.guards"), nil)
	if err != nil {
		b.Fatal(err)
	}
	m, err := NewManager(context.Background(), be, Options{Daemon: "r_bench", Logger: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	benchGrant(b, m)
}

func BenchmarkGrantAfterReleaseGit(b *testing.B) {
	g := newGitEnvB(b, map[string]string{"README.md": "locks\n"})
	ctx := context.Background()
	be, err := OpenGit(ctx, GitOptions{URL: g, Username: "locks-bot", Password: "s3cret", RetryDelay: 10 * time.Millisecond, Daemon: "r_bench"})
	if err != nil {
		b.Fatal(err)
	}
	m, err := NewManager(ctx, be, Options{Daemon: "r_bench", Logger: zap.NewNop(), Refresh: 10 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	benchGrant(b, m)
}

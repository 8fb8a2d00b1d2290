package main

import (
	"context"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/dispatcher"
)

type fakeForcer struct{ forced atomic.Bool }

func (f *fakeForcer) Force()                         { f.forced.Store(true) }
func (f *fakeForcer) Snapshot() []dispatcher.JobInfo { return nil }
func (f *fakeForcer) Stats() dispatcher.Stats        { return dispatcher.Stats{} }

// signalLoopState is the scheduler state of the handleSignals goroutine
// ("select" when it waits), "" when there is none.
func signalLoopState() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, ".handleSignals(") {
			header := g[:strings.IndexByte(g, '\n')]
			if i, j := strings.IndexByte(header, '['), strings.IndexByte(header, ']'); i >= 0 && j > i {
				return strings.SplitN(header[i+1:j], ",", 2)[0]
			}
		}
	}
	return ""
}

// After the first signal the loop waits for a second one; it does not spin
// on the context it cancelled itself (it burnt a core while draining).
func TestSignalLoopWaitsWhileDraining(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 1)
	f := &fakeForcer{}
	done := make(chan struct{})
	go func() { handleSignals(ctx, sigs, cancel, f, nil, false, zap.NewNop()); close(done) }()
	sigs <- syscall.SIGTERM
	<-ctx.Done() // the drain started
	deadline := time.Now().Add(10 * time.Second)
	for signalLoopState() != "select" {
		if time.Now().After(deadline) {
			t.Fatalf("the signal loop never waits while draining (state %q)", signalLoopState())
		}
		runtime.Gosched()
	}
	for i := 0; i < 50; i++ {
		if st := signalLoopState(); st != "select" {
			t.Fatalf("the signal loop runs while draining (state %q)", st)
		}
		runtime.Gosched()
	}
	sigs <- syscall.SIGTERM
	<-done
	if !f.forced.Load() {
		t.Fatal("second signal did not force the stop")
	}
}

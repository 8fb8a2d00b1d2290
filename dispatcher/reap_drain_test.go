package dispatcher_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/dispatcher"
	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/executortest"
)

// stuckReaper is the fake executor whose PaaS API stops answering a
// listing of hosts after its first `answered` calls: Reap then returns
// only when its context ends.
type stuckReaper struct {
	*executortest.Fake
	answered int32
	calls    *atomic.Int32
	stuck    chan struct{}
}

func (s stuckReaper) Reap(ctx context.Context, _ []executors.Handle, _ time.Duration) ([]string, error) {
	if s.calls.Add(1) <= s.answered {
		return nil, nil
	}
	select {
	case s.stuck <- struct{}{}:
	default:
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

// A drain (SIGTERM) does not wait for a reap of orphan hosts whose PaaS
// API does not answer (clever-docker retries such calls for 90 s): neither
// the start-up reap nor a periodic one holds the daemon past its drain.
func TestDrainDoesNotWaitForAStuckReap(t *testing.T) {
	for _, tc := range []struct {
		name     string
		answered int32         // reaps answered before the API hangs
		interval time.Duration // of the periodic reap
	}{
		{"start-up reap", 0, 0},
		{"periodic reap", 1, 10 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, 1)
			h.cfg.ReapInterval = tc.interval
			stuck := make(chan struct{}, 1)
			h.wrapRunner = func(_ int, r *dispatcher.Runner) {
				r.Executor = stuckReaper{Fake: h.fake, answered: tc.answered, calls: new(atomic.Int32), stuck: stuck}
			}
			h.start()
			select {
			case <-stuck:
			case <-time.After(wait):
				t.Fatal("no reap was made")
			}
			h.cancel() // SIGTERM
			select {
			case <-h.done:
			case <-time.After(wait / 3):
				t.Fatal("the drain waits for a reap that does not answer")
			}
			if h.runErr != nil {
				t.Fatal(h.runErr)
			}
		})
	}
}

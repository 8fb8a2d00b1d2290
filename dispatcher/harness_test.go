package dispatcher_test

import (
	"context"
	"fmt"
	"gitlab.com/paas-runner/paas-runner/config"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"gitlab.com/paas-runner/paas-runner/coordinator"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/dispatcher"
	"gitlab.com/paas-runner/paas-runner/executors/executortest"
	"gitlab.com/paas-runner/paas-runner/state"
)

const wait = 30 * time.Second

type harness struct {
	t         testing.TB
	gl        *coordinatortest.Server
	fake      *executortest.Fake
	statePath string
	store     *state.Store
	cfg       dispatcher.Config
	tokens    []string
	limits    []int

	// wrap, when set, stands between the dispatcher and the store.
	wrap func(dispatcher.Store) dispatcher.Store
	// wrapRunner, when set, may change runner i before the start.
	wrapRunner func(i int, r *dispatcher.Runner)

	d      *dispatcher.Dispatcher
	cancel context.CancelFunc
	done   chan struct{} // closed when Run returned; runErr is then set
	runErr error
}

func newHarness(t testing.TB, runners int) *harness {
	h := &harness{t: t, gl: coordinatortest.New(t), fake: executortest.NewFake(),
		statePath: filepath.Join(t.TempDir(), "state.json")}
	for i := 0; i < runners; i++ {
		tok := fmt.Sprintf("glrt-r%d-0123456789", i)
		h.gl.AddRunner(tok)
		h.tokens = append(h.tokens, tok)
		h.limits = append(h.limits, 0)
	}
	h.cfg = dispatcher.Config{
		Concurrent: 50, MaxProvisioning: 10, CheckInterval: 20 * time.Millisecond, TrackingRPS: 1000,
		// the fake reports host ends, but most tests end jobs in GitLab only
		SafetyInterval: 20 * time.Millisecond, SafetyPerMinute: 60000,
		// waiting jobs' cancels seen quickly, not only from their log writes
		WaitingInterval:            20 * time.Millisecond,
		DecommissionLaunchFailures: true, ShutdownTimeout: wait, RetryMin: time.Millisecond, RetryMax: 10 * time.Millisecond,
		Logger: zaptest.NewLogger(t),
	}
	return h
}

// uniqueName is the runner ID the daemon gives a token.
func uniqueName(tok string) string { return config.RunnerID(tok) }

func (h *harness) start() {
	h.t.Helper()
	var err error
	if h.store == nil {
		h.store, err = state.Open(h.statePath)
		if err != nil {
			h.t.Fatal(err)
		}
	}
	var rs []*dispatcher.Runner
	for i, tok := range h.tokens {
		rs = append(rs, h.runner(i, tok, h.limits[i]))
	}
	if h.wrapRunner != nil {
		for i, r := range rs {
			h.wrapRunner(i, r)
		}
	}
	var store dispatcher.Store = h.store
	if h.wrap != nil {
		store = h.wrap(store)
	}
	h.d, err = dispatcher.New(h.cfg, store, rs)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	done := make(chan struct{})
	h.done = done
	d := h.d
	go func() { h.runErr = d.Run(ctx); close(done) }()
	h.t.Cleanup(func() {
		cancel()
		d.Force()
		<-done
		if h.store != nil {
			h.store.Close()
			h.store = nil
		}
	})
}

// runner is runner i of the harness, polling with tok.
func (h *harness) runner(i int, tok string, limit int) *dispatcher.Runner {
	h.t.Helper()
	c, err := coordinator.New(coordinator.Config{URL: h.gl.URL, Token: tok, SystemID: "r_000000000000",
		Info:  coordinator.Info{Features: map[string]bool{"cancel_gracefully": true, "two_phase_job_commit": true}},
		Retry: coordinator.RetryPolicy{Min: time.Millisecond, Max: 10 * time.Millisecond}})
	if err != nil {
		h.t.Fatal(err)
	}
	return &dispatcher.Runner{Name: fmt.Sprintf("runner-%d", i), ID: uniqueName(tok), LegacyIDs: []string{config.LegacyID(tok)}, ExecutorName: "fake",
		Executor: h.fake, Source: c, Limit: limit, UnhealthyLimit: 3, UnhealthyInterval: time.Hour}
}

// force stops at once (a second signal) and waits for Run.
func (h *harness) force() error {
	h.t.Helper()
	h.cancel()
	h.d.Force()
	<-h.done
	return h.runErr
}

// stop drains and waits for Run to return.
func (h *harness) stop() error {
	h.t.Helper()
	h.cancel()
	select {
	case <-h.done:
		return h.runErr
	case <-time.After(2 * wait):
		h.t.Fatal("Run did not return after cancel")
		return nil
	}
}

func (h *harness) waitStatus(id int64, status string) {
	h.t.Helper()
	h.gl.WaitFor(wait, fmt.Sprintf("job %d %s", id, status), func(s *coordinatortest.Server) bool { return s.StatusOf(id) == status })
}

// waitFake waits until the fake executor's hosts match cond.
func (h *harness) waitFake(what string, cond func(f *executortest.Fake) bool) {
	h.t.Helper()
	if !h.fake.WaitFor(wait, cond) {
		h.t.Fatalf("timed out waiting for %s", what)
	}
}

func (h *harness) hostName(tok string, id int64) string {
	return fmt.Sprintf("fake-%s-%d", uniqueName(tok), id)
}

// gate blocks a hook until released or its context ends.
type gate struct {
	mu      sync.Mutex
	ch      chan struct{}
	entered chan int64
}

func newGate() *gate { return &gate{ch: make(chan struct{}), entered: make(chan int64, 1000)} }

func (g *gate) wait(ctx context.Context, id int64) error {
	g.entered <- id
	g.mu.Lock()
	ch := g.ch
	g.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *gate) open() {
	g.mu.Lock()
	close(g.ch)
	g.mu.Unlock()
}

package dispatcher_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/dispatcher"
	"gitlab.com/paas-runner/paas-runner/executors/executortest"
	"gitlab.com/paas-runner/paas-runner/job"
	"gitlab.com/paas-runner/paas-runner/state"
)

// crashingStore never makes anything durable: its first Sync is where the
// process dies (it blocks until the dispatcher is stopped), and its Puts
// never reach the file.
type crashingStore struct {
	dispatcher.Store
	once    sync.Once
	crashed chan struct{}
}

func (c *crashingStore) Put(state.Job)     {}
func (c *crashingStore) Delete(state.Key)  {}
func (c *crashingStore) Jobs() []state.Job { return nil }
func (c *crashingStore) Sync(ctx context.Context) error {
	first := false
	c.once.Do(func() { close(c.crashed); first = true })
	if first {
		<-ctx.Done()
	}
	return errors.New("crashed")
}

// A crash between GitLab's 201 and the write-ahead loses no job: GitLab
// was not told the job is taken (two-phase commit), gives it up after its
// acknowledgement timeout and hands out a retry, which the restarted daemon
// runs once.
func TestCrashBeforeWriteAheadLosesNoJob(t *testing.T) {
	h := newHarness(t, 1)
	h.gl.AckTimeout = 300 * time.Millisecond
	crash := &crashingStore{crashed: make(chan struct{})}
	h.wrap = func(s dispatcher.Store) dispatcher.Store { crash.Store = s; return crash }
	j := h.gl.Enqueue("", nil)
	h.start()
	select {
	case <-crash.crashed:
	case <-time.After(wait):
		t.Fatal("the job was never written")
	}
	_ = h.force() // "crashed"
	if got := h.gl.Job(j.ID); got.Status != "pending" || !got.WaitingAck {
		t.Fatalf("a job not yet durable was confirmed to GitLab: %+v", got)
	}
	// restart on the (empty) state file
	h.store.Close()
	h.store = nil
	h.wrap = nil
	h.start()
	h.gl.WaitFor(wait, "the job given up and retried", func(s *coordinatortest.Server) bool { return s.StatusOf(j.ID) == "failed" })
	orig := h.gl.Job(j.ID)
	if orig.FailureReason != "runner_provisioning_timeout" || orig.RetriedAs == 0 {
		t.Fatalf("original job: %+v", orig)
	}
	retry := h.hostName(h.tokens[0], orig.RetriedAs)
	h.waitFake("retry launched", func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(retry); return ok && hh.Launches == 1 })
	if _, ok := h.fake.Live()[h.hostName(h.tokens[0], j.ID)]; ok || len(h.fake.Removed()) != 0 {
		t.Fatal("a host was made for the job lost in the crash")
	}
	if got := h.gl.Job(orig.RetriedAs); got.Status != "running" {
		t.Fatalf("retry not confirmed: %s", got.Status)
	}
}

// A 201 whose payload cannot be used is failed in GitLab with a reason in
// its log, and the runner goes on with the next job.
func TestUnusablePayloadIsFailed(t *testing.T) {
	h := newHarness(t, 1)
	bad := h.gl.Enqueue("", map[string]any{"steps": "not a list"})
	good := h.gl.Enqueue("", nil)
	h.start()
	h.waitStatus(bad.ID, "failed")
	got := h.gl.Job(bad.ID)
	if got.FailureReason != job.RunnerSystemFailure || !contains(got.Trace, "this job cannot be run: invalid job payload") {
		t.Fatalf("bad job: %s %q", got.FailureReason, got.Trace)
	}
	name := h.hostName(h.tokens[0], good.ID)
	h.waitFake("next job launched", func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(name); return ok && hh.Launches == 1 })
	// Read once the loop stopped: while it runs, a poll in flight holds a
	// slot of its own (Jobs 2, Provisioning 1 for a moment).
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	if st := h.d.Stats(); st.Jobs != 1 || st.Provisioning != 0 || st.Launched != 1 {
		t.Fatalf("slots: %+v", st)
	}
}

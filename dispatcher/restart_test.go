package dispatcher_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/dispatcher"
	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/executortest"
	"gitlab.com/paas-runner/paas-runner/job"
	"gitlab.com/paas-runner/paas-runner/state"
)

// A drain lets in-flight provisioning finish, then exits with the job
// launched and recorded; launched jobs are left running.
func TestDrainFinishesProvisioning(t *testing.T) {
	h := newHarness(t, 1)
	g := newGate()
	h.fake.OnProvision = func(ctx context.Context, j executors.Job) error { return g.wait(ctx, j.ID) }
	src := &drainSource{draining: func() <-chan struct{} { return h.d.Draining() }}
	h.wrapRunner = func(_ int, r *dispatcher.Runner) { src.JobSource = r.Source; r.Source = src }
	h.start()
	running := h.gl.Enqueue("", nil)
	<-g.entered
	stopped := make(chan error, 1)
	go func() { stopped <- h.stop() }()
	select {
	case <-h.d.Draining():
	case <-time.After(wait):
		t.Fatal("the drain did not start")
	}
	// No request once the drain started, while provisioning goes on. The
	// requests are counted where the dispatcher makes them: GitLab may
	// still receive one sent (and cancelled) before the drain, and hand it
	// the late job, which GitLab queues again when it is not confirmed.
	late := h.gl.Enqueue("", nil)
	g.open()
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	after, got := src.results()
	if after != 0 {
		t.Fatalf("%d job requests made during the drain", after)
	}
	if _, ok := h.store.Get(state.Key{Runner: uniqueName(h.tokens[0]), ID: late.ID}); ok && !got[late.ID] {
		t.Fatal("a job was taken during the drain")
	}
	rec, ok := h.store.Get(state.Key{Runner: uniqueName(h.tokens[0]), ID: running.ID})
	if !ok || rec.Phase != state.Launched {
		t.Fatalf("after drain: %+v %v", rec, ok)
	}
	if h.gl.Job(running.ID).Status != "running" {
		t.Fatal("launched job was touched by the drain")
	}
	if _, live := h.fake.Live()[h.hostName(h.tokens[0], running.ID)]; !live {
		t.Fatal("host of a launched job removed by the drain")
	}
}

// A forced stop (second signal) interrupts provisioning; the next start
// completes the launch exactly once.
func TestForceThenResume(t *testing.T) {
	h := newHarness(t, 1)
	g := newGate()
	h.fake.OnProvision = func(ctx context.Context, j executors.Job) error { return g.wait(ctx, j.ID) }
	h.start()
	j := h.gl.Enqueue("", nil)
	<-g.entered
	if err := h.force(); err != nil {
		t.Fatal(err)
	}
	rec, _ := h.store.Get(state.Key{Runner: uniqueName(h.tokens[0]), ID: j.ID})
	if rec.Phase != state.Provisioning || len(rec.Resource) == 0 || len(rec.Payload) == 0 {
		t.Fatalf("interrupted job recorded as %+v", rec)
	}
	h.store.Close()
	h.store = nil
	g.open()
	h.start()
	name := h.hostName(h.tokens[0], j.ID)
	h.waitFake("resumed launch", func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(name); return ok && hh.Launches == 1 })
	if got := h.gl.Job(j.ID); got.Acquisitions != 1 {
		t.Fatalf("acquired %d times", got.Acquisitions)
	}
	h.gl.Finish(j.ID, "success")
	h.waitFake("removed", func(f *executortest.Fake) bool { return f.GoneLocked(name) })
}

// After a restart, launched jobs are tracked again and pending jobs whose
// GitLab job ended meanwhile are cleaned up without launching.
func TestResume(t *testing.T) {
	h := newHarness(t, 1)
	g := newGate()
	h.fake.OnProvision = func(ctx context.Context, j executors.Job) error {
		if j.ID%2 == 0 {
			return g.wait(ctx, j.ID)
		}
		return nil
	}
	h.start()
	var launched, pending *coordinatortest.Job
	for launched == nil || pending == nil {
		j := h.gl.Enqueue("", nil)
		if j.ID%2 == 0 {
			pending = j
		} else {
			launched = j
		}
	}
	<-g.entered
	lname, pname := h.hostName(h.tokens[0], launched.ID), h.hostName(h.tokens[0], pending.ID)
	h.waitFake("launch", func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(lname); return ok && hh.Launches == 1 })
	if err := h.force(); err != nil {
		t.Fatal(err)
	}
	h.store.Close()
	h.store = nil
	// while stopped: the launched job ends, the pending one is canceled
	h.gl.Finish(launched.ID, "success")
	h.gl.ForceCancel(pending.ID)
	h.fake.OnProvision = nil
	h.start()
	h.waitFake("launched host removed", func(f *executortest.Fake) bool { return f.GoneLocked(lname) })
	h.gl.WaitFor(wait, "state empty", func(*coordinatortest.Server) bool { return h.store.Len() == 0 })
	if _, live := h.fake.Live()[pname]; live || h.fake.Removed()[pname].Launches != 0 {
		t.Fatal("canceled job provisioned or launched after restart")
	}
}

func TestHostEnds(t *testing.T) {
	h := newHarness(t, 1)
	h.cfg.CheckInterval = time.Hour // only the executor can tell us
	// queued before the start: an idle poll would wait an hour
	died := h.gl.Enqueue("", nil)
	done := h.gl.Enqueue("", nil)
	h.start()
	dname, okname := h.hostName(h.tokens[0], died.ID), h.hostName(h.tokens[0], done.ID)
	h.waitFake("launches", func(f *executortest.Fake) bool {
		a, _ := f.LiveLocked(dname)
		b, _ := f.LiveLocked(okname)
		return a.Launches == 1 && b.Launches == 1
	})
	h.fake.End(executors.End{JobID: died.ID, ExitCode: 137, Detail: "OOM killed"})
	h.waitStatus(died.ID, "failed")
	got := h.gl.Job(died.ID)
	if got.FailureReason != job.RunnerSystemFailure || !contains(got.Trace, "stopped before the job reported a result (exit status 137: OOM killed)") {
		t.Fatalf("%+v %q", got, got.Trace)
	}
	h.gl.Finish(done.ID, "success")
	h.fake.End(executors.End{JobID: done.ID})
	h.waitFake("both removed", func(f *executortest.Fake) bool { return f.GoneLocked(dname) && f.GoneLocked(okname) })
	if h.gl.Job(done.ID).Status != "success" {
		t.Fatal("a finished job was touched")
	}
}

func contains(b []byte, s string) bool {
	return len(s) == 0 || (len(b) >= len(s) && indexOf(string(b), s) >= 0)
}

func indexOf(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return -1
}

func TestReapAtStart(t *testing.T) {
	h := newHarness(t, 1)
	h.fake.Plant(uniqueName(h.tokens[0]), 777) // an orphan
	h.start()
	j := h.gl.Enqueue("", nil)
	name := h.hostName(h.tokens[0], j.ID)
	h.waitFake("orphan removed, job launched", func(f *executortest.Fake) bool {
		hh, ok := f.LiveLocked(name)
		return f.GoneLocked(h.hostName(h.tokens[0], 777)) && ok && hh.Launches == 1
	})
}

type refuseGuard struct{}

func (refuseGuard) Admit(ctx context.Context, runnerID string, j *job.Acquired, jobLog func(string), blocking func()) ([]job.Variable, error) {
	if j.Payload.JobInfo.Name == "deploy" {
		return nil, executors.Permanent("guard", errors.New("environment production is locked by job 1"))
	}
	return nil, nil
}

func (refuseGuard) Release(string, int64) {}

func TestGuardRunsBeforeProvisioning(t *testing.T) {
	h := newHarness(t, 1)
	h.cfg.Guards = []dispatcher.Guard{refuseGuard{}}
	h.start()
	j := h.gl.Enqueue("", map[string]any{"job_info": map[string]any{"name": "deploy", "project_id": 1}})
	ok := h.gl.Enqueue("", nil)
	h.waitStatus(j.ID, "failed")
	if !contains(h.gl.Job(j.ID).Trace, "environment production is locked") {
		t.Fatalf("trace %q", h.gl.Job(j.ID).Trace)
	}
	if len(h.fake.Removed())+len(h.fake.Live()) > 1 {
		// only the admitted job may have a host
		for n := range h.fake.Live() {
			if n == h.hostName(h.tokens[0], j.ID) {
				t.Fatal("refused job was provisioned")
			}
		}
	}
	h.waitFake("admitted job launched", func(f *executortest.Fake) bool {
		hh, found := f.LiveLocked(h.hostName(h.tokens[0], ok.ID))
		return found && hh.Launches == 1
	})
}

// A job Heptapod PAAS Runner recorded under its runner ID (the token's
// first 8 characters) is taken over by the runner whose token it is,
// re-keyed to that runner's ID, tracked and cleaned up at its end.
func TestResumeHeptapodKeyedJob(t *testing.T) {
	h := newHarness(t, 1)
	h.start()
	j := h.gl.Enqueue("", nil)
	name := h.hostName(h.tokens[0], j.ID)
	h.waitFake("launched", func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(name); return ok && hh.Launches == 1 })
	if err := h.force(); err != nil {
		t.Fatal(err)
	}
	newKey := state.Key{Runner: uniqueName(h.tokens[0]), ID: j.ID}
	rec, ok := h.store.Get(newKey)
	if !ok || rec.Phase != state.Launched {
		t.Fatalf("launched job recorded as %+v %v", rec, ok)
	}
	legacy := h.tokens[0][:8]
	if legacy == newKey.Runner {
		t.Fatalf("test needs a token whose ID is not its prefix: %q", legacy)
	}
	rec.RunnerID = legacy
	h.store.Put(rec)
	h.store.Delete(newKey)
	if err := h.store.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.store.Close()
	h.store = nil
	h.start()
	// Without the takeover the job would be left alone as another
	// runner's, and its host never removed.
	h.gl.Finish(j.ID, "success")
	h.waitFake("removed", func(f *executortest.Fake) bool { return f.GoneLocked(name) })
	if hh := h.fake.Removed()[name]; hh.Launches != 1 {
		t.Fatalf("launched %d times", hh.Launches)
	}
	if _, old := h.store.Get(state.Key{Runner: legacy, ID: j.ID}); old {
		t.Fatal("the job is still recorded under its Heptapod ID")
	}
}

// At a restart every launched job's host is checked: a job whose host
// stopped or vanished while the daemon was down fails at once, with the
// host's last lines in its log; a healthy one goes on.
func TestResumeNoticesDeadHosts(t *testing.T) {
	h := newHarness(t, 1)
	var jobs []*coordinatortest.Job
	for i := 0; i < 3; i++ {
		jobs = append(jobs, h.gl.Enqueue("", nil))
	}
	h.start()
	for _, j := range jobs {
		name := h.hostName(h.tokens[0], j.ID)
		h.waitFake("launched", func(f *executortest.Fake) bool { hh, ok := f.LiveLocked(name); return ok && hh.Launches == 1 })
	}
	if err := h.force(); err != nil {
		t.Fatal(err)
	}
	h.store.Close()
	h.store = nil
	id := uniqueName(h.tokens[0])
	oom, gone, healthy := jobs[0], jobs[1], jobs[2]
	h.fake.Stop(id, oom.ID, 137, "OOM killed; last lines:\nCompiling…\nKilled")
	h.fake.Vanish(id, gone.ID)
	h.cfg.CheckInterval = time.Hour // GitLab tracking would not notice before long
	h.start()
	h.waitStatus(oom.ID, "failed")
	h.waitStatus(gone.ID, "failed")
	for _, j := range []*coordinatortest.Job{oom, gone} {
		if got := h.gl.Job(j.ID); got.FailureReason != job.RunnerSystemFailure {
			t.Fatalf("job %d: %s", j.ID, got.FailureReason)
		}
	}
	if tr := h.gl.Job(oom.ID).Trace; !contains(tr, "host stopped before the job reported a result (exit status 137: OOM killed; last lines:\nCompiling…\nKilled)") {
		t.Fatalf("trace %q", tr)
	}
	if tr := h.gl.Job(gone.ID).Trace; !contains(tr, "host disappeared before the job reported a result (it no longer exists") {
		t.Fatalf("trace %q", tr)
	}
	h.waitFake("dead host removed", func(f *executortest.Fake) bool { return f.GoneLocked(h.hostName(h.tokens[0], oom.ID)) })
	if got := h.gl.Job(healthy.ID); got.Status != "running" {
		t.Fatalf("healthy job %s", got.Status)
	}
	if _, ok := h.fake.Live()[h.hostName(h.tokens[0], healthy.ID)]; !ok {
		t.Fatal("healthy host removed")
	}
}

// A job resumed in the launching phase whose host already runs it (the
// crash came after the launch, before it was recorded) is not handed to
// its host again, whatever the executor's Launch would do.
func TestResumeDoesNotRelaunchARunningHost(t *testing.T) {
	h := newHarness(t, 1)
	g := newGate()
	h.fake.OnLaunch = func(ctx context.Context, j executors.Job) error { return g.wait(ctx, j.ID) }
	h.start()
	j := h.gl.Enqueue("", nil)
	<-g.entered
	if err := h.force(); err != nil {
		t.Fatal(err)
	}
	key := state.Key{Runner: uniqueName(h.tokens[0]), ID: j.ID}
	rec, _ := h.store.Get(key)
	if rec.Phase != state.Launching {
		t.Fatalf("recorded as %s", rec.Phase)
	}
	h.store.Close()
	h.store = nil
	// the launch went through before the crash
	h.fake.OnLaunch = nil
	if _, err := h.fake.Launch(context.Background(), rec.Resource, executors.Job{RunnerID: rec.RunnerID, ID: rec.JobID}); err != nil {
		t.Fatal(err)
	}
	var launches atomic.Int32
	h.fake.OnLaunch = func(ctx context.Context, j executors.Job) error { launches.Add(1); return nil }
	h.start()
	h.gl.WaitFor(wait, "recorded as launched", func(*coordinatortest.Server) bool {
		r, _ := h.store.Get(key)
		return r.Phase == state.Launched
	})
	if n := launches.Load(); n != 0 {
		t.Fatalf("Launch called %d times for a host already running the job", n)
	}
	h.gl.Finish(j.ID, "success")
	h.waitFake("removed", func(f *executortest.Fake) bool { return f.GoneLocked(h.hostName(h.tokens[0], j.ID)) })
}

// drainSource counts the job requests the dispatcher makes (with a live
// context) once its drain started, and the jobs it was handed.
type drainSource struct {
	dispatcher.JobSource
	draining func() <-chan struct{}

	mu    sync.Mutex
	after int
	got   map[int64]bool
}

func (s *drainSource) RequestJob(ctx context.Context) (*job.Acquired, error) {
	// A request whose context is already cancelled is never sent: a loop
	// may reach here just after the drain started.
	select {
	case <-s.draining():
		if ctx.Err() == nil {
			s.mu.Lock()
			s.after++
			s.mu.Unlock()
		}
	default:
	}
	a, err := s.JobSource.RequestJob(ctx)
	if err == nil && a != nil {
		s.mu.Lock()
		if s.got == nil {
			s.got = map[int64]bool{}
		}
		s.got[a.ID] = true
		s.mu.Unlock()
	}
	return a, err
}

func (s *drainSource) results() (int, map[int64]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.after, s.got
}

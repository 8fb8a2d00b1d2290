package localdocker

import (
	"context"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"

	"gitlab.com/paas-runner/paas-runner/executors"
)

// Inspect tells what became of a host while the daemon was down: running,
// removed with force, exited without reporting (its exit status and last
// lines), OOM killed.
func TestInspect(t *testing.T) {
	needDocker(t)
	e := newExec(t, func(o *Options) { o.InnerImage = innerImage; o.NetworkMode = "host" })
	ctx := ctxT(t)

	never, _ := e.Plan(ctx, executors.Job{ID: 119})
	if st, err := e.Inspect(ctx, never); err != nil || st.Exists || st.Running {
		t.Fatalf("never created: %+v %v", st, err)
	}

	running := launch(t, e, 111, "spawn") // (sleeps after spawning)
	waitSpawned(t, e, 111)
	if st, err := e.Inspect(ctx, running); err != nil || !st.Exists || !st.Running {
		t.Fatalf("running: %+v %v", st, err)
	}
	hd, _ := decodeHandle(running)
	if err := e.cli.ContainerRemove(ctx, hd.Container, container.RemoveOptions{Force: true}); err != nil { // docker rm -f
		t.Fatal(err)
	}
	if st, err := e.Inspect(ctx, running); err != nil || st.Exists || !strings.Contains(st.Detail, "is gone") {
		t.Fatalf("removed with force: %+v %v", st, err)
	}

	crashed := launch(t, e, 112, "crash")
	waitExited(t, e, crashed)
	st, err := e.Inspect(ctx, crashed)
	if err != nil || !st.Exists || st.Running || st.ExitCode != 3 || !strings.Contains(st.Detail, "exit status 3") ||
		!strings.Contains(st.Detail, "last output: ") || !strings.Contains(st.Detail, "testinner: running job 112") {
		t.Fatalf("exited without reporting: %+v %v", st, err)
	}

	// OOM: the host gets a memory limit before it starts (the hook runs
	// after the files are copied in)
	e.testStep = func(step string) error {
		if step != "copied" {
			return nil
		}
		_, err := e.cli.ContainerUpdate(ctx, "paas-job-"+e.opts.RunnerID+"-113", container.UpdateConfig{
			Resources: container.Resources{Memory: 16 << 20, MemorySwap: 16 << 20}})
		return err
	}
	j := executors.Job{RunnerID: e.opts.RunnerID, ID: 113, Payload: payload(113, "oom")}
	h, _ := e.Plan(ctx, j)
	if _, err := e.Launch(ctx, h, j); err != nil {
		t.Skipf("no memory limit on this engine: %v", err)
	}
	e.testStep = nil
	waitExited(t, e, h)
	st, err = e.Inspect(ctx, h)
	if err != nil || !st.Exists || st.Running || st.ExitCode != 137 {
		t.Fatalf("OOM killed: %+v %v", st, err)
	}
	// Inspect says "OOM killed" when the engine does: under cgroup v2 an
	// engine (20.10) may report the 137 without State.OOMKilled.
	if ci, ierr := e.cli.ContainerInspect(ctx, "paas-job-"+e.opts.RunnerID+"-113"); ierr != nil {
		t.Fatal(ierr)
	} else if oom := ci.State != nil && ci.State.OOMKilled; oom != strings.Contains(st.Detail, "OOM killed") {
		t.Fatalf("engine OOMKilled %v, detail %q", oom, st.Detail)
	}
	// the events watch says so too (and, started after the ends, from
	// when the executor was made, reports them all)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ends := make(chan executors.End, 8)
	go e.WatchEnds(wctx, func(en executors.End) { ends <- en })
	seen := map[int64]executors.End{}
	for len(seen) < 3 {
		select {
		case en := <-ends:
			seen[en.JobID] = en
		case <-wctx.Done():
			t.Fatalf("ends reported: %+v", seen)
		}
	}
	if en := seen[113]; en.ExitCode != 137 || !strings.Contains(en.Detail, "OOM killed") {
		t.Fatalf("OOM end: %+v", en)
	}
	if en := seen[112]; en.ExitCode != 3 {
		t.Fatalf("crash end: %+v", en)
	}
	if _, ok := seen[111]; !ok {
		t.Fatalf("removed host's end: %+v", seen)
	}
}

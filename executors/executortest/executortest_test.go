package executortest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/executors"
)

func TestFakeConforms(t *testing.T) {
	Run(t, func(t *testing.T) Subject {
		f := NewFake()
		return Subject{Executor: f, Observer: f, RunnerID: "r1"}
	})
}

func TestDirConforms(t *testing.T) {
	Run(t, func(t *testing.T) Subject {
		d := &Dir{Path: t.TempDir()}
		return Subject{Executor: d, Observer: d, RunnerID: "r1"}
	})
}

// inspectLifecycle: absent, provisioned, running, stopped (via stop), gone.
func inspectLifecycle(t *testing.T, ex executors.Executor, stop func(id int64)) {
	t.Helper()
	ctx := context.Background()
	in := ex.(executors.Inspector)
	j := executors.Job{RunnerID: "r1", ID: 7, Token: "tok"}
	h, err := ex.Plan(ctx, j)
	if err != nil {
		t.Fatal(err)
	}
	check := func(step string, want executors.HostStatus) {
		t.Helper()
		got, err := in.Inspect(ctx, h)
		if err != nil || got != want {
			t.Fatalf("%s: %+v %v, want %+v", step, got, err, want)
		}
	}
	check("planned", executors.HostStatus{})
	if _, err := ex.Provision(ctx, h, j); err != nil {
		t.Fatal(err)
	}
	check("provisioned", executors.HostStatus{Exists: true})
	if _, err := ex.Launch(ctx, h, j); err != nil {
		t.Fatal(err)
	}
	check("launched", executors.HostStatus{Exists: true, Running: true})
	stop(j.ID)
	check("stopped", executors.HostStatus{Exists: true, ExitCode: 137, Detail: "OOM killed"})
	if err := ex.Decommission(ctx, h); err != nil {
		t.Fatal(err)
	}
	check("removed", executors.HostStatus{})
}

func TestFakeInspect(t *testing.T) {
	f := NewFake()
	inspectLifecycle(t, f, func(id int64) { f.Stop("r1", id, 137, "OOM killed") })
}

func TestDirInspect(t *testing.T) {
	d := &Dir{Path: t.TempDir()}
	inspectLifecycle(t, d, func(id int64) {
		if err := os.WriteFile(filepath.Join(d.Path, "host-r1-7.exit"), []byte("137\nOOM killed\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	})
}

func TestWatchingDirReportsEnds(t *testing.T) {
	w := &WatchingDir{Dir: Dir{Path: t.TempDir()}, Every: 5 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ends := make(chan executors.End, 4)
	go w.WatchEnds(ctx, func(e executors.End) { ends <- e })
	j := executors.Job{RunnerID: "r1", ID: 9}
	h, _ := w.Plan(ctx, j)
	w.Provision(ctx, h, j)
	w.Launch(ctx, h, j)
	os.WriteFile(filepath.Join(w.Path, "host-r1-9.exit"), []byte("1\nboom\n"), 0o600)
	select {
	case e := <-ends:
		if e != (executors.End{JobID: 9, ExitCode: 1, Detail: "boom"}) {
			t.Fatalf("end %+v", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no end reported")
	}
}

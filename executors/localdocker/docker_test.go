package localdocker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/executortest"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
)

var (
	dockerOK    bool
	staticBin   string // static paas-runner, for the default base image
	innerImage  = "paas-runner-testinner:test"
	testVersion = fmt.Sprintf("test-%d", os.Getpid())
)

// TestMain prepares what the Docker tests need: a static paas-runner binary
// and a Heptapod-shaped inner image holding internal/testinner.
func TestMain(m *testing.M) {
	code := func() int {
		cli, err := localdockertest.Client()
		if err != nil {
			if localdockertest.Required() {
				fmt.Fprintln(os.Stderr, "Docker engine required (PAAS_RUNNER_REQUIRE_DOCKER) but not reachable:", err)
				return 1
			}
			fmt.Fprintln(os.Stderr, "skipping Docker tests: engine not reachable:", err)
			return m.Run()
		}
		dockerOK = true
		dir, _ := os.MkdirTemp("", "localdocker-test")
		defer os.RemoveAll(dir)
		staticBin = filepath.Join(dir, "paas-runner")
		if err := localdockertest.BuildStatic("./cmd/paas-runner", staticBin); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if err := localdockertest.BuildInnerImage(context.Background(), cli, innerImage); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer localdockertest.RemoveImage(cli, innerImage)
		defer localdockertest.RemoveImagesLabelled(cli, "org.opencontainers.image.version="+testVersion)
		return m.Run()
	}()
	os.Exit(code)
}

func needDocker(t *testing.T) {
	if !dockerOK {
		t.Skip("no Docker engine")
	}
}

// newExec returns an executor with its own state identity, and removes
// everything it labelled at the end of the test.
func newExec(t *testing.T, mutate func(*Options)) *Executor {
	t.Helper()
	o := Options{RunnerID: "glrt-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", ""))[:3], RunnerLabel: "test", RunnerURL: "http://127.0.0.1:1",
		StatePath: filepath.Join(t.TempDir(), "state.json"), InstanceID: "r_test", Binary: staticBin, Version: testVersion,
		Inner: map[string]any{"docker": map[string]any{"network_mode": "host"}}}
	if mutate != nil {
		mutate(&o)
	}
	e, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		if e.cli == nil {
			return
		}
		f := filters.NewArgs(filters.Arg("label", LabelState+"="+e.stateID))
		cs, _ := e.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
		for _, c := range cs {
			e.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
		}
		is, _ := e.cli.ImageList(ctx, image.ListOptions{Filters: f})
		for _, i := range is {
			e.cli.ImageRemove(ctx, i.ID, image.RemoveOptions{Force: true, PruneChildren: true})
		}
		e.Close()
	})
	return e
}

func payload(id int64, mode string) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"id":%d,"token":"job-token-%d","variables":[{"key":"TEST_INNER","value":%q,"public":true,"masked":false}]}`, id, id, mode))
}

func ctxT(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return c
}

func TestConformanceDefaultImage(t *testing.T) {
	needDocker(t)
	executortest.Run(t, func(t *testing.T) executortest.Subject {
		e := newExec(t, nil)
		return executortest.Subject{Executor: e, Observer: e, RunnerID: e.opts.RunnerID}
	})
}

func TestConformanceHeptapodImage(t *testing.T) {
	needDocker(t)
	executortest.Run(t, func(t *testing.T) executortest.Subject {
		e := newExec(t, func(o *Options) { o.InnerImage = innerImage; o.NetworkMode = "host" })
		return executortest.Subject{Executor: e, Observer: e, RunnerID: e.opts.RunnerID,
			Payload: func(id int64) json.RawMessage { return payload(id, "sleep") }}
	})
}

func launch(t *testing.T, e *Executor, id int64, mode string) executors.Handle {
	t.Helper()
	ctx := ctxT(t)
	j := executors.Job{RunnerID: e.opts.RunnerID, ID: id, Token: fmt.Sprintf("job-token-%d", id), Payload: payload(id, mode), TraceOffset: 7}
	h, err := e.Plan(ctx, j)
	if err != nil {
		t.Fatal(err)
	}
	if h, err = e.Provision(ctx, h, j); err != nil {
		t.Fatal(err)
	}
	if h, err = e.Launch(ctx, h, j); err != nil {
		t.Fatal(err)
	}
	return h
}

func TestHostEndIsReported(t *testing.T) {
	needDocker(t)
	e := newExec(t, func(o *Options) { o.InnerImage = innerImage; o.NetworkMode = "host" })
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	ends := make(chan executors.End, 4)
	watching := make(chan error, 1)
	go func() { watching <- e.WatchEnds(ctx, func(en executors.End) { ends <- en }) }()
	// The watch starts asynchronously; a host that stops before it is
	// subscribed would be missed here (the daemon's GitLab tracking covers
	// that), so wait until the events stream is open by launching twice.
	var got executors.End
	for id := int64(41); got.JobID == 0; id++ {
		h := launch(t, e, id, "crash")
		t.Cleanup(func() { e.Decommission(context.Background(), h) })
		select {
		case got = <-ends:
		case <-time.After(20 * time.Second):
			if id > 45 {
				t.Fatal("no end reported")
			}
		}
	}
	// (GitLab at 127.0.0.1:1 is unreachable: testinner fails its trace and exits 3)
	// (stdout and stderr lines may come in either order)
	if got.ExitCode != 3 || !strings.Contains(got.Detail, "last output: ") || !strings.Contains(got.Detail, "testinner: running job") {
		t.Fatalf("end %+v", got)
	}
}

func TestReapSparesOthers(t *testing.T) {
	needDocker(t)
	e := newExec(t, func(o *Options) { o.InnerImage = innerImage; o.NetworkMode = "host" })
	other := newExec(t, func(o *Options) { o.InnerImage = innerImage; o.NetworkMode = "host"; o.RunnerID = e.opts.RunnerID })
	kept := launch(t, e, 51, "sleep")
	orphan := launch(t, e, 52, "sleep")
	foreign := launch(t, other, 152, "sleep") // same runner, another daemon (state file)
	ctx := ctxT(t)
	// an unlabelled container
	unl, err := e.cli.ContainerCreate(ctx, &container.Config{Image: innerImage, Cmd: []string{"x"}}, nil, nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.cli.ContainerRemove(context.Background(), unl.ID, container.RemoveOptions{Force: true}) })
	removed, err := e.Reap(ctx, []executors.Handle{kept}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _, _ := e.Observe(ctx, orphan); ok {
		t.Fatalf("orphan left (removed %v)", removed)
	}
	if ok, _, _ := e.Observe(ctx, kept); !ok {
		t.Fatal("kept host removed")
	}
	if ok, _, _ := other.Observe(ctx, foreign); !ok {
		t.Fatal("another daemon's host removed")
	}
	if _, err := e.cli.ContainerInspect(ctx, unl.ID); err != nil {
		t.Fatal("unlabelled container removed")
	}
	// within the grace period nothing is removed
	late := launch(t, e, 53, "sleep")
	if removed, _ := e.Reap(ctx, []executors.Handle{kept}, time.Hour); len(removed) != 0 {
		t.Fatalf("removed within grace: %v", removed)
	}
	_ = late
}

func TestLaunchIsNotRepeated(t *testing.T) {
	needDocker(t)
	e := newExec(t, func(o *Options) { o.InnerImage = innerImage; o.NetworkMode = "host" })
	h := launch(t, e, 61, "sleep")
	ctx := ctxT(t)
	hd, _ := decodeHandle(h)
	before, _ := e.cli.ContainerInspect(ctx, hd.Container)
	j := executors.Job{RunnerID: e.opts.RunnerID, ID: 61, Payload: payload(61, "sleep")}
	if _, err := e.Launch(ctx, h, j); err != nil {
		t.Fatal(err)
	}
	after, _ := e.cli.ContainerInspect(ctx, hd.Container)
	if before.State.StartedAt != after.State.StartedAt || after.RestartCount != 0 {
		t.Fatal("started twice")
	}
	// after it stopped (crash), Launch still does not start it again
	e.cli.ContainerKill(ctx, hd.Container, "KILL")
	e.cli.ContainerWait(ctx, hd.Container, container.WaitConditionNotRunning)
	if _, err := e.Launch(ctx, h, j); err != nil {
		t.Fatal(err)
	}
	final, _ := e.cli.ContainerInspect(ctx, hd.Container)
	if final.State.Running || final.State.StartedAt != before.State.StartedAt {
		t.Fatal("a stopped host was started again")
	}
}

func TestNameConflict(t *testing.T) {
	needDocker(t)
	e := newExec(t, func(o *Options) { o.InnerImage = innerImage; o.NetworkMode = "host" })
	ctx := ctxT(t)
	j := executors.Job{RunnerID: e.opts.RunnerID, ID: 71, Payload: payload(71, "sleep")}
	h, _ := e.Plan(ctx, j)
	hd, _ := decodeHandle(h)
	c, err := e.cli.ContainerCreate(ctx, &container.Config{Image: innerImage, Cmd: []string{"x"}}, nil, nil, nil, hd.Container)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.cli.ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true}) })
	_, err = e.Launch(ctx, h, j)
	if err == nil || !executors.IsPermanent(err) || !strings.Contains(err.Error(), "does not belong to this job") {
		t.Fatalf("got %v", err)
	}
}

func TestBadInputs(t *testing.T) {
	needDocker(t)
	t.Run("unreachable engine", func(t *testing.T) {
		e := newExec(t, func(o *Options) { o.Host = "unix:///nonexistent/docker.sock" })
		err := e.Check(ctxT(t))
		if err == nil || !strings.Contains(err.Error(), "unix:///nonexistent/docker.sock is not reachable") {
			t.Fatalf("got %v", err)
		}
		j := executors.Job{RunnerID: "x", ID: 1, Payload: payload(1, "")}
		h, _ := e.Plan(ctxT(t), j)
		if _, err := e.Provision(ctxT(t), h, j); err == nil || executors.IsPermanent(err) {
			t.Fatalf("provision: %v (want a transient error)", err)
		}
	})
	t.Run("image build failure", func(t *testing.T) {
		e := newExec(t, func(o *Options) { o.InnerImage = "127.0.0.1:1/nope/missing:1" })
		ctx := ctxT(t)
		j := executors.Job{RunnerID: e.opts.RunnerID, ID: 2, Payload: payload(2, "")}
		h, _ := e.Plan(ctx, j)
		_, err := e.Launch(ctx, h, j)
		if err == nil || !executors.IsPermanent(err) || !strings.Contains(err.Error(), "building the job's host image") || !strings.Contains(err.Error(), "127.0.0.1:1") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("bad host scheme", func(t *testing.T) {
		if _, err := New(Options{Host: "http://x", RunnerID: "r", RunnerURL: "http://g"}); err == nil {
			t.Fatal("accepted")
		}
	})
}

var updateGolden = os.Getenv("UPDATE_GOLDEN") != ""

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if updateGolden {
		os.MkdirAll("testdata", 0o755)
		os.WriteFile(p, got, 0o644)
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (UPDATE_GOLDEN=1 writes it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestBuildContextGolden(t *testing.T) {
	inner := map[string]any{
		"docker":      map[string]any{"network_mode": "host", "pull_policy": "if-not-present", "volumes": []any{"/cache"}},
		"cache":       map[string]any{"Type": "s3", "Shared": true},
		"environment": []any{"GIT_DEPTH=20"},
		"token":       "glrt-must-not-appear", "cc_token": "secret", "host": "unix:///x",
	}
	p := json.RawMessage(`{"id":7,"token":"jt","image":{"name":"debian:12"},"services":[{"name":"tutum/wordpress"}],
"variables":[{"key":"CI_DEPENDENCY_PROXY_GROUP_IMAGE_PREFIX","value":"gl.example:443/g/dependency_proxy/containers","public":true,"masked":false}]}`)
	for _, mode := range []struct{ name, inner string }{{"default", ""}, {"heptapod", "registry.example/heptapod-runner:0.7.0"}} {
		e := &Executor{opts: Options{RunnerID: "glrt-abc", RunnerLabel: "my-runner", RunnerURL: "https://gitlab.example", Inner: inner, InnerImage: mode.inner, Version: "1.2.3"},
			baseTagV: "paas-runner-host:1.2.3"}
		bc, err := e.Context(executors.Job{ID: 7, Payload: p, TraceOffset: 321})
		if err != nil {
			t.Fatal(err)
		}
		golden(t, mode.name+".Dockerfile", bc.Dockerfile)
		golden(t, mode.name+".runner.toml", bc.RunnerTOML)
		golden(t, mode.name+".job.json", bc.JobJSON)
		for _, secret := range []string{"glrt-must-not-appear", "secret", "unix:///x"} {
			if bytes.Contains(bc.RunnerTOML, []byte(secret)) {
				t.Errorf("runner.toml leaks %q", secret)
			}
		}
	}
	golden(t, "base.Dockerfile", baseDockerfile())
}

func TestDynamicBinaryRefused(t *testing.T) {
	dyn, err := os.ReadFile("/bin/sh") // dynamically linked on Debian
	if err != nil {
		t.Skip(err)
	}
	if err := checkStatic(dyn); err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Fatalf("got %v", err)
	}
	if staticBin != "" {
		data, _ := os.ReadFile(staticBin)
		if err := checkStatic(data); err != nil {
			t.Fatalf("static binary refused: %v", err)
		}
	}
}

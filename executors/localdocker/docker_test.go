package localdocker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/executortest"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
	"gitlab.com/paas-runner/paas-runner/internal/labels"
)

var (
	dockerOK    bool
	staticBin   string                                                     // static paas-runner, for the default base image
	innerImage  = fmt.Sprintf("paas-runner-testinner:test%d", os.Getpid()) // per process: other worktrees' runs share the engine
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

// testID is a stable, test-unique suffix.
func testID(t testing.TB, n int) string {
	sum := sha256.Sum256([]byte(fmt.Sprintf("%s-%d", t.Name(), os.Getpid())))
	return hex.EncodeToString(sum[:])[:n]
}

// newExec returns an executor with its own system_id and runner ID, and
// removes everything labelled with that system_id at the end of the test.
func newExec(t *testing.T, mutate func(*Options)) *Executor {
	t.Helper()
	o := Options{RunnerID: "t" + testID(t, 7), RunnerLabel: "test", RunnerURL: "http://127.0.0.1:1",
		SystemID: "r_" + testID(t, 12), Binary: staticBin, Version: testVersion,
		Inner: map[string]any{"docker": map[string]any{"network_mode": "host"}}}
	if mutate != nil {
		mutate(&o)
	}
	e, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cleanSystem(e.cli, e.opts.SystemID)
		e.Close()
	})
	return e
}

// cleanSystem removes the containers, networks and volumes labelled with
// a system_id.
func cleanSystem(cli *client.Client, systemID string) {
	ctx := context.Background()
	f := filters.NewArgs(filters.Arg("label", labels.LabelSystemID+"="+systemID))
	cs, _ := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	for _, c := range cs {
		cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
	}
	ns, _ := cli.NetworkList(ctx, network.ListOptions{Filters: f})
	for _, n := range ns {
		cli.NetworkRemove(ctx, n.ID)
	}
	vs, _ := cli.VolumeList(ctx, volume.ListOptions{Filters: f})
	for _, v := range vs.Volumes {
		cli.VolumeRemove(ctx, v.Name, true)
	}
}

// conformance adapts the executor to the conformance suite's inspector:
// the host exists while its container does; launched once it started.
type conformance struct{ e *Executor }

func (c conformance) Observe(ctx context.Context, h executors.Handle) (bool, int, error) {
	hd, err := decodeHandle(h)
	if err != nil {
		return false, 0, err
	}
	info, err := c.e.cli.ContainerInspect(ctx, hd.Container)
	if cerrdefs.IsNotFound(err) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, err
	}
	if started(info) {
		return true, 1, nil
	}
	return true, 0, nil
}

func payload(id int64, mode string) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"id":%d,"token":"job-token-%d","variables":[{"key":"TEST_INNER","value":%q,"public":true,"masked":false},`+
		`{"key":"TEST_SPAWN_IMAGE","value":%q,"public":true,"masked":false}]}`, id, id, mode, innerImage))
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
		return executortest.Subject{Executor: e, Observer: conformance{e}, RunnerID: e.opts.RunnerID}
	})
}

func TestConformanceHeptapodImage(t *testing.T) {
	needDocker(t)
	executortest.Run(t, func(t *testing.T) executortest.Subject {
		e := newExec(t, func(o *Options) { o.InnerImage = innerImage; o.NetworkMode = "host" })
		return executortest.Subject{Executor: e, Observer: conformance{e}, RunnerID: e.opts.RunnerID,
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

func exists(t *testing.T, e *Executor, h executors.Handle) bool {
	t.Helper()
	st, err := e.Inspect(ctxT(t), h)
	if err != nil {
		t.Fatal(err)
	}
	return st.Exists
}

// waitExited waits for a host container to stop.
func waitExited(t *testing.T, e *Executor, h executors.Handle) {
	t.Helper()
	hd, _ := decodeHandle(h)
	wc, errc := e.cli.ContainerWait(ctxT(t), hd.Container, container.WaitConditionNotRunning)
	select {
	case <-wc:
	case err := <-errc:
		t.Fatal(err)
	}
}

// A host that stops is reported with its exit status and last lines, also
// when it stopped after the executor was made but before the watch began
// (the daemon starts watching after it inspected the hosts at resume).
func TestHostEndIsReported(t *testing.T) {
	needDocker(t)
	e := newExec(t, func(o *Options) { o.InnerImage = innerImage; o.NetworkMode = "host" })
	h := launch(t, e, 41, "crash")
	waitExited(t, e, h)
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	ends := make(chan executors.End, 4)
	go e.WatchEnds(ctx, func(en executors.End) { ends <- en })
	var got executors.End
	select {
	case got = <-ends:
	case <-ctx.Done():
		t.Fatal("no end reported")
	}
	// (GitLab at 127.0.0.1:1 is unreachable: testinner fails its trace and exits 3)
	// (stdout and stderr lines may come in either order)
	if got.JobID != 41 || got.ExitCode != 3 || !strings.Contains(got.Detail, "last output: ") || !strings.Contains(got.Detail, "testinner: running job") {
		t.Fatalf("end %+v", got)
	}
	// a watch that starts again (after an error) goes on from the last
	// event seen: a host that ends meanwhile is reported
	cancel()
	h2 := launch(t, e, 42, "crash")
	waitExited(t, e, h2)
	ctx2, cancel2 := context.WithCancel(ctxT(t))
	defer cancel2()
	go e.WatchEnds(ctx2, func(en executors.End) { ends <- en })
	for got.JobID != 42 {
		select {
		case got = <-ends:
		case <-ctx2.Done():
			t.Fatal("no end reported after the watch restarted")
		}
	}
}

// Two daemons (two system_ids) on one engine, serving the same runner:
// neither reaps, adopts, removes nor watches the other's hosts.
func TestReapSparesOthers(t *testing.T) {
	needDocker(t)
	e := newExec(t, func(o *Options) { o.InnerImage = innerImage; o.NetworkMode = "host" })
	other := newExec(t, func(o *Options) {
		o.InnerImage = innerImage
		o.NetworkMode = "host"
		o.SystemID = "r_o" + testID(t, 11)
	})
	otherRunner := newExec(t, func(o *Options) {
		o.InnerImage = innerImage
		o.NetworkMode = "host"
		o.RunnerID = "u" + testID(t, 7)
	})
	kept := launch(t, e, 51, "sleep")
	orphan := launch(t, e, 52, "sleep")
	foreign := launch(t, other, 152, "sleep")             // same runner, another daemon
	foreignRunner := launch(t, otherRunner, 252, "sleep") // same daemon, another runner
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
	if exists(t, e, orphan) {
		t.Fatalf("orphan left (removed %v)", removed)
	}
	if !exists(t, e, kept) {
		t.Fatal("kept host removed")
	}
	if !exists(t, other, foreign) || !exists(t, otherRunner, foreignRunner) {
		t.Fatal("another daemon's or another runner's host removed")
	}
	if _, err := e.cli.ContainerInspect(ctx, unl.ID); err != nil {
		t.Fatal("unlabelled container removed")
	}
	// within the grace period nothing is removed
	launch(t, e, 53, "sleep")
	if removed, _ := e.Reap(ctx, []executors.Handle{kept}, time.Hour); len(removed) != 0 {
		t.Fatalf("removed within grace: %v", removed)
	}

	// The other daemon's host has the name this daemon would give job
	// 152: this daemon neither adopts, removes nor inspects it as its own.
	j := executors.Job{RunnerID: e.opts.RunnerID, ID: 152, Payload: payload(152, "sleep")}
	mine, _ := e.Plan(ctx, j)
	if _, err := e.Launch(ctx, mine, j); err == nil || !executors.IsPermanent(err) || !strings.Contains(err.Error(), "not this daemon's host") {
		t.Fatalf("launch over another daemon's host: %v", err)
	}
	if st, _ := e.Inspect(ctx, mine); st.Exists {
		t.Fatalf("another daemon's host inspected as this one's: %+v", st)
	}
	if err := e.Decommission(ctx, mine); err != nil {
		t.Fatal(err)
	}
	if !exists(t, other, foreign) {
		t.Fatal("another daemon's host removed by decommission")
	}
	// and its end is not reported to this daemon
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ends := make(chan executors.End, 8)
	go e.WatchEnds(wctx, func(en executors.End) { ends <- en })
	other.Decommission(ctx, foreign)
	otherRunner.Decommission(ctx, foreignRunner)
	e.Decommission(ctx, kept) // an end of this daemon's, after the others
	for {
		select {
		case en := <-ends:
			if en.JobID == 152 || en.JobID == 252 {
				t.Fatalf("another daemon's or runner's end reported: %+v", en)
			}
			if en.JobID == 51 {
				return
			}
		case <-wctx.Done():
			t.Fatal("this daemon's host end not reported")
		}
	}
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
	if err == nil || !executors.IsPermanent(err) || !strings.Contains(err.Error(), "not this daemon's host for job 71") {
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
	t.Run("inner image missing", func(t *testing.T) {
		e := newExec(t, func(o *Options) { o.InnerImage = "127.0.0.1:1/nope/missing:1" })
		ctx := ctxT(t)
		j := executors.Job{RunnerID: e.opts.RunnerID, ID: 2, Payload: payload(2, "")}
		h, _ := e.Plan(ctx, j)
		_, err := e.Provision(ctx, h, j)
		if err == nil || !executors.IsPermanent(err) || !strings.Contains(err.Error(), "inner image 127.0.0.1:1/nope/missing:1 is not on the engine and pulling it failed") {
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

func TestHostFilesGolden(t *testing.T) {
	inner := map[string]any{
		"docker":      map[string]any{"network_mode": "host", "pull_policy": "if-not-present", "volumes": []any{"/cache"}},
		"cache":       map[string]any{"Type": "s3", "Shared": true},
		"environment": []any{"GIT_DEPTH=20"},
		"token":       "glrt-must-not-appear", "cc_token": "secret", "host": "unix:///x",
	}
	p := json.RawMessage(`{"id":7,"token":"jt","image":{"name":"debian:12"},"services":[{"name":"tutum/wordpress"}],
"variables":[{"key":"CI_DEPENDENCY_PROXY_GROUP_IMAGE_PREFIX","value":"gl.example:443/g/dependency_proxy/containers","public":true,"masked":false}]}`)
	e := &Executor{opts: Options{RunnerID: "tabc1234", SystemID: "r_0123456789ab", RunnerLabel: "my-runner", RunnerURL: "https://gitlab.example", Inner: inner, Version: "1.2.3"}}
	crc := uint32(99)
	f, err := e.Files(executors.Job{ID: 7, Payload: p, TraceOffset: 321, TraceCRC: &crc})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "runner.toml", f.RunnerTOML)
	golden(t, "job.json", f.JobJSON)
	for _, secret := range []string{"glrt-must-not-appear", "secret", "unix:///x"} {
		if bytes.Contains(f.RunnerTOML, []byte(secret)) {
			t.Errorf("runner.toml leaks %q", secret)
		}
	}
	golden(t, "base.changes", []byte(strings.Join(baseChanges("1.2.3"), "\n")+"\n"))
}

func TestShapeOf(t *testing.T) {
	if s := shapeOf(map[string]string{LabelHostImage: "paas-runner"}); s.Name != "paas-runner" {
		t.Fatal(s)
	}
	for _, l := range []map[string]string{nil, {LabelHostImage: ""}, {"other": "x"}} {
		if s := shapeOf(l); s.Name != "heptapod" || s.Entrypoint[0] != "/usr/bin/gitlab-runner" {
			t.Fatal(l, s)
		}
	}
	for _, s := range []shape{paasShape, heptapodShape} {
		toml, job, err := filePaths(s.Entrypoint)
		if err != nil || !strings.HasSuffix(toml, "/runner.toml") || !strings.HasSuffix(job, "/job.json") {
			t.Fatal(toml, job, err)
		}
	}
	if _, _, err := filePaths([]string{"/bin/x"}); err == nil {
		t.Fatal("accepted")
	}
}

func TestDynamicBinaryRefused(t *testing.T) {
	dyn, err := os.ReadFile("/bin/sh") // dynamically linked on Debian
	if err != nil {
		t.Skip(err)
	}
	if err := checkStatic(bytes.NewReader(dyn)); err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Fatalf("got %v", err)
	}
	if staticBin != "" {
		data, _ := os.ReadFile(staticBin)
		if err := checkStatic(bytes.NewReader(data)); err != nil {
			t.Fatalf("static binary refused: %v", err)
		}
	}
}

// The base image removed behind the daemon's back (e.g. by an admin's
// prune): the next attempt makes it again.
func TestBaseImageRemovedMeanwhile(t *testing.T) {
	needDocker(t)
	e := newExec(t, nil)
	ctx := ctxT(t)
	j := executors.Job{RunnerID: e.opts.RunnerID, ID: 131, Payload: payload(131, "sleep")}
	h, _ := e.Plan(ctx, j)
	if _, err := e.Provision(ctx, h, j); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cli.ImageRemove(ctx, e.base.Tag(), image.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Launch(ctx, h, j); err == nil || executors.IsPermanent(err) {
		t.Fatalf("launch without the base image: %v (want a transient error)", err)
	}
	if _, err := e.Launch(ctx, h, j); err != nil {
		t.Fatalf("the retry: %v", err)
	}
	if !exists(t, e, h) {
		t.Fatal("no host")
	}
}

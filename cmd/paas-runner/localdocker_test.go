package main_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
)

var (
	innerOnce sync.Once
	innerErr  error
	innerCli  *client.Client
)

// Test images are tagged per process: other worktrees' test runs (which
// remove their images at the end) share the engine.
var (
	innerTag   = fmt.Sprintf("paas-runner-testinner:cmd%d", os.Getpid())
	busyboxTag = fmt.Sprintf("paas-runner-test-busybox:cmd%d", os.Getpid())
)

// dockerInner returns a client, with the test inner image built, or skips.
func dockerInner(t *testing.T) *client.Client {
	t.Helper()
	innerOnce.Do(func() {
		innerCli, innerErr = localdockertest.Client()
		if innerErr == nil {
			innerErr = localdockertest.BuildInnerImage(context.Background(), innerCli, innerTag)
		}
	})
	if innerErr != nil {
		if localdockertest.Required() {
			t.Fatalf("Docker required: %v", innerErr)
		}
		t.Skipf("no Docker engine: %v", innerErr)
	}
	return innerCli
}

// ldRunner is one local-docker [[runners]] entry: its token, and TOML
// written after its url, token and executor lines.
type ldRunner struct{ token, extra string }

// hostNetworkNoPull: hosts on the host network (to reach the fake GitLab
// on 127.0.0.1), job images only from the local engine.
const hostNetworkNoPull = "  [runners.local_docker]\n  network_mode = \"host\"\n  [runners.docker]\n  pull_policy = \"never\""

// localDockerConfig starts a fake GitLab knowing the runners' tokens and
// writes a configuration: globals, a state file in a temporary directory,
// then the runners. It returns the fake, the directory and the file.
func localDockerConfig(t testing.TB, globals string, runners ...ldRunner) (*coordinatortest.Server, string, string) {
	t.Helper()
	gl := coordinatortest.New(t)
	dir := t.TempDir()
	var b strings.Builder
	fmt.Fprintf(&b, "%s\nstate_file = %q\n", globals, filepath.Join(dir, "state.json"))
	for _, r := range runners {
		gl.AddRunner(r.token)
		fmt.Fprintf(&b, "\n[[runners]]\nurl = %q\ntoken = %q\nexecutor = \"local-docker\"\n%s\n", gl.URL, r.token, r.extra)
	}
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return gl, dir, cfg
}

// cleanRunner removes a runner's labelled containers now and at the end of
// the test, whatever a failed earlier run left behind.
func cleanRunner(t *testing.T, cli *client.Client, runner string) {
	clean := func() {
		f := filters.NewArgs(filters.Arg("label", localdocker.LabelManaged+"=true"), filters.Arg("label", localdocker.LabelRunner+"="+runner))
		cs, _ := cli.ContainerList(context.Background(), container.ListOptions{All: true, Filters: f})
		for _, c := range cs {
			cli.ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true})
		}
		localdockertest.RemoveImagesLabelled(cli, localdocker.LabelRunner+"="+runner)
	}
	clean()
	t.Cleanup(clean)
}

// waitNoHosts waits until the runners have no container or job image left.
func waitNoHosts(t *testing.T, cli *client.Client, runners ...string) {
	t.Helper()
	deadline := time.Now().Add(procWait)
	for {
		left := 0
		for _, r := range runners {
			c, i := ours(t, cli, r)
			left += c + i
		}
		if left == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d hosts' containers and images left", left)
		}
		time.Sleep(50 * time.Millisecond) // the daemon, another process, removes them
	}
}

// ours lists containers and job images labelled with this test's runner.
func ours(t testing.TB, cli *client.Client, runner string) (containers, images int) {
	f := filters.NewArgs(filters.Arg("label", localdocker.LabelRunner+"="+runner), filters.Arg("label", localdocker.LabelManaged+"=true"))
	cs, err := cli.ContainerList(context.Background(), container.ListOptions{All: true, Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	is, err := cli.ImageList(context.Background(), image.ListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	return len(cs), len(is)
}

func TestLocalDockerEndToEnd(t *testing.T) {
	cli := dockerInner(t)
	good, bad := "glrt-ldok-0123456789", "glrt-ldbad-0123456789"
	gl, dir, cfg := localDockerConfig(t, "concurrent = 4\ncheck_interval = 0.1",
		ldRunner{good, fmt.Sprintf("name = \"local\"\nheptapod_runner_main_image = %q\n  [runners.local_docker]\n  network_mode = \"host\"\n  [runners.docker]\n  network_mode = \"host\"", innerTag)},
		ldRunner{bad, "name = \"broken-image\"\ninner_image = \"127.0.0.1:1/missing/image:1\""})
	e := &env{t: t, dir: dir, config: cfg, gl: gl}
	cleanRunner(t, cli, config.RunnerID(good))
	cleanRunner(t, cli, config.RunnerID(bad))
	p := e.start("")
	ok := gl.Enqueue(good, nil)
	crash := gl.Enqueue(good, map[string]any{"variables": []map[string]any{{"key": "TEST_INNER", "value": "crash", "public": true, "masked": false}}})
	broken := gl.Enqueue(bad, nil)

	gl.WaitFor(procWait, "job results", func(s *coordinatortest.Server) bool {
		return s.StatusOf(ok.ID) == "success" && s.StatusOf(crash.ID) == "failed" && s.StatusOf(broken.ID) == "failed"
	})
	okTrace := string(gl.Job(ok.ID).Trace)
	for _, want := range []string{"paas-runner: provisioning a local-docker host", "paas-runner: host ready after", "testinner: running job"} {
		if !strings.Contains(okTrace, want) {
			t.Errorf("successful job's log lacks %q:\n%s", want, okTrace)
		}
	}
	cj := gl.Job(crash.ID)
	if cj.FailureReason != "runner_system_failure" || !strings.Contains(string(cj.Trace), "stopped before the job reported a result (exit status 3") {
		t.Errorf("crashed job: %s\n%s", cj.FailureReason, cj.Trace)
	}
	bj := gl.Job(broken.ID)
	if bj.FailureReason != "runner_system_failure" || !strings.Contains(string(bj.Trace), "inner image 127.0.0.1:1/missing/image:1 is not on the engine and pulling it failed") || !strings.Contains(string(bj.Trace), "127.0.0.1:1") {
		t.Errorf("broken image job: %s\n%s", bj.FailureReason, bj.Trace)
	}
	// every host removed, promptly: the engine's events say when a host stops
	waitNoHosts(t, cli, config.RunnerID(good), config.RunnerID(bad))
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// BenchmarkDecommissionLag: through the real daemon and engine, the time
// from a job's final report to GitLab (its host exits right after) to the
// host container being gone.
func BenchmarkDecommissionLag(b *testing.B) {
	cli, err := localdockertest.Client()
	if err != nil {
		b.Skip("no Docker engine")
	}
	if err := localdockertest.BuildInnerImage(context.Background(), cli, innerTag); err != nil {
		b.Fatal(err)
	}
	tok := "glrt-lag-0123456789"
	// check_interval is long: the end must be seen through engine events,
	// not GitLab polling.
	gl, _, cfg := localDockerConfig(b, "concurrent = 4\ncheck_interval = 30\npaas_max_concurrent_provisioning = 4",
		ldRunner{tok, fmt.Sprintf("inner_image = %q\n  [runners.local_docker]\n  network_mode = \"host\"", innerTag)})
	cmd := exec.Command(binary, cfg)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	b.ResetTimer()
	var jobs []*coordinatortest.Job
	for i := 0; i < b.N; i++ {
		jobs = append(jobs, gl.Enqueue(tok, nil))
	}
	// Watch every host: note when each container, once seen, is gone.
	goneAt := map[int64]time.Time{}
	seen := map[int64]bool{}
	deadline := time.Now().Add(10 * time.Minute)
	for len(goneAt) < len(jobs) && time.Now().Before(deadline) {
		for _, j := range jobs {
			if _, done := goneAt[j.ID]; done {
				continue
			}
			_, err := cli.ContainerInspect(context.Background(), fmt.Sprintf("paas-job-%s-%d", config.RunnerID(tok), j.ID))
			switch {
			case err == nil:
				seen[j.ID] = true
			case cerrdefs.IsNotFound(err) && seen[j.ID]:
				goneAt[j.ID] = time.Now()
			}
		}
		time.Sleep(10 * time.Millisecond) // measuring resolution
	}
	var lags []time.Duration
	for _, j := range jobs {
		if fin := gl.Job(j.ID).FinishedAt; !fin.IsZero() && !goneAt[j.ID].IsZero() {
			lags = append(lags, goneAt[j.ID].Sub(fin))
		}
	}
	if len(lags) < len(jobs) {
		b.Fatalf("only %d of %d hosts seen removed after their job ended", len(lags), len(jobs))
	}
	b.StopTimer()
	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	b.ReportMetric(float64(lags[len(lags)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(lags[len(lags)*9/10].Milliseconds()), "p90-ms")
}

// The whole chain with nothing borrowed: the daemon provisions a host on
// its own base image (this binary), whose exec-fetched-job fetches the
// sources and runs the script in a busybox job image.
func TestLocalDockerDefaultImageRunsJob(t *testing.T) {
	cli := dockerInner(t)
	jobImage := busyboxTag
	if err := localdockertest.BuildBusyboxImage(context.Background(), cli, jobImage); err != nil {
		t.Fatal(err)
	}
	tok := "glrt-ldreal-0123456789"
	gl, dir, cfg := localDockerConfig(t, "concurrent = 2\ncheck_interval = 0.1", ldRunner{tok, "name = \"real\"\n" + hostNetworkNoPull})
	e := &env{t: t, dir: dir, config: cfg, gl: gl}
	cleanRunner(t, cli, config.RunnerID(tok))
	p := e.start("")
	jobToken := "glcbt-real-job-token-0001"
	repo, sha := localdockertest.GitServer(t, jobToken)
	q := gl.Enqueue(tok, map[string]any{
		"token": jobToken,
		"image": map[string]any{"name": jobImage},
		"git_info": map[string]any{"repo_url": repo, "ref": "main", "sha": sha, "ref_type": "branch", "depth": 1,
			"refspecs": []string{"+refs/heads/main:refs/remotes/origin/main"}},
		"steps":     []map[string]any{{"name": "script", "script": []string{"cat README", "echo job token is $CI_JOB_TOKEN"}, "timeout": 600, "when": "on_success"}},
		"variables": []map[string]any{{"key": "CI_JOB_TOKEN", "value": jobToken, "public": false, "masked": true}},
	})
	gl.WaitFor(procWait, "the job to succeed", func(s *coordinatortest.Server) bool { return jobFinal(s.StatusOf(q.ID)) })
	got := gl.Job(q.ID)
	tr := string(got.Trace)
	if got.Status != "success" {
		t.Fatalf("job %s:\n%s", got.Status, tr)
	}
	for _, want := range []string{"paas-runner: host ready", "$ cat README", "hello from the repository", "job token is [MASKED]", "Job succeeded"} {
		if !strings.Contains(tr, want) {
			t.Errorf("log lacks %q:\n%s", want, tr)
		}
	}
	last := got.Updates[len(got.Updates)-1]
	if out, _ := last["output"].(map[string]any); out["checksum"] != coordinator.Checksum(got.Trace) {
		t.Errorf("checksum %v, log's is %s", out["checksum"], coordinator.Checksum(got.Trace))
	}
	waitNoHosts(t, cli, config.RunnerID(tok))
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

func jobFinal(st string) bool { return st == "success" || st == "failed" || st == "canceled" }

// BenchmarkJobStartToFirstLine: from GitLab handing a busybox job with a
// small repository out to the first script output line in its log,
// through the daemon, a local-docker host on the default image, the inner
// runner (go-git fetch, job container).
func BenchmarkJobStartToFirstLine(b *testing.B) {
	cli, err := localdockertest.Client()
	if err != nil {
		b.Skip("no Docker engine")
	}
	const jobImage = "paas-runner-test-busybox:bench"
	if err := localdockertest.BuildBusyboxImage(context.Background(), cli, jobImage); err != nil {
		b.Fatal(err)
	}
	defer localdockertest.RemoveImage(cli, jobImage)
	tok := "glrt-first-0123456789"
	gl, _, cfg := localDockerConfig(b, "concurrent = 2\ncheck_interval = 0.05", ldRunner{tok, hostNetworkNoPull})
	cmd := exec.Command(binary, cfg)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		// let the last host go before stopping the daemon
		for deadline := time.Now().Add(procWait); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if c, i := ours(b, cli, config.RunnerID(tok)); c+i == 0 {
				break
			}
		}
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		jobToken := fmt.Sprintf("glcbt-bench-%d-%d", i, time.Now().UnixNano())
		repo, sha := localdockertest.GitServer(b, jobToken)
		marker := fmt.Sprintf("first-line-%d", i)
		q := gl.Enqueue(tok, map[string]any{
			"token": jobToken, "image": map[string]any{"name": jobImage},
			"git_info": map[string]any{"repo_url": repo, "ref": "main", "sha": sha, "ref_type": "branch", "depth": 1,
				"refspecs": []string{"+refs/heads/main:refs/remotes/origin/main"}},
			"steps": []map[string]any{{"name": "script", "script": []string{"echo " + marker}, "timeout": 600, "when": "on_success"}},
		})
		for !strings.Contains(string(gl.Job(q.ID).Trace), "\n"+marker) {
			time.Sleep(5 * time.Millisecond) // measuring resolution
		}
		lat = append(lat, time.Since(gl.Job(q.ID).AcquiredAt))
		gl.WaitFor(procWait, "job end", func(s *coordinatortest.Server) bool { return jobFinal(s.StatusOf(q.ID)) })
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*9/10].Milliseconds()), "p90-ms")
}

// An unreachable engine: a clear error at start, and each job failed with
// runner_system_failure and the reason in its log, after the retries.
func TestLocalDockerUnreachableEngine(t *testing.T) {
	tok := "glrt-nodock-0123456789"
	gl, dir, cfg := localDockerConfig(t, "check_interval = 0.05",
		ldRunner{tok, "  [runners.local_docker]\n  host = \"unix:///nonexistent/docker.sock\""})
	e := &env{t: t, dir: dir, config: cfg, gl: gl}
	p := e.start("")
	q := gl.Enqueue(tok, nil)
	gl.WaitFor(procWait, "the job to fail", func(s *coordinatortest.Server) bool { return jobFinal(s.StatusOf(q.ID)) })
	got := gl.Job(q.ID)
	if got.Status != "failed" || got.FailureReason != "runner_system_failure" ||
		!strings.Contains(string(got.Trace), "unix:///nonexistent/docker.sock is not reachable") || !strings.Contains(string(got.Trace), "(5 attempts)") {
		t.Fatalf("%s %s\n%s", got.Status, got.FailureReason, got.Trace)
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if !strings.Contains(p.log(), "the Docker engine is not reachable") {
		t.Errorf("no clear error at start:\n%s", p.log())
	}
}

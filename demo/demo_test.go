package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
)

// The demo is what a newcomer runs first: it must pass as it is, and it
// checks itself (every job as expected, no token in any log, nothing
// left).
func TestDemo(t *testing.T) {
	cli := engine(t)
	bin := buildDaemon(t)
	hostTag := newHostImage(t, cli, bin)
	var out, errb bytes.Buffer
	var secrets []string
	code := runDemo([]string{"--binary", bin}, &out, &errb, &secrets)
	if code != 0 {
		t.Fatalf("demo exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	for _, want := range []string{"queued → running", "host ready after", "running → failed (script_failure)", "AS EXPECTED", "ended as expected"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if len(secrets) != 1+len(pipeline()) {
		t.Fatalf("%d tokens of the run known, want the runner's and %d jobs'", len(secrets), len(pipeline()))
	}
	if l := leaked(out.String()+errb.String(), secrets); len(l) > 0 {
		t.Errorf("%d tokens in the demo's output:\n%s", len(l), out.String())
	}
	if left := leftovers(t, cli, runID, hostTag); len(left) > 0 {
		t.Errorf("the demo left %v", left)
	}
}

// Interrupted as from a terminal (Ctrl-C: SIGINT to the demo and the
// daemon, its child, at once) while jobs run on their hosts, the demo
// stops the daemon, removes what it made (hosts, their volumes, its job
// image, its temporary directory) and exits 130.
func TestDemoInterrupted(t *testing.T) {
	cli := engine(t)
	bin := buildDaemon(t)
	hostTag := newHostImage(t, cli, bin)
	demoBin := filepath.Join(t.TempDir(), "demo")
	if out, err := exec.Command("go", "build", "-o", demoBin, ".").CombinedOutput(); err != nil {
		t.Fatalf("building the demo: %v\n%s", err, out)
	}
	cmd := exec.Command(demoBin, "--binary", bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // a terminal's process group
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	imageRe := regexp.MustCompile(`building the job image paas-runner-demo-busybox:([0-9a-f]+)`)
	dirRe := regexp.MustCompile(`log (\S+)/paas-runner\.log, kept`)
	var id, dir string
	var out strings.Builder
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		out.WriteString(line + "\n")
		if m := imageRe.FindStringSubmatch(line); m != nil {
			id = m[1]
		}
		if m := dirRe.FindStringSubmatch(line); m != nil {
			dir = m[1]
		}
		if strings.Contains(line, "host ready after") {
			break
		}
	}
	if id == "" || dir == "" || !strings.Contains(out.String(), "host ready after") {
		t.Fatalf("no job host came up, or the output does not name the run:\n%s\nstderr:\n%s", out.String(), errb.String())
	}
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = bufio.NewReader(stdout).WriteTo(&out) }()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(3 * time.Minute):
		t.Fatalf("the demo did not end within 3 minutes of SIGINT:\n%s", out.String())
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Errorf("exit %v, want 130\nstderr:\n%s", err, errb.String())
	}
	if !strings.Contains(errb.String(), "everything the demo made is removed") {
		t.Errorf("stderr does not say it cleaned up:\n%s", errb.String())
	}
	if left := leftovers(t, cli, id, hostTag); len(left) > 0 {
		t.Errorf("the interrupted demo left %v", left)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("its directory %s: %v", dir, err)
	}
}

func engine(t *testing.T) *client.Client {
	t.Helper()
	cli, err := localdockertest.Client()
	if err != nil {
		if localdockertest.Required() {
			t.Fatalf("no Docker engine: %v", err)
		}
		t.Skip("no Docker engine")
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func buildDaemon(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "paas-runner")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-X gitlab.com/paas-runner/paas-runner/internal/version.Version=demo-test", "-o", bin, "../cmd/paas-runner")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building paas-runner: %v\n%s", err, out)
	}
	return bin
}

// newHostImage is the tag of the host base image the daemon bin builds,
// "" when it is there already (another run's: not the demo's to remove).
func newHostImage(t *testing.T, cli *client.Client, bin string) string {
	t.Helper()
	tag := localdocker.BaseImageTag("demo-test", bin)
	if _, err := cli.ImageInspect(context.Background(), tag); err == nil {
		return ""
	}
	return tag
}

// leftovers lists what the demo run id left on the engine: containers,
// volumes and networks of its runner, its job image, and the host base
// image hostTag (when not "").
func leftovers(t *testing.T, cli *client.Client, id, hostTag string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f := filters.NewArgs(filters.Arg("label", "paas-runner.runner="+config.RunnerID("glrt-demo-fake-runner-"+id)))
	var left []string
	cs, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		left = append(left, "container "+strings.Join(c.Names, ","))
	}
	vs, err := cli.VolumeList(ctx, volume.ListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs.Volumes {
		left = append(left, "volume "+v.Name)
	}
	ns, err := cli.NetworkList(ctx, network.ListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		left = append(left, "network "+n.Name)
	}
	imgs, err := cli.ImageList(ctx, image.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", demoLabel+"="+id))})
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range imgs {
		left = append(left, "image "+strings.Join(im.RepoTags, ","))
	}
	if hostTag != "" {
		if _, err := cli.ImageInspect(ctx, hostTag); err == nil {
			left = append(left, "image "+hostTag)
		}
	}
	return left
}

// leaked finds a token whole or by a piece of 12 characters, not by its
// shortened form.
func TestLeaked(t *testing.T) {
	toks := []string{"glrt-0123456789abcdef", "glcbt-fedcba9876543210"}
	for text, want := range map[string]int{"runner glrt-01234567, job glcbt-fedcba98": 0, "x 3456789abcde y": 1,
		"glcbt-fedcba9876543210 and glrt-0123456789abcdef": 2} {
		if got := len(leaked(text, toks)); got != want {
			t.Errorf("leaked(%q): %d, want %d", text, got, want)
		}
	}
}

// The demo's guard check fails a run where the lock or the pool did not
// do their job.
func TestGuardProblems(t *testing.T) {
	jobs := pipeline()
	logs := map[string]string{
		"deploy-eu": "deploying with production\n",
		"deploy-us": "paas-runner: waiting for lock production (held by job 5…)\npaas-runner: locks acquired after 4s\ndeploying with production\n",
		"review-1":  "pool lock env-a: region=eu-west-1\n",
		"review-2":  "pool lock env-b: region=us-east-1\n",
	}
	got := func() []coordinatortest.Job {
		var js []coordinatortest.Job
		for _, s := range jobs {
			js = append(js, coordinatortest.Job{Trace: []byte(logs[s.name])})
		}
		return js
	}
	if p := guardProblems(jobs, got()); len(p) != 0 {
		t.Fatalf("a good run refused: %v", p)
	}
	logs["review-2"] = "pool lock env-a: region=eu-west-1\n"
	logs["deploy-us"] = "deploying with production\n"
	if p := guardProblems(jobs, got()); len(p) != 2 {
		t.Fatalf("problems %v, want the shared pool lock and no wait", p)
	}
}

// A run that went wrong (here a daemon that exits at once) keeps the
// daemon's log, says where, and removes the rest.
func TestDemoFailedKeepsTheDaemonLog(t *testing.T) {
	cli := engine(t)
	fake := filepath.Join(t.TempDir(), "paas-runner")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho the fake daemon gives up\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := runDemo([]string{"--binary", fake}, &out, &errb, nil); code != 1 {
		t.Fatalf("exit %d, want 1\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	m := regexp.MustCompile(`the daemon's log is kept in (\S+)`).FindStringSubmatch(errb.String())
	if m == nil {
		t.Fatalf("stderr does not say where the daemon's log is:\n%s", errb.String())
	}
	t.Cleanup(func() { os.Remove(m[1]) })
	if b, err := os.ReadFile(m[1]); err != nil || !strings.Contains(string(b), "the fake daemon gives up") {
		t.Fatalf("kept log %s: %v %q", m[1], err, b)
	}
	if left := leftovers(t, cli, runID, ""); len(left) > 0 {
		t.Errorf("the failed demo left %v", left)
	}
}

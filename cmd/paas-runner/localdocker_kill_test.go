package main_test

import (
	"context"
	"fmt"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/volume"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/internal/labels"
)

// The daemon SIGKILLed while it makes hosts (the moment a host container
// appears, created or started), then restarted: every job runs its inner
// runner exactly once, and no container or image of the runner is left.
func TestLocalDockerKilledWhileLaunching(t *testing.T) {
	cli := dockerInner(t)
	tok := "glrt-ldkill-0123456789"
	gl, dir, cfg := localDockerConfig(t, "concurrent = 8\ncheck_interval = 0.1",
		ldRunner{tok, fmt.Sprintf("inner_image = %q\n  [runners.local_docker]\n  network_mode = \"host\"", innerTag)})
	rid := config.RunnerID(tok)
	cleanRunner(t, cli, rid)
	t.Cleanup(func() {
		vs, _ := cli.VolumeList(context.Background(), volume.ListOptions{Filters: filters.NewArgs(filters.Arg("label", labels.LabelRunner+"="+rid))})
		for _, v := range vs.Volumes {
			cli.VolumeRemove(context.Background(), v.Name, true)
		}
	})
	e := &env{t: t, dir: dir, config: cfg, gl: gl}
	f := filters.NewArgs(filters.Arg("label", labels.LabelRunner+"="+rid))
	var jobs []*coordinatortest.Job
	want := map[int64]string{}
	for round := 0; round < 4; round++ {
		p := e.start("")
		for i := 0; i < 4; i++ {
			// half the hosts exit without reporting (a crash), often
			// before the launch is recorded: the restart must not start
			// them again
			mode := map[bool]string{true: "crash", false: "success"}[i%2 == 1]
			j := gl.Enqueue(tok, map[string]any{"variables": []map[string]any{
				{"key": "TEST_INNER_COUNT", "value": "1", "public": true, "masked": false},
				{"key": "TEST_INNER", "value": mode, "public": true, "masked": false}}})
			jobs = append(jobs, j)
			want[j.ID] = map[string]string{"crash": "failed", "success": "success"}[mode]
		}
		// kill as soon as a host of this round exists (even rounds) or
		// runs (odd rounds: often before its launch is recorded)
		deadline := time.Now().Add(procWait)
		for seen := false; !seen; {
			cs, err := cli.ContainerList(context.Background(), container.ListOptions{All: true, Filters: f})
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range cs {
				seen = seen || round%2 == 0 || c.State == "running" || c.State == "exited"
			}
			if time.Now().After(deadline) {
				t.Fatalf("no host appeared\n%s", p.log())
			}
			if !seen {
				time.Sleep(time.Millisecond) // the daemon is another process
			}
		}
		p.signal(syscall.SIGKILL)
		p.wait(t)
	}
	p := e.start("")
	// Every job ends: a crash-mode host that exited while the daemon was
	// down fails its job as soon as the dispatcher inspects hosts at
	// resume (executors.Inspector).
	gl.WaitFor(procWait, "every job to end", func(s *coordinatortest.Server) bool {
		for _, j := range jobs {
			if !jobFinal(s.StatusOf(j.ID)) {
				return false
			}
		}
		return true
	})
	for _, j := range jobs {
		got := gl.Job(j.ID)
		runs, err := cli.VolumeList(context.Background(), volume.ListOptions{Filters: filters.NewArgs(filters.Arg("label", "paas-runner.test-run="+strconv.FormatInt(j.ID, 10)))})
		if err != nil {
			t.Fatal(err)
		}
		if n := len(runs.Volumes); n != 1 || got.Status != want[j.ID] {
			t.Errorf("job %d: %s, its inner runner ran %d times:\n%s", j.ID, got.Status, n, got.Trace)
		}
	}
	waitNoHosts(t, cli, rid)
	imgs, err := cli.ImageList(context.Background(), image.ListOptions{All: true, Filters: f})
	if err != nil || len(imgs) != 0 {
		t.Fatalf("images of the runner left: %d %v", len(imgs), err)
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

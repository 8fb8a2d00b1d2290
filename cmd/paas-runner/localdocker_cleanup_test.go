package main_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/internal/labels"
)

// jobLeft counts what is labelled with the runner and job, but for cache
// volumes.
func jobLeft(t *testing.T, cli *client.Client, runnerID string, id int64) (n int, cache int) {
	t.Helper()
	ctx := context.Background()
	f := filters.NewArgs(filters.Arg("label", labels.LabelRunner+"="+runnerID), filters.Arg("label", labels.LabelJobID+"="+strconv.FormatInt(id, 10)))
	cs, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	ns, _ := cli.NetworkList(ctx, network.ListOptions{Filters: f})
	vs, _ := cli.VolumeList(ctx, volume.ListOptions{Filters: f})
	for _, v := range vs.Volumes {
		if v.Labels[labels.LabelRole] == labels.RoleCache {
			cache++
		} else {
			n++
		}
	}
	return n + len(cs) + len(ns), cache
}

// GitLab cancels a running job: the daemon removes its host, and with it
// everything the inner runner made for the job (here testinner's
// container, network and builds volume, labelled from job.json's
// paas_runner system_id and runner_id as the inner runner labels them),
// within 10 s of the host going; the cache volume stays.
func TestLocalDockerCanceledJobLeavesNothing(t *testing.T) {
	cli := dockerInner(t)
	tok := fmt.Sprintf("glrt-ldcancel-%d-0123456789", os.Getpid()) // per process: runs in other checkouts share the engine
	gl, dir, cfg := localDockerConfig(t, "concurrent = 2\ncheck_interval = 0.1",
		ldRunner{tok, fmt.Sprintf("inner_image = %q\n  [runners.local_docker]\n  network_mode = \"host\"", innerTag)})
	rid := config.RunnerID(tok)
	cleanRunner(t, cli, rid)
	e := &env{t: t, dir: dir, config: cfg, gl: gl}
	// The test's inner runner never notices the cancel (a real one does,
	// through its keep-alive, and its host ends): only the daemon's safety
	// net sees it, once a minute by default.
	e.extraEnv = []string{"PAAS_RUNNER_SAFETY_INTERVAL=500ms"}
	p := e.start("")
	q := gl.Enqueue(tok, map[string]any{"variables": []map[string]any{
		{"key": "TEST_INNER", "value": "spawn", "public": true, "masked": false},
		{"key": "TEST_SPAWN_IMAGE", "value": innerTag, "public": true, "masked": false}}})
	t.Cleanup(func() { // everything labelled with this test's runner
		ctx := context.Background()
		f := filters.NewArgs(filters.Arg("label", labels.LabelRunner+"="+rid))
		cs, _ := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
		for _, c := range cs {
			cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
		}
		ns, _ := cli.NetworkList(ctx, network.ListOptions{Filters: f})
		for _, n := range ns {
			cli.NetworkRemove(ctx, n.ID)
		}
		vs, _ := cli.VolumeList(ctx, volume.ListOptions{Filters: f})
		for _, v := range vs.Volumes {
			cli.VolumeRemove(ctx, v.Name, true)
		}
	})
	deadline := time.Now().Add(procWait)
	for {
		n, cache := jobLeft(t, cli, rid, q.ID)
		if n >= 4 && cache == 1 { // host, job container, network, builds volume
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the inner runner's resources did not appear (%d, %d cache)\n%s", n, cache, p.log())
		}
		time.Sleep(50 * time.Millisecond) // made by another process
	}
	gl.ForceCancel(q.ID) // (as a server-side timeout or a forced cancel: the inner runner cannot report any more)
	host := "paas-job-" + rid + "-" + strconv.FormatInt(q.ID, 10)
	for deadline := time.Now().Add(procWait); ; time.Sleep(20 * time.Millisecond) { // the daemon removes it
		if _, err := cli.ContainerInspect(context.Background(), host); cerrdefs.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the canceled job's host was not removed")
		}
	}
	gone := time.Now()
	for {
		n, cache := jobLeft(t, cli, rid, q.ID)
		if n == 0 && cache == 1 {
			break
		}
		if time.Since(gone) > 10*time.Second {
			t.Fatalf("10 s after its host was removed, %d resources of the job are left (cache volumes: %d)", n, cache)
		}
		time.Sleep(20 * time.Millisecond) // the daemon removes them
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

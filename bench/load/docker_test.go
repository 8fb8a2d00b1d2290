package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"gitlab.com/paas-runner/paas-runner/executors/localdocker"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
)

// The watcher tells a job's host among its containers (not a build step
// that never started), when it started and went, and when its image went
// if the image was the job's own; cleanRun removes what a run left.
func TestWatcherFollowsHostsAndCleanRunRemovesLeftovers(t *testing.T) {
	cli, err := localdockertest.Client()
	if err != nil {
		if localdockertest.Required() {
			t.Fatalf("no Docker engine: %v", err)
		}
		t.Skip("no Docker engine")
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	run := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano())
	base := fmt.Sprintf("paas-runner-bench-test:%d-base", os.Getpid())
	if err := localdockertest.BuildBusyboxImageLabelled(ctx, cli, base, map[string]string{"paas-runner.bench-test": run}); err != nil {
		t.Fatal(err)
	}
	defer localdockertest.RemoveImage(cli, base)
	jobA, jobB := int64(900_000_000+os.Getpid()%100_000*10), int64(900_000_001+os.Getpid()%100_000*10)
	since := time.Now() // the run starts: its job images are made after
	jobImage := fmt.Sprintf("paas-runner-bench-test:%d-job", os.Getpid())
	if err := localdockertest.BuildBusyboxImageLabelled(ctx, cli, jobImage, map[string]string{"paas-runner.bench-test": run, localdocker.LabelJobID: strconv.FormatInt(jobB, 10)}); err != nil {
		t.Fatal(err)
	}
	defer localdockertest.RemoveImage(cli, jobImage)
	w, err := watch(ctx, cli, base)
	if err != nil {
		t.Fatal(err)
	}
	w.expect(jobA)
	w.expect(jobB)
	mk := func(img string, job int64, start bool) string {
		c, err := cli.ContainerCreate(ctx, &container.Config{Image: img, Cmd: []string{"/bin/busybox", "sleep", "60"},
			Labels: map[string]string{localdocker.LabelJobID: strconv.FormatInt(job, 10)}}, nil, nil, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { // should the test fail before removing it
			cli.ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true})
		})
		if start {
			if err := cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		return c.ID
	}
	rm := func(id string) {
		if err := cli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true}); err != nil {
			t.Fatal(err)
		}
	}
	// job A: a build step (never started, gone), then its host on a
	// shared image
	rm(mk(base, jobA, false))
	hostA := mk(base, jobA, true)
	// job B: its host on its own image
	hostB := mk(jobImage, jobB, true)
	leftover := mk(base, jobB, false) // the inner runner's, left behind
	ended := time.Now()
	rm(hostA)
	rm(hostB)
	deadline := time.Now().Add(time.Minute)
	for {
		a, okA := w.host(jobA, ended)
		b, okB := w.host(jobB, ended)
		if okA && okB && !a.Gone.IsZero() && !b.Gone.IsZero() && b.JobImage != "" {
			if a.Container != hostA || b.Container != hostB {
				t.Fatalf("hosts %s %s, want %s %s", a.Container, b.Container, hostA, hostB)
			}
			if a.Started.Before(a.Created) || a.Gone.Before(ended) || a.JobImage != "" {
				t.Fatalf("job A: %+v", a)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hosts not followed: %+v %v, %+v %v", a, okA, b, okB)
		}
		time.Sleep(50 * time.Millisecond) // polling the watcher, whose times come from the engine
	}
	jobs := map[int64]bool{jobA: true, jobB: true}
	if c, i, err := remaining(ctx, cli, "no-such-runner", jobs, since); err != nil || c != 1 || i != 1 {
		t.Fatalf("remaining: %d containers, %d images, %v; want the leftover container and the job's image", c, i, err)
	}
	cleanRun(cli, "no-such-runner", jobs, since)
	if _, err := cli.ContainerInspect(ctx, leftover); err == nil {
		t.Errorf("cleanRun left container %s", leftover)
	}
	if c, i, err := remaining(ctx, cli, "no-such-runner", jobs, since); err != nil || c+i != 0 {
		t.Errorf("after cleanRun: %d containers, %d images, %v", c, i, err)
	}
	// the job image went: the watcher saw it
	for {
		if b, _ := w.host(jobB, ended); !b.ImageGone.IsZero() {
			if b.ImageGone.Before(b.Gone) {
				t.Errorf("job B's image gone before its host: %+v", b)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the job image's deletion was not seen")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

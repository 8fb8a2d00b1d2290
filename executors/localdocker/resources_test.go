package localdocker

import (
	"archive/tar"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/internal/labels"
)

// jobResources counts what carries the job's labels, by role.
func jobResources(t *testing.T, e *Executor, id int64) map[string]int {
	t.Helper()
	ctx := ctxT(t)
	f := filters.NewArgs(filters.Arg("label", labels.LabelSystemID+"="+e.opts.SystemID), filters.Arg("label", labels.LabelJobID+"="+strconv.FormatInt(id, 10)))
	got := map[string]int{}
	cs, err := e.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		got["container "+c.Labels[labels.LabelRole]]++
	}
	ns, _ := e.cli.NetworkList(ctx, network.ListOptions{Filters: f})
	got["network"] = len(ns)
	vs, _ := e.cli.VolumeList(ctx, volume.ListOptions{Filters: f})
	for _, v := range vs.Volumes {
		got["volume "+v.Labels[labels.LabelRole]]++
	}
	return got
}

// waitSpawned waits until testinner (spawn mode) made the job's
// container, network and volumes.
func waitSpawned(t *testing.T, e *Executor, id int64) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		r := jobResources(t, e, id)
		if r["container job"] == 1 && r["network"] == 1 && r["volume job"] == 1 && r["volume cache"] == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the inner runner did not make its resources: %v", r)
		}
		time.Sleep(50 * time.Millisecond) // another process makes them
	}
}

// The inner runner's containers, network and builds volume go with the
// host, cache volumes stay: when the host is decommissioned (GitLab ended
// the job first and the inner runner is killed), and when the reaper
// finds the job untracked.
func TestJobResourcesGoWithTheHost(t *testing.T) {
	needDocker(t)
	e := newExec(t, func(o *Options) { o.InnerImage = innerImage; o.NetworkMode = "host" })
	other := newExec(t, func(o *Options) {
		o.InnerImage = innerImage
		o.NetworkMode = "host"
		o.SystemID = "r_o" + testID(t, 11)
	})
	ctx := ctxT(t)

	h := launch(t, e, 91, "spawn")
	kept := launch(t, e, 92, "spawn")
	foreign := launch(t, other, 93, "spawn")
	for _, w := range []struct {
		e  *Executor
		id int64
	}{{e, 91}, {e, 92}, {other, 93}} {
		waitSpawned(t, w.e, w.id)
	}
	if err := e.Decommission(ctx, h); err != nil {
		t.Fatal(err)
	}
	if r := jobResources(t, e, 91); r["container host"]+r["container job"]+r["network"]+r["volume job"] != 0 || r["volume cache"] != 1 {
		t.Fatalf("left after decommission: %v (only the cache volume may stay)", r)
	}

	// the reaper: host 92 is kept, 93 is another daemon's; a host of an
	// untracked job (94) is removed with what its inner runner made
	orphan := launch(t, e, 94, "spawn")
	waitSpawned(t, e, 94)
	_ = orphan
	if _, err := e.Reap(ctx, []executors.Handle{kept}, 0); err != nil {
		t.Fatal(err)
	}
	if r := jobResources(t, e, 94); r["container host"]+r["container job"]+r["network"]+r["volume job"] != 0 || r["volume cache"] != 1 {
		t.Fatalf("left by the reaper: %v", r)
	}
	if r := jobResources(t, e, 92); r["container host"] != 1 || r["container job"] != 1 || r["network"] != 1 || r["volume job"] != 1 {
		t.Fatalf("a kept job's resources reaped: %v", r)
	}
	if r := jobResources(t, other, 93); r["container host"] != 1 || r["container job"] != 1 || r["network"] != 1 || r["volume job"] != 1 {
		t.Fatalf("another daemon's job resources touched: %v", r)
	}
	// a job's resources younger than the grace period stay
	if err := e.Decommission(ctx, kept); err != nil {
		t.Fatal(err)
	}
	_ = foreign
}

// A crash (the daemon killed, the context cancelled) at any point of a
// launch leaves nothing the next Launch cannot take up, or the reaper
// remove: the host is started once, and no image is ever made for a job.
func TestLaunchInterrupted(t *testing.T) {
	needDocker(t)
	for _, at := range []string{"created", "copied"} {
		t.Run(at, func(t *testing.T) {
			e := newExec(t, func(o *Options) { o.InnerImage = innerImage; o.NetworkMode = "host" })
			ctx := ctxT(t)
			crash := errors.New("crash")
			var first executors.Handle
			for i, id := range []int64{101, 102} {
				j := executors.Job{RunnerID: e.opts.RunnerID, ID: id, Payload: payload(id, "sleep"), TraceOffset: 5}
				h, _ := e.Plan(ctx, j)
				if _, err := e.Provision(ctx, h, j); err != nil {
					t.Fatal(err)
				}
				e.testStep = func(s string) error {
					if s == at {
						return crash
					}
					return nil
				}
				if _, err := e.Launch(ctx, h, j); !errors.Is(err, crash) {
					t.Fatalf("launch: %v", err)
				}
				e.testStep = nil
				hd, _ := decodeHandle(h)
				info, err := e.cli.ContainerInspect(ctx, hd.Container)
				if err != nil || started(info) {
					t.Fatalf("after the crash: %v started=%v", err, err == nil && started(info))
				}
				if i == 0 {
					first = h
					// restart: Launch takes it up, and starts it once
					j.TraceOffset = 9
					if _, err := e.Launch(ctx, h, j); err != nil {
						t.Fatal(err)
					}
					if _, err := e.Launch(ctx, h, j); err != nil {
						t.Fatal(err)
					}
					info, _ := e.cli.ContainerInspect(ctx, hd.Container)
					if !started(info) || info.RestartCount != 0 {
						t.Fatal("not started, or started twice")
					}
					// the job's files hold the final trace offset
					r, _, err := e.cli.CopyFromContainer(ctx, hd.Container, heptapodConfDir+"/job.json")
					if err != nil {
						t.Fatal(err)
					}
					tr := tar.NewReader(r)
					hdr, err := tr.Next()
					if err != nil {
						t.Fatal(err)
					}
					data, _ := io.ReadAll(tr)
					r.Close()
					if hdr.FileInfo().Mode().Perm() != 0o600 || !strings.Contains(string(data), `"trace_offset":9`) {
						t.Fatalf("job.json %v: %s", hdr.FileInfo().Mode(), data)
					}
				} else {
					// the state file lost it: the reaper removes it
					if _, err := e.Reap(ctx, []executors.Handle{first}, 0); err != nil {
						t.Fatal(err)
					}
					if _, err := e.cli.ContainerInspect(ctx, hd.Container); err == nil {
						t.Fatal("a half-launched host was not reaped")
					}
				}
			}
			// no image carries the daemon's labels, and the host runs the
			// inner image itself
			imgs, err := e.cli.ImageList(ctx, image.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", labels.LabelSystemID+"="+e.opts.SystemID))})
			if err != nil || len(imgs) != 0 {
				t.Fatalf("images made for jobs: %v %v", imgs, err)
			}
			info, err := e.cli.ContainerInspect(ctx, "paas-job-"+e.opts.RunnerID+"-101")
			if err != nil {
				t.Fatal(err)
			}
			inner, _ := e.cli.ImageInspect(ctx, innerImage)
			if info.Image != inner.ID {
				t.Fatalf("host runs %s, not the inner image %s", info.Image, inner.ID)
			}
		})
	}
}

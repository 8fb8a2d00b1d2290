package localdocker

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
	"gitlab.com/paas-runner/paas-runner/internal/labels"
)

// The host has the job's builds volume: the inner runner fetches the
// sources straight into it, so nothing is copied into the job's containers
// (Docker reports each copy as an extract-to-dir event), and a job running
// as another user than the inner runner can write in its project
// directory as after a copy. The volume goes with the host.
func TestSourcesFetchedIntoTheHostsBuildsVolume(t *testing.T) {
	needDocker(t)
	ctx := ctxT(t)
	cli, err := localdockertest.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	jobImage := busyboxImage(t)
	hj := newHostJob(t, map[string]any{"user": "65534:65534"}, jobImage, []string{"cat README", "id -u", "echo made > made.txt", "cat made.txt"},
		func(p map[string]any, q *coordinatortest.Job) {
			repo, sha := localdockertest.GitServer(t, q.Token)
			p["git_info"] = map[string]any{"repo_url": repo, "ref": "main", "sha": sha, "ref_type": "branch", "depth": 1,
				"refspecs": []string{"+refs/heads/main:refs/remotes/origin/main"}}
			p["variables"] = q.Payload["variables"]
		})
	e, q := hj.e, hj.q

	// copies into the job's containers, as they happen
	evCtx, stopEvents := context.WithCancel(ctx)
	defer stopEvents()
	f := filters.NewArgs(filters.Arg("type", "container"), filters.Arg("event", "extract-to-dir"),
		filters.Arg("label", labels.LabelRole+"="+labels.RoleJob), filters.Arg("label", fmt.Sprintf("%s=%d", labels.LabelJobID, q.ID)))
	msgs, errs := cli.Events(evCtx, events.ListOptions{Filters: f})

	hj.provision(t)
	got := hj.run(t)
	h := hj.h
	trace := string(got.Trace)
	if got.Status != "success" || !strings.Contains(trace, "hello from the repository") || !strings.Contains(trace, "\n65534\n") || !strings.Contains(trace, "\nmade\n") {
		t.Fatalf("job %s:\n%s", got.Status, trace)
	}
	hd, _ := decodeHandle(h)
	if _, err := cli.VolumeInspect(ctx, buildsVolume(hd.Container)); err != nil {
		t.Fatalf("the host's builds volume: %v", err)
	}
	if err := e.Decommission(ctx, h); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.VolumeInspect(ctx, buildsVolume(hd.Container)); err == nil {
		t.Errorf("the builds volume %s outlived its host", buildsVolume(hd.Container))
	}
	// Events come in order: once a copy made now into a container
	// labelled the same way is seen, every earlier one has been.
	sentinel := "paas-runner-test-sentinel-" + testID(t, 8)
	c, err := cli.ContainerCreate(ctx, &container.Config{Image: jobImage, Cmd: []string{"true"}, Labels: map[string]string{
		labels.LabelRole: labels.RoleJob, labels.LabelJobID: fmt.Sprint(q.ID)}}, nil, nil, nil, sentinel)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true})
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Name: "sentinel", Mode: 0o644})
	tw.Close()
	if err := cli.CopyToContainer(ctx, c.ID, "/", &tb, container.CopyToContainerOptions{}); err != nil {
		t.Fatal(err)
	}
	var copies []string
	for seen := false; !seen; {
		select {
		case m := <-msgs:
			if n := m.Actor.Attributes["name"]; n == sentinel {
				seen = true
			} else {
				copies = append(copies, n)
			}
		case err := <-errs:
			t.Fatalf("Docker events: %v", err)
		}
	}
	if len(copies) > 0 {
		t.Errorf("sources copied into the job's containers %v; want them fetched into the builds volume", copies)
	}
}

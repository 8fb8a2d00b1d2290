package localdocker

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/executors"
)

// Hosts imported from Heptapod PAAS Runner. Its local-docker executor
// (research notes §7) runs the docker CLI: `docker build -t
// hpd-job-<unique_name lowercased>-<job id>` of the job's Dockerfile, then
// `docker run --rm -t -v <socket>:/var/run/docker.sock <tag>`, blocking
// until the job ends. The container has a random name and no label: it is
// found as the container running that image. Its state file records the
// tag as the job's paas_resource, under `pending` (its launch blocks) or
// `launched`.

const heptapodPrefix = "hpd-job-"

// heptapodJobID reads the job ID at the end of a Heptapod image tag.
func heptapodJobID(tag string) (int64, bool) {
	tag = strings.TrimSuffix(tag, ":latest")
	if !strings.HasPrefix(tag, heptapodPrefix) {
		return 0, false
	}
	i := strings.LastIndexByte(tag, '-')
	id, err := strconv.ParseInt(tag[i+1:], 10, 64)
	return id, err == nil && id > 0 && i > len(heptapodPrefix)
}

// heptapodJob tells whether image is the tag of a Heptapod host of this
// runner (under its ID or a legacy one), and its job.
func (e *Executor) heptapodJob(image string) (int64, bool) {
	id, ok := heptapodJobID(image)
	if !ok {
		return 0, false
	}
	image = strings.TrimSuffix(image, ":latest")
	for _, rid := range append([]string{e.opts.RunnerID}, e.opts.LegacyRunnerIDs...) {
		if image == heptapodPrefix+strings.ToLower(rid)+"-"+strconv.FormatInt(id, 10) {
			return id, true
		}
	}
	return 0, false
}

// findHeptapodHost returns the ID of the container running hd's image, ""
// when there is none.
func (e *Executor) findHeptapodHost(ctx context.Context, hd handle) (string, error) {
	if _, err := e.cli.ImageInspect(ctx, hd.Image); cerrdefs.IsNotFound(err) {
		return "", nil // no image, no container running it
	} else if err != nil {
		return "", fmt.Errorf("inspecting %s: %w", hd.Image, err)
	}
	cs, err := e.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("ancestor", hd.Image))})
	if err != nil {
		return "", fmt.Errorf("looking for the container running %s: %w", hd.Image, err)
	}
	var found string
	for _, c := range cs {
		// the image itself, not one built from it
		if strings.TrimSuffix(c.Image, ":latest") != strings.TrimSuffix(hd.Image, ":latest") {
			continue
		}
		if c.State == "running" || found == "" {
			found = c.ID
		}
	}
	return found, nil
}

// adoptHeptapod takes over a job Heptapod PAAS Runner launched: its host
// still runs the job (Heptapod Runner reports to GitLab itself), so
// "launching" it is tracking it. A job whose host is gone cannot be
// launched again (its payload may be missing, its script may have run).
func (e *Executor) adoptHeptapod(ctx context.Context, hd handle, j executors.Job) (executors.Handle, error) {
	if id, ok := e.heptapodJob(hd.Image); !ok || id != j.ID {
		return nil, executors.Permanent("launch", fmt.Errorf("imported Heptapod host %s is not this runner's host for job %d", hd.Image, j.ID))
	}
	if hd.Container == "" {
		c, err := e.findHeptapodHost(ctx, hd)
		if err != nil {
			return nil, executors.Transient("launch", err)
		}
		if c == "" {
			return nil, executors.Permanent("launch", fmt.Errorf("the host Heptapod PAAS Runner started for job %d (image %s) is gone", j.ID, hd.Image))
		}
		hd.Container = c
	}
	info, err := e.cli.ContainerInspect(ctx, hd.Container)
	switch {
	case cerrdefs.IsNotFound(err):
		return nil, executors.Permanent("launch", fmt.Errorf("the host Heptapod PAAS Runner started for job %d (image %s) is gone", j.ID, hd.Image))
	case err != nil:
		return nil, executors.Transient("launch", fmt.Errorf("inspecting %s: %w", hd.Container, err))
	case !started(info):
		// Heptapod's `docker run` was interrupted between create and
		// start: the job never ran, but its files are in an image this
		// daemon does not make; not worth a special case.
		return nil, executors.Permanent("launch", fmt.Errorf("the host Heptapod PAAS Runner created for job %d (image %s) was never started", j.ID, hd.Image))
	}
	e.log.Info("adopted a host Heptapod PAAS Runner launched", zap.Int64("job_id", j.ID), zap.String("container", hd.Container), zap.String("image", hd.Image))
	return marshalHandle(hd), nil
}

// decommissionHeptapod removes Heptapod's host container (if any) and its
// job image.
func (e *Executor) decommissionHeptapod(ctx context.Context, hd handle) error {
	ids := []string{}
	if hd.Container != "" {
		ids = append(ids, hd.Container)
	}
	if c, err := e.findHeptapodHost(ctx, hd); err != nil {
		return executors.Transient("decommission", err)
	} else if c != "" {
		ids = append(ids, c)
	}
	for _, id := range ids {
		if err := e.removeContainer(ctx, id); err != nil {
			return executors.Transient("decommission", fmt.Errorf("removing container %s: %w", id, err))
		}
	}
	if err := e.removeImage(ctx, hd.Image); err != nil {
		return executors.Transient("decommission", err)
	}
	return nil
}

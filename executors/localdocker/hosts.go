package localdocker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/s3cache"
	"gitlab.com/paas-runner/paas-runner/internal/labels"
)

// Launch creates the host container from the host image, gives it the
// job's files and starts it: a host of the default image gets them on its
// standard input as it starts (FilesFromStdin), others by a copy before
// the start. Each step can be interrupted by a crash and is taken up again
// by the next Launch (the handle names the container before it exists): a
// container created but not started gets the files again and is started;
// one already started is never started again, except one that exited
// ExitNoFiles (its files never came: it ran nothing), which is made again;
// one of that name that is not this daemon's host for this job is refused.
func (e *Executor) Launch(ctx context.Context, h executors.Handle, j executors.Job) (executors.Handle, error) {
	hd, err := decodeHandle(h)
	if err != nil {
		return nil, err
	}
	if hd.Heptapod {
		return e.adoptHeptapod(ctx, hd, j)
	}
	var entrypoint []string
	info, err := e.cli.ContainerInspect(ctx, hd.Container)
	switch {
	case err == nil:
		if info.Config == nil || !e.ours(info.Config.Labels) || info.Config.Labels[labels.LabelJobID] != strconv.FormatInt(j.ID, 10) {
			return nil, executors.Permanent("launch", fmt.Errorf("a container named %s exists but is not this daemon's host for job %d; remove it by hand", hd.Container, j.ID))
		}
		if !started(info) {
			entrypoint = info.Config.Entrypoint
			break
		}
		if !filesFromStdin(info.Config.Entrypoint) || info.State == nil || info.State.Running || info.State.ExitCode != ExitNoFiles {
			return h, nil // launched before a crash: never twice
		}
		// Its files never arrived (the daemon stopped while sending
		// them): it ran nothing, and is made again.
		e.log.Info("the host's files never reached it: making it again", zap.String("container", hd.Container))
		if err := e.removeContainer(ctx, info.ID); err != nil {
			return nil, executors.Transient("launch", fmt.Errorf("removing %s: %w", hd.Container, err))
		}
		if entrypoint, err = e.create(ctx, hd, j); err != nil {
			return nil, err
		}
	case cerrdefs.IsNotFound(err):
		if entrypoint, err = e.create(ctx, hd, j); err != nil {
			return nil, err
		}
		if err := e.step("created"); err != nil {
			return nil, err
		}
	default:
		return nil, executors.Transient("launch", fmt.Errorf("inspecting %s: %w", hd.Container, err))
	}
	if filesFromStdin(entrypoint) {
		if err := e.startWithFiles(ctx, hd.Container, entrypoint, j); err != nil {
			return nil, err
		}
		return h, nil
	}
	if err := e.copyFiles(ctx, hd.Container, entrypoint, j); err != nil {
		return nil, err
	}
	if err := e.step("copied"); err != nil {
		return nil, err
	}
	if err := e.cli.ContainerStart(ctx, hd.Container, container.StartOptions{}); err != nil {
		return nil, executors.Transient("launch", fmt.Errorf("starting %s: %w", hd.Container, err))
	}
	return h, nil
}

// BuildsMount is where a host of paas-runner's image has its job's builds
// volume.
const BuildsMount = "/paas-builds"

func buildsVolume(host string) string { return host + "-builds" }

func started(info container.InspectResponse) bool {
	if info.State == nil {
		return false
	}
	return info.State.Running || (info.State.StartedAt != "" && !strings.HasPrefix(info.State.StartedAt, "0001-01-01"))
}

// Files returns what the inner runner of j reads on a host of paas-runner's
// image shape.
func (e *Executor) Files(j executors.Job) (HostFiles, error) {
	return e.FilesFor(j, paasShape.Entrypoint[3])
}

// FilesFor returns what the inner runner of j reads on a host that reads
// runner.toml at runnerTOML (the CA goes next to it).
func (e *Executor) FilesFor(j executors.Job, runnerTOML string) (HostFiles, error) {
	// host_container: the job's containers join the host's network
	// namespace (jobrunner's jobNetwork)
	host := e.names(j.ID).Container
	extra := map[string]any{"system_id": e.opts.SystemID, "runner_id": e.opts.RunnerID, "host_container": host}
	if runnerTOML == paasShape.Entrypoint[3] {
		// the host has the builds volume (create)
		extra["builds_volume"] = map[string]any{"name": buildsVolume(host), "path": BuildsMount}
	}
	if len(j.TraceLead) > 0 {
		extra["trace_lead"] = string(j.TraceLead)
	}
	inner := e.opts.Inner
	if e.opts.Cache != nil {
		// an S3 cache: the host gets presigned URLs, not the credentials
		urls, err := e.opts.Cache.ForJob(context.Background(), e.opts.RunnerID, j.Payload)
		if err != nil {
			return HostFiles{}, err
		}
		extra["cache"] = urls
		inner = s3cache.WithoutCredentials(inner)
	}
	jobJSON, err := JobJSONWith(j.Payload, j.TraceOffset, j.TraceCRC, extra)
	if err != nil {
		return HostFiles{}, err
	}
	caPath := ""
	if e.ca != nil {
		caPath = CAPath(runnerTOML)
	}
	toml, err := InnerConfig(e.opts.RunnerLabel, e.opts.RunnerURL, inner, caPath)
	if err != nil {
		return HostFiles{}, err
	}
	return HostFiles{JobJSON: jobJSON, RunnerTOML: toml, CA: e.ca}, nil
}

// create makes the (stopped) host container and returns its entry point.
func (e *Executor) create(ctx context.Context, hd handle, j executors.Job) ([]string, error) {
	ref, err := e.hostImage(ctx)
	if err != nil {
		return nil, err
	}
	hc := &container.HostConfig{NetworkMode: container.NetworkMode(e.opts.NetworkMode)}
	if ref.Shape.Name == paasShape.Name {
		// The job's builds volume, made here and mounted in the host so
		// that the inner runner fetches the sources straight into it
		// instead of copying them into the script container (a copy
		// through the API costs the engine a mount and a process per
		// container). Labelled as the inner runner's own resources, it
		// goes with them (removeJobResources, reap).
		vl := e.scope()
		vl[labels.LabelJobID] = strconv.FormatInt(j.ID, 10)
		vl[labels.LabelRole] = labels.RoleJob
		if _, err := e.cli.VolumeCreate(ctx, volume.CreateOptions{Name: buildsVolume(hd.Container), Labels: vl}); err != nil {
			return nil, executors.Transient("launch", fmt.Errorf("creating the builds volume of %s: %w", hd.Container, err))
		}
		hc.Mounts = []mount.Mount{{Type: mount.TypeVolume, Source: buildsVolume(hd.Container), Target: BuildsMount}}
	}
	env := append([]string(nil), ref.Shape.Env...)
	if e.sockPath != "" {
		hc.Binds = []string{e.sockPath + ":/var/run/docker.sock"}
	} else {
		env = append(env, "DOCKER_HOST="+e.opts.Host)
	}
	l := e.hostLabels(j.ID)
	if ref.Shape.Name == paasShape.Name {
		l[LabelInnerRunner] = paasShape.Name
	}
	cfg := &container.Config{Image: ref.Image, Entrypoint: ref.Shape.Entrypoint, Cmd: []string{}, Labels: l, Env: env}
	if ref.Shape.Name == paasShape.Name && e.opts.InnerImage == "" {
		// the daemon's own binary: its files come on its stdin
		cfg.Entrypoint = stdinEntrypoint()
		cfg.AttachStdin, cfg.OpenStdin, cfg.StdinOnce = true, true, true
	}
	if _, err := e.cli.ContainerCreate(ctx, cfg, hc, nil, nil, hd.Container); err != nil {
		if cerrdefs.IsConflict(err) {
			return nil, executors.Transient("launch", fmt.Errorf("container %s appeared meanwhile: %w", hd.Container, err))
		}
		if cerrdefs.IsNotFound(err) && e.opts.InnerImage == "" {
			e.base.forget() // removed behind our back: made again at the retry
		}
		return nil, executors.Transient("launch", fmt.Errorf("creating %s from %s: %w", hd.Container, ref.Image, err))
	}
	e.log.Debug("created the host container", zap.String("container", hd.Container), zap.String("image", ref.Image), zap.String("shape", ref.Shape.Name))
	return cfg.Entrypoint, nil
}

// filesTar is the tar of job.json and runner.toml (and the CA) at the
// paths the entry point reads them from, made by mk (HostFiles.tar or
// stdinTar).
func (e *Executor) filesTar(name string, entrypoint []string, j executors.Job, mk func(HostFiles, string, string) (*bytes.Buffer, error)) (*bytes.Buffer, error) {
	tomlPath, jobPath, err := filePaths(entrypoint)
	if err != nil {
		return nil, executors.Permanent("launch", fmt.Errorf("host container %s: %w", name, err))
	}
	files, err := e.FilesFor(j, tomlPath)
	if err != nil {
		return nil, executors.Permanent("launch", err)
	}
	t, err := mk(files, tomlPath, jobPath)
	if err != nil {
		return nil, executors.Permanent("launch", err)
	}
	return t, nil
}

// startWithFiles starts a host whose entry point reads its files from its
// standard input, and sends them there. Should sending fail, the host is
// removed (its inner runner ran nothing) for the retry to make it again.
func (e *Executor) startWithFiles(ctx context.Context, name string, entrypoint []string, j executors.Job) error {
	t, err := e.filesTar(name, entrypoint, j, HostFiles.stdinTar)
	if err != nil {
		return err
	}
	att, err := e.cli.ContainerAttach(ctx, name, container.AttachOptions{Stream: true, Stdin: true})
	if err != nil {
		return executors.Transient("launch", fmt.Errorf("attaching to %s: %w", name, err))
	}
	defer att.Close()
	if err := e.cli.ContainerStart(ctx, name, container.StartOptions{}); err != nil {
		return executors.Transient("launch", fmt.Errorf("starting %s: %w", name, err))
	}
	if err := e.step("started"); err != nil {
		return err // a crash here: the host reads no files, and exits ExitNoFiles
	}
	if _, err = io.Copy(att.Conn, t); err == nil {
		err = att.CloseWrite()
	}
	if err != nil {
		err = executors.Transient("launch", fmt.Errorf("sending the job's files to %s: %w", name, err))
		if rerr := e.removeContainer(context.WithoutCancel(ctx), name); rerr != nil {
			e.log.Warn("removing a host whose files did not reach it failed; the next launch makes it again", zap.String("container", name), zap.Error(rerr))
		}
		return err
	}
	return nil
}

// copyFiles puts job.json and runner.toml where the entry point reads them.
func (e *Executor) copyFiles(ctx context.Context, name string, entrypoint []string, j executors.Job) error {
	t, err := e.filesTar(name, entrypoint, j, HostFiles.tar)
	if err != nil {
		return err
	}
	if err := e.cli.CopyToContainer(ctx, name, "/", t, container.CopyToContainerOptions{}); err != nil {
		return executors.Transient("launch", fmt.Errorf("copying the job's files into %s: %w", name, err))
	}
	return nil
}

// Decommission removes the host container, then everything the inner
// runner made for the job (containers, service containers, networks, the
// builds volume: role=job with this daemon's system_id, the runner and the
// job; never cache volumes), and a per-job image left by earlier versions
// or by Heptapod. What is already gone is fine; a container of that name
// that another daemon owns is left alone.
func (e *Executor) Decommission(ctx context.Context, h executors.Handle) error {
	hd, err := decodeHandle(h)
	if err != nil {
		return err
	}
	if hd.Heptapod {
		return e.decommissionHeptapod(ctx, hd)
	}
	info, err := e.cli.ContainerInspect(ctx, hd.Container)
	switch {
	case cerrdefs.IsNotFound(err):
	case err != nil:
		return executors.Transient("decommission", fmt.Errorf("inspecting %s: %w", hd.Container, err))
	case info.Config == nil || !e.ours(info.Config.Labels):
		e.log.Warn("a container has the host's name but is not this daemon's: left alone", zap.String("container", hd.Container))
	default:
		if err := e.removeContainer(ctx, info.ID); err != nil {
			return executors.Transient("decommission", fmt.Errorf("removing container %s: %w", hd.Container, err))
		}
	}
	if hd.JobID > 0 {
		if err := e.removeJobResources(ctx, hd.JobID); err != nil {
			return executors.Transient("decommission", err)
		}
	}
	if hd.Image != "" {
		if err := e.removeImage(ctx, hd.Image); err != nil {
			return executors.Transient("decommission", err)
		}
	}
	return nil
}

func (e *Executor) removeContainer(ctx context.Context, id string) error {
	err := e.cli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true})
	if err != nil && !cerrdefs.IsNotFound(err) && !isRemovalInProgress(err) {
		return err
	}
	return nil
}

// isRemovalInProgress: two removals of one container race (decommission and
// reaper, AutoRemove); the other one finishes it.
func isRemovalInProgress(err error) bool {
	return err != nil && strings.Contains(err.Error(), "is already in progress")
}

func (e *Executor) removeImage(ctx context.Context, ref string) error {
	_, err := e.cli.ImageRemove(ctx, ref, image.RemoveOptions{Force: true, PruneChildren: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("removing image %s: %w", ref, err)
	}
	return nil
}

// jobFilter selects what the inner runner made for job id (role=job), or
// for any job of this runner when id is 0.
func (e *Executor) jobFilter(id int64) filters.Args {
	f := filters.NewArgs(filters.Arg("label", labels.LabelRole+"="+labels.RoleJob))
	for k, v := range e.scope() {
		f.Add("label", k+"="+v)
	}
	if id > 0 {
		f.Add("label", labels.LabelJobID+"="+strconv.FormatInt(id, 10))
	}
	return f
}

// removeJobResources removes what the inner runner made for the job. A
// container the inner runner was creating when its host was killed may
// appear just after the first pass: passes repeat while they find
// something (a few at most).
func (e *Executor) removeJobResources(ctx context.Context, id int64) error {
	for pass := 0; pass < 5; pass++ {
		n, err := e.removeJobResourcesOnce(ctx, e.jobFilter(id), nil)
		if err != nil || n == 0 {
			return err
		}
	}
	return nil
}

// removeJobResourcesOnce removes the containers, then the networks, then
// the volumes matching f for which spare (if not nil) says false. It
// returns how many it removed.
func (e *Executor) removeJobResourcesOnce(ctx context.Context, f filters.Args, spare func(l map[string]string, created int64) bool) (int, error) {
	n := 0
	keep := func(l map[string]string, created int64) bool { return spare != nil && spare(l, created) }
	cs, err := e.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return n, fmt.Errorf("listing the job's containers: %w", err)
	}
	var errs []error
	for _, c := range cs {
		if keep(c.Labels, c.Created) {
			continue
		}
		if err := e.removeContainer(ctx, c.ID); err != nil {
			errs = append(errs, fmt.Errorf("removing the job's container %s: %w", strings.Join(c.Names, ","), err))
			continue
		}
		n++
	}
	nets, err := e.cli.NetworkList(ctx, network.ListOptions{Filters: f})
	if err != nil {
		return n, errors.Join(append(errs, fmt.Errorf("listing the job's networks: %w", err))...)
	}
	for _, nw := range nets {
		if keep(nw.Labels, nw.Created.Unix()) {
			continue
		}
		if err := e.cli.NetworkRemove(ctx, nw.ID); err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("removing the job's network %s: %w", nw.Name, err))
			continue
		}
		n++
	}
	vols, err := e.cli.VolumeList(ctx, volume.ListOptions{Filters: f})
	if err != nil {
		return n, errors.Join(append(errs, fmt.Errorf("listing the job's volumes: %w", err))...)
	}
	for _, v := range vols.Volumes {
		if v.Labels[labels.LabelRole] != labels.RoleJob || keep(v.Labels, volumeCreated(v)) {
			continue
		}
		if err := e.cli.VolumeRemove(ctx, v.Name, true); err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("removing the job's volume %s: %w", v.Name, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

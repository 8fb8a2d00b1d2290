// Package localdocker is the local-docker executor: each job's "host" is a
// container on a Docker engine, built from a tiny per-job image that runs
// the inner runner (paas-runner exec-fetched-job) with the job. It talks to
// the engine through the Docker SDK, never the CLI, and never blocks on a
// running job: the end of a host is seen through the engine's events.
package localdocker

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/s3cache"
)

// Labels put on everything this executor creates.
const (
	LabelManaged = "paas-runner.managed"
	LabelRunner  = "paas-runner.runner"
	LabelJobID   = "paas-runner.job-id"
	LabelState   = "paas-runner.state"
	LabelDaemon  = "paas-runner.instance"
	LabelBase    = "paas-runner.base-image"
)

// Options configure one runner's local-docker executor.
type Options struct {
	// Host is the Docker engine: unix:///path or tcp://host:port
	// (default: $DOCKER_HOST, else unix:///var/run/docker.sock).
	Host string
	// NetworkMode of the host containers (default: bridge).
	NetworkMode string
	// InnerImage, when set, is a Heptapod Runner image used as the base of
	// job hosts instead of paas-runner's own base image.
	InnerImage string
	// RunnerID identifies the runner (config.Runner.ID): host names and
	// labels carry it. RunnerLabel is the runner's display name for
	// runner.toml.
	RunnerID    string
	RunnerLabel string
	RunnerURL   string
	// Inner is forwarded to the inner runner's runner.toml.
	Inner map[string]any
	// StatePath identifies the daemon's state file: resources are labelled
	// with a hash of it, so that two daemons never touch each other's.
	StatePath string
	// InstanceID labels resources with the daemon instance (informational).
	InstanceID string
	// Cache, with an S3 [runners.cache], presigns each job's cache URLs.
	Cache *s3cache.Presigner
	// Binary is the static paas-runner binary the base image is built
	// from (default: the running executable). CABundle is copied next to
	// it (default: /etc/ssl/certs/ca-certificates.crt).
	Binary   string
	CABundle string
	// Version tags the base image.
	Version string
	Logger  *zap.Logger
}

// Executor is the local-docker executor.
type Executor struct {
	opts     Options
	cli      *client.Client
	log      *zap.Logger
	stateID  string
	sockPath string // unix socket to bind into hosts, "" for tcp hosts

	baseMu    sync.Mutex
	baseReady bool
	baseTagV  string // computed from the binary's content
	binData   []byte
}

var (
	_ executors.Executor   = (*Executor)(nil)
	_ executors.EndWatcher = (*Executor)(nil)
	_ executors.Reaper     = (*Executor)(nil)
)

// New checks the options and connects (lazily) to the engine.
func New(opts Options) (*Executor, error) {
	if opts.Host == "" {
		opts.Host = os.Getenv("DOCKER_HOST")
	}
	if opts.Host == "" {
		opts.Host = "unix:///var/run/docker.sock"
	}
	e := &Executor{opts: opts, log: opts.Logger}
	switch {
	case strings.HasPrefix(opts.Host, "unix://"):
		e.sockPath = strings.TrimPrefix(opts.Host, "unix://")
	case strings.HasPrefix(opts.Host, "tcp://"):
	default:
		return nil, fmt.Errorf("docker host %q: only unix:// and tcp:// are supported", opts.Host)
	}
	if e.log == nil {
		e.log = zap.NewNop()
	}
	if opts.RunnerID == "" || opts.RunnerURL == "" {
		return nil, errors.New("runner name and URL are required")
	}
	if opts.NetworkMode == "" {
		e.opts.NetworkMode = "bridge"
	}
	if opts.Version == "" {
		e.opts.Version = "dev"
	}
	sum := sha256.Sum256([]byte(opts.StatePath))
	e.stateID = hex.EncodeToString(sum[:6])
	cli, err := client.NewClientWithOpts(client.WithHost(opts.Host), client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker client for %s: %w", opts.Host, err)
	}
	e.cli = cli
	return e, nil
}

// Check pings the engine: a clear error at start when it is unreachable.
func (e *Executor) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := e.cli.Ping(ctx); err != nil {
		return fmt.Errorf("docker engine at %s is not reachable: %w", e.opts.Host, err)
	}
	return nil
}

// Close releases the engine connection.
func (e *Executor) Close() error { return e.cli.Close() }

// handle is what the state file records of a host.
type handle struct {
	Container string `json:"container"`
	Image     string `json:"image"`
	JobID     int64  `json:"job_id"`
}

func decodeHandle(h executors.Handle) (handle, error) {
	var hd handle
	if err := json.Unmarshal(h, &hd); err == nil && hd.Container != "" {
		return hd, nil
	}
	// Heptapod's local-docker resource is the image tag; its container
	// ran with --rm.
	var tag string
	if err := json.Unmarshal(h, &tag); err == nil && strings.HasPrefix(tag, "hpd-job-") {
		return handle{Image: tag}, nil
	}
	return handle{}, executors.BadHandle(h, "not a local-docker handle")
}

var nameSafe = strings.NewReplacer("/", "_", ":", "_", "+", "_", "=", "_", " ", "_")

func (e *Executor) names(id int64) handle {
	prefix := nameSafe.Replace(e.opts.RunnerID)
	return handle{
		Container: fmt.Sprintf("paas-job-%s-%d", prefix, id),
		Image:     fmt.Sprintf("paas-job-%s-%s-%d", e.stateID, strings.ToLower(strings.ReplaceAll(prefix, "_", "-")), id),
		JobID:     id,
	}
}

func (e *Executor) labels(id int64) map[string]string {
	l := map[string]string{
		LabelManaged: "true",
		LabelRunner:  e.opts.RunnerID,
		LabelState:   e.stateID,
		LabelDaemon:  e.opts.InstanceID,
	}
	if id > 0 {
		l[LabelJobID] = strconv.FormatInt(id, 10)
		// job images inherit the base image's labels: override
		l[LabelBase] = "false"
	}
	return l
}

// Plan names the host's container and image after the runner and job.
func (e *Executor) Plan(_ context.Context, j executors.Job) (executors.Handle, error) {
	return json.Marshal(e.names(j.ID))
}

// Provision makes sure the engine is reachable and the base image exists
// (built once per daemon version). The job's own image and container are
// made by Launch, when the job log offset to hand over is final.
func (e *Executor) Provision(ctx context.Context, h executors.Handle, j executors.Job) (executors.Handle, error) {
	if _, err := decodeHandle(h); err != nil {
		return nil, err
	}
	if err := e.Check(ctx); err != nil {
		return nil, executors.Transient("provision", err)
	}
	if e.opts.InnerImage == "" {
		if err := e.ensureBaseImage(ctx); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// BuildBaseImage builds the default host base image on the engine at host
// from binary (default: the running executable) unless it exists, and
// returns its tag.
func BuildBaseImage(ctx context.Context, host, version, binary string, log *zap.Logger) (string, error) {
	e, err := New(Options{Host: host, Version: version, Binary: binary, RunnerID: "-", RunnerURL: "-", Logger: log})
	if err != nil {
		return "", err
	}
	defer e.Close()
	if err := e.Check(ctx); err != nil {
		return "", err
	}
	return e.baseTag(), e.ensureBaseImage(ctx)
}

// baseTag names the base image after the version and the binary's hash:
// a development build never reuses an image holding another binary.
func (e *Executor) baseTag() string {
	e.baseMu.Lock()
	defer e.baseMu.Unlock()
	return e.baseTagLocked()
}

func (e *Executor) baseTagLocked() string {
	if e.baseTagV != "" {
		return e.baseTagV
	}
	tag := "paas-runner-host:" + nameSafe.Replace(e.opts.Version)
	if data, err := e.binary(); err == nil {
		sum := sha256.Sum256(data)
		tag += "-" + hex.EncodeToString(sum[:6])
	}
	e.baseTagV = tag
	return tag
}

// binary reads the static paas-runner binary the base image holds.
func (e *Executor) binary() ([]byte, error) {
	if e.binData != nil {
		return e.binData, nil
	}
	bin := e.opts.Binary
	if bin == "" {
		var err error
		if bin, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("finding paas-runner's own binary: %w", err)
		}
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, fmt.Errorf("reading %s for the base image: %w", bin, err)
	}
	e.binData = data
	return data, nil
}

// ensureBaseImage builds the default base image from the daemon's own
// static binary and a CA bundle, unless it exists.
func (e *Executor) ensureBaseImage(ctx context.Context) error {
	e.baseMu.Lock()
	defer e.baseMu.Unlock()
	if e.baseReady {
		return nil
	}
	tag := e.baseTagLocked()
	if _, err := e.cli.ImageInspect(ctx, tag); err == nil {
		e.baseReady = true
		return nil
	} else if !cerrdefs.IsNotFound(err) {
		return executors.Transient("provision", fmt.Errorf("inspecting base image %s: %w", tag, err))
	}
	binData, err := e.binary()
	if err != nil {
		return executors.Permanent("provision", err)
	}
	if err := checkStatic(binData); err != nil {
		return executors.Permanent("provision", err)
	}
	ca := e.opts.CABundle
	if ca == "" {
		ca = "/etc/ssl/certs/ca-certificates.crt"
	}
	caData, err := os.ReadFile(ca)
	if err != nil {
		return executors.Permanent("provision", fmt.Errorf("reading CA bundle for the base image: %w", err))
	}
	ctxTar, err := makeTar(tarFile{"Dockerfile", 0o644, baseDockerfile()}, tarFile{"paas-runner", 0o755, binData}, tarFile{"ca-certificates.crt", 0o644, caData}, tarFile{"tmp/", 0o1777, nil})
	if err != nil {
		return err
	}
	labels := map[string]string{LabelManaged: "true", LabelBase: "true", "org.opencontainers.image.version": e.opts.Version}
	if err := e.build(ctx, ctxTar, tag, labels); err != nil {
		return executors.Permanent("provision", fmt.Errorf("building base image %s: %w", tag, err))
	}
	e.log.Info("built the host base image", zap.String("image", tag))
	e.baseReady = true
	return nil
}

// build runs an image build and returns the build's own error, if any.
func (e *Executor) build(ctx context.Context, ctxTar io.Reader, tag string, labels map[string]string) error {
	resp, err := e.cli.ImageBuild(ctx, ctxTar, build.ImageBuildOptions{
		Tags: []string{tag}, Labels: labels, Remove: true, ForceRemove: true, PullParent: false,
	})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	var last []string
	for {
		var msg struct {
			Stream      string `json:"stream"`
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&msg); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("reading build output: %w", err)
		}
		if s := strings.TrimSpace(msg.Stream); s != "" {
			last = append(last, s)
			if len(last) > 5 {
				last = last[1:]
			}
		}
		if msg.Error != "" {
			return errors.New(strings.TrimSpace(msg.Error))
		}
	}
}

// Launch builds the job's image (Dockerfile, job.json, runner.toml), creates
// the host container and starts it. A container that already exists for
// this job is adopted; one already started is not started again.
func (e *Executor) Launch(ctx context.Context, h executors.Handle, j executors.Job) (executors.Handle, error) {
	hd, err := decodeHandle(h)
	if err != nil {
		return nil, err
	}
	if hd.Container == "" {
		return nil, executors.Permanent("launch", errors.New("imported Heptapod handle: the job cannot be relaunched"))
	}
	info, err := e.cli.ContainerInspect(ctx, hd.Container)
	switch {
	case err == nil:
		if info.Config == nil || info.Config.Labels[LabelState] != e.stateID || info.Config.Labels[LabelJobID] != strconv.FormatInt(j.ID, 10) {
			return nil, executors.Permanent("launch", fmt.Errorf("a container named %s exists but does not belong to this job; remove it by hand", hd.Container))
		}
		if started(info) {
			return h, nil // launched before a crash: never twice
		}
	case cerrdefs.IsNotFound(err):
		if err := e.buildJobImage(ctx, hd, j); err != nil {
			return nil, err
		}
		if err := e.create(ctx, hd, j); err != nil {
			return nil, err
		}
	default:
		return nil, executors.Transient("launch", fmt.Errorf("inspecting %s: %w", hd.Container, err))
	}
	if err := e.cli.ContainerStart(ctx, hd.Container, container.StartOptions{}); err != nil {
		return nil, executors.Transient("launch", fmt.Errorf("starting %s: %w", hd.Container, err))
	}
	return h, nil
}

func started(info container.InspectResponse) bool {
	if info.State == nil {
		return false
	}
	return info.State.Running || (info.State.StartedAt != "" && !strings.HasPrefix(info.State.StartedAt, "0001-01-01"))
}

func (e *Executor) buildJobImage(ctx context.Context, hd handle, j executors.Job) error {
	if _, err := e.cli.ImageInspect(ctx, hd.Image); err == nil {
		return nil // built before a crash
	}
	bc, err := e.Context(j)
	if err != nil {
		return executors.Permanent("launch", err)
	}
	t, err := bc.tar()
	if err != nil {
		return err
	}
	if err := e.build(ctx, t, hd.Image, e.labels(j.ID)); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return executors.Permanent("launch", fmt.Errorf("building the job's host image: %w", err))
	}
	return nil
}

// Context returns the build context of a job's host image.
func (e *Executor) Context(j executors.Job) (BuildContext, error) {
	var extra map[string]any
	inner := e.opts.Inner
	if e.opts.Cache != nil {
		// an S3 cache: the host gets presigned URLs, not the credentials
		urls, err := e.opts.Cache.ForJob(context.Background(), e.opts.RunnerID, j.Payload)
		if err != nil {
			return BuildContext{}, err
		}
		extra = map[string]any{"cache": urls}
		inner = s3cache.WithoutCredentials(inner)
	}
	jobJSON, err := JobJSONWith(j.Payload, j.TraceOffset, j.TraceCRC, extra)
	if err != nil {
		return BuildContext{}, err
	}
	toml, err := InnerConfig(e.opts.RunnerLabel, e.opts.RunnerURL, inner)
	if err != nil {
		return BuildContext{}, err
	}
	return BuildContext{Dockerfile: Dockerfile(e.baseTag(), e.opts.InnerImage), JobJSON: jobJSON, RunnerTOML: toml}, nil
}

func (e *Executor) create(ctx context.Context, hd handle, j executors.Job) error {
	hc := &container.HostConfig{NetworkMode: container.NetworkMode(e.opts.NetworkMode)}
	var env []string
	if e.sockPath != "" {
		hc.Binds = []string{e.sockPath + ":/var/run/docker.sock"}
	} else {
		env = append(env, "DOCKER_HOST="+e.opts.Host)
	}
	_, err := e.cli.ContainerCreate(ctx, &container.Config{Image: hd.Image, Labels: e.labels(j.ID), Env: env}, hc, nil, nil, hd.Container)
	if err != nil {
		if cerrdefs.IsConflict(err) {
			return executors.Transient("launch", fmt.Errorf("container %s appeared meanwhile: %w", hd.Container, err))
		}
		return executors.Transient("launch", fmt.Errorf("creating %s: %w", hd.Container, err))
	}
	return nil
}

// Decommission removes the host container and its image. Either being gone
// already is fine.
func (e *Executor) Decommission(ctx context.Context, h executors.Handle) error {
	hd, err := decodeHandle(h)
	if err != nil {
		return err
	}
	if hd.Container != "" {
		err := e.cli.ContainerRemove(ctx, hd.Container, container.RemoveOptions{Force: true, RemoveVolumes: true})
		if err != nil && !cerrdefs.IsNotFound(err) {
			return executors.Transient("decommission", fmt.Errorf("removing container %s: %w", hd.Container, err))
		}
	}
	if hd.Image != "" {
		_, err := e.cli.ImageRemove(ctx, hd.Image, image.RemoveOptions{Force: true, PruneChildren: true})
		if err != nil && !cerrdefs.IsNotFound(err) {
			return executors.Transient("decommission", fmt.Errorf("removing image %s: %w", hd.Image, err))
		}
	}
	return nil
}

func (e *Executor) ownFilter() filters.Args {
	return filters.NewArgs(
		filters.Arg("label", LabelManaged+"=true"),
		filters.Arg("label", LabelRunner+"="+e.opts.RunnerID),
		filters.Arg("label", LabelState+"="+e.stateID),
	)
}

// WatchEnds reports this runner's host containers that stop, with their
// exit status and last output lines.
func (e *Executor) WatchEnds(ctx context.Context, fn func(executors.End)) error {
	f := e.ownFilter()
	f.Add("type", "container")
	f.Add("event", "die")
	f.Add("event", "oom")
	msgs, errs := e.cli.Events(ctx, events.ListOptions{Filters: f})
	oom := map[string]bool{}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errs:
			return err
		case m := <-msgs:
			if m.Action == events.ActionOOM {
				oom[m.Actor.ID] = true
				continue
			}
			id, _ := strconv.ParseInt(m.Actor.Attributes[LabelJobID], 10, 64)
			if id <= 0 {
				continue
			}
			code, _ := strconv.Atoi(m.Actor.Attributes["exitCode"])
			detail := ""
			if oom[m.Actor.ID] {
				detail = "out of memory"
				delete(oom, m.Actor.ID)
			}
			if tail := e.tail(ctx, m.Actor.ID); tail != "" {
				if detail != "" {
					detail += "; "
				}
				detail += "last output: " + tail
			}
			fn(executors.End{JobID: id, ExitCode: code, Detail: detail})
		}
	}
}

// tail returns the last lines a container printed, on one line.
func (e *Executor) tail(ctx context.Context, id string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rc, err := e.cli.ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: "5"})
	if err != nil {
		return ""
	}
	defer rc.Close()
	var out bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &out, io.LimitReader(rc, 64<<10)); err != nil {
		return ""
	}
	var lines []string
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	s := strings.Join(lines, " | ")
	if len(s) > 500 {
		s = "…" + s[len(s)-500:]
	}
	return s
}

// Reap removes this runner's containers and job images that no kept handle
// describes and that are older than grace. Other runners', other daemons'
// and unlabelled resources are never touched.
func (e *Executor) Reap(ctx context.Context, keep []executors.Handle, grace time.Duration) ([]string, error) {
	keepC, keepI := map[string]bool{}, map[string]bool{}
	for _, h := range keep {
		if hd, err := decodeHandle(h); err == nil {
			keepC[hd.Container] = true
			keepI[hd.Image] = true
		}
	}
	cutoff := time.Now().Add(-grace).Unix()
	var removed []string
	cs, err := e.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: e.ownFilter()})
	if err != nil {
		return nil, fmt.Errorf("listing containers: %w", err)
	}
	for _, c := range cs {
		name := ""
		if len(c.Names) > 0 {
			name = strings.TrimPrefix(c.Names[0], "/")
		}
		if keepC[name] || c.Created > cutoff {
			continue
		}
		if err := e.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !cerrdefs.IsNotFound(err) {
			return removed, fmt.Errorf("removing container %s: %w", name, err)
		}
		removed = append(removed, "container "+name)
	}
	imgFilter := e.ownFilter()
	imgs, err := e.cli.ImageList(ctx, image.ListOptions{Filters: imgFilter})
	if err != nil {
		return removed, fmt.Errorf("listing images: %w", err)
	}
	for _, im := range imgs {
		if im.Labels[LabelBase] == "true" || im.Created > cutoff {
			continue
		}
		tag := ""
		for _, t := range im.RepoTags {
			tag = strings.TrimSuffix(t, ":latest")
		}
		if keepI[tag] {
			continue
		}
		if _, err := e.cli.ImageRemove(ctx, im.ID, image.RemoveOptions{Force: true, PruneChildren: true}); err != nil && !cerrdefs.IsNotFound(err) {
			return removed, fmt.Errorf("removing image %s: %w", tag, err)
		}
		removed = append(removed, "image "+tag)
	}
	return removed, nil
}

// Observe implements executortest.Observer: the host exists while its
// container does; it was launched once the container started.
func (e *Executor) Observe(ctx context.Context, h executors.Handle) (bool, int, error) {
	hd, err := decodeHandle(h)
	if err != nil {
		return false, 0, err
	}
	info, err := e.cli.ContainerInspect(ctx, hd.Container)
	if cerrdefs.IsNotFound(err) {
		if _, ierr := e.cli.ImageInspect(ctx, hd.Image); ierr == nil {
			return true, 0, nil
		}
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

// checkStatic refuses a binary that cannot run in a FROM-scratch image: a
// dynamically linked one (built with cgo, e.g. by a plain "go run").
func checkStatic(data []byte) error {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("paas-runner's binary is not an ELF executable: %w", err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("paas-runner's binary is dynamically linked and cannot run in the host base image; build it with CGO_ENABLED=0 (make build), or set inner_image")
		}
	}
	return nil
}

// Package localdocker is the local-docker executor: each job's "host" is a
// container on a Docker engine, created from a host image (paas-runner's
// own base image, or the image inner_image names) that runs the inner
// runner with the job. The job's files (job.json, runner.toml) are copied
// into the created container through the API before it starts: no image is
// built per job, and no token lands in an image layer. It talks to the
// engine through the Docker SDK, never the CLI, and never blocks on a
// running job: the end of a host is seen through the engine's events.
//
// Everything it creates is labelled with the daemon's system_id, the
// runner's ID and the job (internal/labels): reaping, adoption and removal
// only ever touch what this daemon's runner made.
//
// The package is split by responsibility: this file (options, names,
// handles), images.go (the host image and its shape), hosts.go (launch,
// decommission), events.go (host ends), inspect.go (restart truth),
// reap.go (orphans) and heptapod.go (hosts imported from Heptapod PAAS
// Runner).
package localdocker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/client"
	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/s3cache"
	"gitlab.com/paas-runner/paas-runner/internal/labels"
)

// Labels put on host containers (see internal/labels for the others).
const (
	// LabelManaged marks a host container made by paas-runner.
	LabelManaged = "paas-runner.managed"
	LabelRunner  = labels.LabelRunner
	LabelJobID   = labels.LabelJobID
	// LabelHostImage marks paas-runner's own host image: its entry point
	// is paas-runner's (see images.go). Images without it are taken for
	// Heptapod Runner images.
	LabelHostImage = "paas-runner.host-image"
	// LabelInnerRunner is on hosts whose main process is paas-runner's
	// exec-fetched-job (value "paas-runner"), which exits 0 only once
	// GitLab accepted the job's final state: such an exit is reported as
	// executors.End.Reported.
	LabelInnerRunner = "paas-runner.inner-runner"
	// legacyLabelInstance held the system_id on hosts made by earlier
	// versions: such a host is still recognised as this daemon's.
	legacyLabelInstance = "paas-runner.instance"
)

// Options configure one runner's local-docker executor.
type Options struct {
	// Host is the Docker engine: unix:///path or tcp://host:port
	// (default: $DOCKER_HOST, else unix:///var/run/docker.sock).
	Host string
	// NetworkMode of the host containers (default: bridge).
	NetworkMode string
	// InnerImage, when set, is the image hosts are created from instead of
	// paas-runner's own base image: a Heptapod Runner image, or an image
	// built by `paas-runner host-image` (told apart by LabelHostImage).
	InnerImage string
	// RunnerID identifies the runner (config.Runner.ID): host names and
	// labels carry it. RunnerLabel is the runner's display name for
	// runner.toml.
	RunnerID    string
	RunnerLabel string
	RunnerURL   string
	// LegacyRunnerIDs are the IDs Heptapod PAAS Runner knew this runner
	// by (config.LegacyID), when they differ from RunnerID: hosts it
	// made (hpd-job-<id>-<job>) are adopted under them.
	LegacyRunnerIDs []string
	// Inner is forwarded to the inner runner's runner.toml.
	Inner map[string]any
	// TLSCAFile is the runner's tls-ca-file: hosts get a copy (CAFile)
	// that their runner.toml's tls-ca-file names, for GitLab behind a
	// private CA. Read once by New.
	TLSCAFile string
	// SystemID is the daemon's system_id (required): every resource is
	// labelled with it, and the reaper and adoption only touch resources
	// that carry it, so that two daemons on one engine never touch each
	// other's.
	SystemID string
	// EventsSince is where WatchEnds starts reading the engine's events
	// (default: when New was called, before the dispatcher inspects the
	// hosts at resume): an end that happens meanwhile is not missed.
	EventsSince time.Time
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
	// WrapTransport, when set, wraps the HTTP transport of the engine's
	// API client (the daemon counts the engine's API requests with it);
	// attach and exec streams, which hijack their connection, are not
	// seen by it.
	WrapTransport func(http.RoundTripper) http.RoundTripper
}

// Executor is the local-docker executor.
type Executor struct {
	opts     Options
	cli      *client.Client
	log      *zap.Logger
	sockPath string // unix socket to bind into hosts, "" for tcp hosts
	base     *baseImage
	ca       []byte // Options.TLSCAFile's content

	evMu     sync.Mutex
	evSince  time.Time // where the next WatchEnds starts
	testStep func(step string) error
}

var (
	_ executors.LeadTaker  = (*Executor)(nil)
	_ executors.Executor   = (*Executor)(nil)
	_ executors.EndWatcher = (*Executor)(nil)
	_ executors.Reaper     = (*Executor)(nil)
	_ executors.Inspector  = (*Executor)(nil)
)

// New checks the options and connects (lazily) to the engine.
func New(opts Options) (*Executor, error) {
	if opts.EventsSince.IsZero() {
		opts.EventsSince = time.Now()
	}
	if opts.RunnerID == "" || opts.RunnerURL == "" {
		return nil, errors.New("runner ID and URL are required")
	}
	if opts.SystemID == "" {
		return nil, errors.New("the daemon's system_id is required")
	}
	if opts.NetworkMode == "" {
		opts.NetworkMode = "bridge"
	}
	ca, err := ReadCA(opts.TLSCAFile)
	if err != nil {
		return nil, err
	}
	cli, sock, err := connect(opts.Host, opts.WrapTransport)
	if err != nil {
		return nil, err
	}
	opts.Host = cli.DaemonHost()
	e := &Executor{opts: opts, cli: cli, log: opts.Logger, sockPath: sock, evSince: opts.EventsSince, ca: ca}
	if e.log == nil {
		e.log = zap.NewNop()
	}
	e.base = newBaseImage(cli, opts.Version, opts.Binary, opts.CABundle, e.log)
	return e, nil
}

// connect makes a client for host (default: $DOCKER_HOST, else the local
// socket) and returns the socket path to bind into hosts ("" for tcp).
func connect(host string, wrap func(http.RoundTripper) http.RoundTripper) (*client.Client, string, error) {
	if host == "" {
		host = os.Getenv("DOCKER_HOST")
	}
	if host == "" {
		host = "unix:///var/run/docker.sock"
	}
	sock := ""
	switch {
	case strings.HasPrefix(host, "unix://"):
		sock = strings.TrimPrefix(host, "unix://")
	case strings.HasPrefix(host, "tcp://"):
	default:
		return nil, "", fmt.Errorf("docker host %q: only unix:// and tcp:// are supported", host)
	}
	opts := []client.Opt{client.WithHost(host), client.WithAPIVersionNegotiation()}
	if wrap != nil {
		// WithHost sets the dialer of the transport it is given, so the
		// transport is handed over first and wrapped once it dials the
		// engine (the SDK's own defaults for a long-lived client).
		tr := &http.Transport{MaxIdleConns: 6, IdleConnTimeout: 30 * time.Second}
		opts = append([]client.Opt{client.WithHTTPClient(&http.Client{Transport: tr})}, opts...)
		opts = append(opts, client.WithHTTPClient(&http.Client{Transport: wrap(tr)}))
	}
	cli, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, "", fmt.Errorf("docker client for %s: %w", host, err)
	}
	return cli, sock, nil
}

// Check pings the engine: a clear error at start when it is unreachable.
func (e *Executor) Check(ctx context.Context) error { return ping(ctx, e.cli) }

func ping(ctx context.Context, cli *client.Client) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx); err != nil {
		return fmt.Errorf("docker engine at %s is not reachable: %w", cli.DaemonHost(), err)
	}
	return nil
}

// Close releases the engine connection.
func (e *Executor) Close() error { return e.cli.Close() }

// handle is what the state file records of a host.
type handle struct {
	Container string `json:"container"`
	// Image is a per-job image to remove with the host: made by earlier
	// versions, or Heptapod's hpd-job-… image. Empty for new hosts.
	Image string `json:"image,omitempty"`
	JobID int64  `json:"job_id"`
	// Heptapod marks a host Heptapod PAAS Runner made (see heptapod.go):
	// unlabelled, found by its image.
	Heptapod bool `json:"heptapod,omitempty"`
}

func decodeHandle(h executors.Handle) (handle, error) {
	var hd handle
	if err := json.Unmarshal(h, &hd); err == nil && (hd.Container != "" || hd.Heptapod) {
		return hd, nil
	}
	// Heptapod's local-docker resource is the image tag.
	var tag string
	if err := json.Unmarshal(h, &tag); err == nil {
		if id, ok := heptapodJobID(tag); ok {
			return handle{Image: tag, JobID: id, Heptapod: true}, nil
		}
	}
	return handle{}, executors.BadHandle(h, "not a local-docker handle")
}

func marshalHandle(hd handle) executors.Handle {
	b, _ := json.Marshal(hd)
	return b
}

var nameSafe = strings.NewReplacer("/", "_", ":", "_", "+", "_", "=", "_", " ", "_")

func (e *Executor) names(id int64) handle {
	return handle{Container: fmt.Sprintf("paas-job-%s-%d", nameSafe.Replace(e.opts.RunnerID), id), JobID: id}
}

// scope is the labels every resource of this daemon's runner carries.
func (e *Executor) scope() map[string]string {
	return map[string]string{labels.LabelSystemID: e.opts.SystemID, labels.LabelRunner: e.opts.RunnerID}
}

// hostLabels are a host container's labels.
func (e *Executor) hostLabels(id int64) map[string]string {
	l := e.scope()
	l[LabelManaged] = "true"
	l[labels.LabelJobID] = strconv.FormatInt(id, 10)
	l[labels.LabelRole] = labels.RoleHost
	return l
}

// ours tells whether a container's labels say it is this daemon's and
// this runner's (hosts made by earlier versions carried the system_id in
// legacyLabelInstance).
func (e *Executor) ours(l map[string]string) bool {
	if l[labels.LabelRunner] != e.opts.RunnerID {
		return false
	}
	return l[labels.LabelSystemID] == e.opts.SystemID || (l[labels.LabelSystemID] == "" && l[legacyLabelInstance] == e.opts.SystemID)
}

// TakesTraceLead: hosts made from paas-runner's own base image run its
// inner runner, which sends the daemon's last lines (job.json's
// paas_runner.trace_lead) with its first log update. An inner_image may
// run Heptapod Runner, which would not.
func (e *Executor) TakesTraceLead() bool { return e.opts.InnerImage == "" }

// Plan names the host's container after the runner and job.
func (e *Executor) Plan(_ context.Context, j executors.Job) (executors.Handle, error) {
	return marshalHandle(e.names(j.ID)), nil
}

// Provision makes sure the engine is reachable and the host image exists
// (the base image is built once per daemon version; inner_image is pulled
// if missing). The host container is made by Launch, when the job log
// offset to hand over is final.
func (e *Executor) Provision(ctx context.Context, h executors.Handle, j executors.Job) (executors.Handle, error) {
	hd, err := decodeHandle(h)
	if err != nil {
		return nil, err
	}
	if err := e.Check(ctx); err != nil {
		return nil, executors.Transient("provision", err)
	}
	if hd.Heptapod {
		return h, nil // its host exists or not: Launch adopts it
	}
	if _, err := e.hostImage(ctx); err != nil {
		return nil, err
	}
	return h, nil
}

// step is a test hook: called after each side effect of Launch, an error
// stops it there (a crash).
func (e *Executor) step(name string) error {
	if e.testStep != nil {
		return e.testStep(name)
	}
	return nil
}

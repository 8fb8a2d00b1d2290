package jobrunner

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/job"
)

// The Docker side of a job: images, the script's containers, cleanup.

// imagePuller is the part of the Docker API pulling images uses.
type imagePuller interface {
	ImageInspect(ctx context.Context, ref string, opts ...client.ImageInspectOption) (image.InspectResponse, error)
	ImagePull(ctx context.Context, ref string, opts image.PullOptions) (io.ReadCloser, error)
}

// pullImage gets an image per its pull policies (the job's, else the
// runner's, else always; limited to allowed_pull_policies), with the
// registry credentials chosen for it.
func (r *runner) pullImage(ctx context.Context, ref string, policies []string, platform *ocispec.Platform) error {
	return r.pullImageWith(ctx, r.docker, r.trace, ref, policies, platform)
}

// pullImageWith tries each policy in turn like gitlab-runner: always
// pulls, if-not-present pulls a missing image, never requires it locally;
// a failure falls through to the next policy. With a platform, only an
// image of that platform is present (as GitLab Runner inspects), and the
// pull asks for it.
func (r *runner) pullImageWith(ctx context.Context, api imagePuller, out io.Writer, ref string, jobPolicies []string, platform *ocispec.Platform) error {
	policies, err := effectivePullPolicies(ref, jobPolicies, r.o.Config.Docker)
	if err != nil {
		return err
	}
	if len(r.o.Config.Docker.AllowedPullPolicies) > 0 {
		fmt.Fprintf(out, "Using effective pull policy of [%s] for container %s\n", strings.Join(policies, " "), ref)
	}
	var inspectOpts []client.ImageInspectOption
	if platform != nil {
		inspectOpts = append(inspectOpts, client.ImageInspectWithPlatform(platform))
	}
	_, ierr := api.ImageInspect(ctx, ref, inspectOpts...)
	if ierr != nil && platform != nil && !cerrdefs.IsNotFound(ierr) {
		// an engine older than API 1.49 inspects for no platform (its
		// create still checks the image's)
		_, ierr = api.ImageInspect(ctx, ref)
	}
	present := ierr == nil
	var lastErr error
	for _, pol := range policies {
		if pol == "never" || pol == "if-not-present" {
			if present {
				fmt.Fprintf(out, "Using locally found image %s\n", ref)
				return nil
			}
			if pol == "never" {
				continue
			}
		}
		auth := r.registryAuth(out, ref)
		fmt.Fprintf(out, "Pulling docker image %s ...\n", ref)
		rc, err := api.ImagePull(ctx, ref, image.PullOptions{RegistryAuth: auth, Platform: platformString(platform)})
		if err == nil {
			_, err = io.Copy(io.Discard, rc)
			rc.Close()
		}
		if err == nil {
			return nil
		}
		lastErr = fmt.Errorf("pulling %s: %w", ref, err)
	}
	if lastErr != nil {
		return lastErr
	}
	return fmt.Errorf("image %s is not present locally and the pull policy (%s) does not allow pulling it", ref, strings.Join(policies, ", "))
}

// registryAuth encodes the credentials chosen for ref (see auth.go), or
// "" when none match.
func (r *runner) registryAuth(out io.Writer, ref string) string {
	creds, warns := registryCreds(r.expanded.Get("DOCKER_AUTH_CONFIG"), r.p.Credentials)
	for _, w := range warns {
		fmt.Fprintf(out, "%sWARNING: %s%s\n", ansiBoldRed, w, ansiReset)
	}
	c := credsForImage(ref, creds)
	if c == nil {
		return ""
	}
	fmt.Fprintf(out, "Authenticating with credentials from %s\n", c.source)
	a, _ := registry.EncodeAuthConfig(c.auth)
	return a
}

// jobNetwork sets the network of a script container: the job's network
// when it has services; else [runners.docker] network_mode when set; else,
// on a host that is a container of the same engine (local-docker), that
// container's network namespace. A job then has its host's network, as
// its processes would on a PaaS host, and its containers start without a
// network namespace and interface of their own, which is most of what a
// container start costs on a busy engine (about 2 s down to 0.7 s each
// with 20 starting at once on 2 cores; BENCHMARKS.md). Options Docker
// refuses with a shared namespace (dns, dns_search, extra_hosts, net.*
// sysctls) keep the engine's default network.
func (r *runner) jobNetwork(hc *container.HostConfig) {
	switch {
	case r.network != "":
		hc.NetworkMode = container.NetworkMode(r.network)
	case hc.NetworkMode != "" || r.o.Job == nil || r.o.Job.HostContainer == "":
	case len(hc.DNS) > 0 || len(hc.DNSSearch) > 0 || len(hc.ExtraHosts) > 0 || hasNetSysctl(hc.Sysctls):
	default:
		hc.NetworkMode = container.NetworkMode("container:" + r.o.Job.HostContainer)
	}
}

func hasNetSysctl(s map[string]string) bool {
	for k := range s {
		if strings.HasPrefix(k, "net.") {
			return true
		}
	}
	return false
}

// runScript runs commands in a new container of img with the builds volume
// at builds_dir; srcDir, when set, is copied into the project directory
// first. graceful, when closed, stops the container (SIGTERM, then KILL).
func (r *runner) runScript(ctx context.Context, graceful <-chan struct{}, img string, cmds []string, srcDir string, extra []job.Variable) (int, error) {
	env, files := r.env(extra...)
	script := r.shellScript(cmds)
	// the image's ENTRYPOINT is kept unless the job sets one; the script
	// goes on stdin (shell.go)
	cfg := &container.Config{
		Image: img, Env: env, WorkingDir: "/",
		Cmd: shellCommand(), Entrypoint: r.p.Image.Entrypoint,
		AttachStdin: true, OpenStdin: true, StdinOnce: true,
		User:   r.jobUser(),
		Labels: r.labels(),
	}
	if u := r.o.Config.Docker.User; u != "" {
		cfg.User = u // [runners.docker] user wins over the job's, as in gitlab-runner
	}
	binds, err := r.volumeBinds(ctx)
	if err != nil {
		return 0, err
	}
	jhc := jobHostConfig(r.o.Config.Docker)
	hc := &jhc
	hc.Mounts = []mount.Mount{{Type: mount.TypeVolume, Source: r.volume, Target: r.o.Config.BuildsDir}}
	hc.Binds = binds
	r.jobNetwork(hc)
	r.mu.Lock()
	n := len(r.created)
	r.mu.Unlock()
	c, err := r.docker.ContainerCreate(ctx, cfg, hc, nil, r.jobPlatform(), fmt.Sprintf("%s-%d", r.name, n))
	if err != nil {
		return 0, fmt.Errorf("creating the job container: %w", err)
	}
	r.track(c.ID)
	if srcDir != "" {
		r.mu.Lock()
		r.script = c.ID
		r.mu.Unlock()
	}
	if srcDir != "" && r.inHost {
		// already in the builds volume: only the modes a copy would give
		if err := openDirs(srcDir); err != nil {
			return 0, fmt.Errorf("preparing the sources: %w", err)
		}
	} else if srcDir != "" {
		t, err := tarDir(srcDir, r.projectDir())
		if err != nil {
			return 0, fmt.Errorf("packing the sources: %w", err)
		}
		if err := r.docker.CopyToContainer(ctx, c.ID, "/", t, container.CopyToContainerOptions{}); err != nil {
			return 0, fmt.Errorf("copying the sources into the job container: %w", err)
		}
	}
	if len(files) > 0 {
		var entries []struct{ name, data string }
		for p, d := range files {
			entries = append(entries, struct{ name, data string }{p, string(d)})
		}
		t, err := tarFiles(entries)
		if err == nil {
			err = r.docker.CopyToContainer(ctx, c.ID, "/", t, container.CopyToContainerOptions{})
		}
		if err != nil {
			return 0, fmt.Errorf("writing file variables: %w", err)
		}
	}
	r.shipGuard(ctx, c.ID, img) // guardbin.go
	att, err := r.docker.ContainerAttach(ctx, c.ID, container.AttachOptions{Stream: true, Stdin: true, Stdout: true, Stderr: true})
	if err != nil {
		return 0, fmt.Errorf("attaching to the job container: %w", err)
	}
	defer att.Close()
	copied := make(chan struct{})
	go func() {
		_, _ = stdcopy.StdCopy(r.trace, r.trace, att.Reader)
		close(copied)
	}()
	waitC, errC := r.docker.ContainerWait(context.WithoutCancel(ctx), c.ID, container.WaitConditionNextExit)
	if err := r.docker.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		return 0, fmt.Errorf("starting the job container: %w", err)
	}
	go func() {
		// an entrypoint that never reads its input leaves this blocked
		// until att.Close
		if _, err := io.WriteString(att.Conn, script); err == nil {
			_ = att.CloseWrite()
		}
	}()
	stop := func(grace time.Duration) {
		sctx, cancel := context.WithTimeout(context.Background(), grace+10*time.Second)
		defer cancel()
		secs := int(grace.Seconds())
		_ = r.docker.ContainerStop(sctx, c.ID, container.StopOptions{Timeout: &secs})
	}
	for {
		select {
		case w := <-waitC:
			<-copied
			if w.Error != nil {
				return int(w.StatusCode), errors.New(w.Error.Message)
			}
			return int(w.StatusCode), nil
		case err := <-errC:
			return 0, fmt.Errorf("waiting for the job container: %w", err)
		case <-graceful:
			graceful = nil
			go stop(10 * time.Second)
		case <-ctx.Done():
			stop(0)
			w := <-waitC
			<-copied
			return int(w.StatusCode), nil
		}
	}
}

func tarFiles(entries []struct{ name, data string }) (io.Reader, error) {
	var buf bytes.Buffer
	tw := newTar(&buf)
	for _, e := range entries {
		if err := tw.add(e.name, []byte(e.data), 0o600); err != nil {
			return nil, err
		}
	}
	return &buf, tw.Close()
}

// cleanup removes every container and the volume this job created.
func (r *runner) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r.mu.Lock()
	ids := append([]string(nil), r.created...)
	r.mu.Unlock()
	for _, id := range ids {
		if err := r.docker.ContainerRemove(ctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !cerrdefs.IsNotFound(err) {
			r.log.Warn("removing a job container failed", zap.Error(err))
		}
	}
	for _, v := range r.tmpVolumes {
		if err := r.docker.VolumeRemove(ctx, v, true); err != nil && !cerrdefs.IsNotFound(err) {
			r.log.Warn("removing a job volume failed", zap.String("volume", v), zap.Error(err))
		}
	}
	if r.volume != "" && !r.inHost { // the host's is the daemon's to remove
		if err := r.docker.VolumeRemove(ctx, r.volume, true); err != nil && !cerrdefs.IsNotFound(err) {
			r.log.Warn("removing the builds volume failed", zap.Error(err))
		}
	}
	if r.network != "" {
		if err := r.docker.NetworkRemove(ctx, r.network); err != nil && !cerrdefs.IsNotFound(err) {
			r.log.Warn("removing the job network failed", zap.Error(err))
		}
	}
}

// randomSuffix tells apart the resources of two runs of a same job id on
// one engine (two GitLab instances, a retried job).
func randomSuffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// track records a container to remove at the end.
func (r *runner) track(id string) {
	r.mu.Lock()
	r.created = append(r.created, id)
	r.mu.Unlock()
}

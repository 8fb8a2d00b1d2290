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
	"github.com/docker/docker/pkg/stdcopy"
	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/job"
)

// The Docker side of a job: images, the script's containers, cleanup.

// pullImage applies the pull policy (the job's, else the runner's, else
// always): always pulls, if-not-present pulls a missing image, never
// requires it locally.
func (r *runner) pullImage(ctx context.Context, ref string, policies []string) error {
	if len(policies) == 0 {
		policies = r.o.Config.Docker.PullPolicy
	}
	if len(policies) == 0 {
		policies = []string{"always"}
	}
	_, ierr := r.docker.ImageInspect(ctx, ref)
	present := ierr == nil
	var lastErr error
	for _, pol := range policies {
		if pol == "never" || pol == "if-not-present" {
			if present {
				r.printf("Using locally found image %s\n", ref)
				return nil
			}
			if pol == "never" {
				continue
			}
		}
		// always, or if-not-present with the image missing: pull; a
		// failure falls through to the next policy of the list
		r.printf("Pulling docker image %s ...\n", ref)
		rc, err := r.docker.ImagePull(ctx, ref, image.PullOptions{RegistryAuth: r.registryAuth(ref)})
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

// registryAuth picks the payload's credentials for the image's registry.
func (r *runner) registryAuth(ref string) string {
	domain, _ := job.SplitDockerDomain(ref)
	for _, c := range r.p.Credentials {
		if c.Type == "registry" && (c.URL == domain || strings.TrimSuffix(c.URL, ":443") == domain) {
			a, _ := registry.EncodeAuthConfig(registry.AuthConfig{Username: c.Username, Password: c.Password, ServerAddress: c.URL})
			return a
		}
	}
	return ""
}

// runScript runs commands in a new container of img with the builds volume
// at builds_dir; srcDir, when set, is copied into the project directory
// first. graceful, when closed, stops the container (SIGTERM, then KILL).
func (r *runner) runScript(ctx context.Context, graceful <-chan struct{}, img string, cmds []string, srcDir string, extra []job.Variable) (int, error) {
	env, files := r.env(extra...)
	cfg := &container.Config{
		Image: img, Env: env, WorkingDir: "/",
		Cmd:    shellCommand(r.shellScript(cmds)),
		Labels: r.labels(),
	}
	if ep := r.p.Image.Entrypoint; len(ep) > 0 {
		cfg.Entrypoint = ep
	} else {
		cfg.Entrypoint = []string{}
	}
	hc := &container.HostConfig{
		NetworkMode: container.NetworkMode(r.o.Config.Docker.NetworkMode),
		Privileged:  r.o.Config.Docker.Privileged,
		Mounts:      []mount.Mount{{Type: mount.TypeVolume, Source: r.volume, Target: r.o.Config.BuildsDir}},
	}
	if r.network != "" {
		hc.NetworkMode = container.NetworkMode(r.network)
	}
	r.mu.Lock()
	n := len(r.created)
	r.mu.Unlock()
	c, err := r.docker.ContainerCreate(ctx, cfg, hc, nil, nil, fmt.Sprintf("%s-%d", r.name, n))
	if err != nil {
		return 0, fmt.Errorf("creating the job container: %w", err)
	}
	r.track(c.ID)
	if srcDir != "" {
		r.mu.Lock()
		r.script = c.ID
		r.mu.Unlock()
	}
	if srcDir != "" {
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
	att, err := r.docker.ContainerAttach(ctx, c.ID, container.AttachOptions{Stream: true, Stdout: true, Stderr: true})
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
	if r.volume != "" {
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

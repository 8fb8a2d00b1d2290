package jobrunner

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// fakeDocker is an engine without containers: a "container" is the
// host's sh running the container's command with its environment and
// standard input, in a directory (root) that stands for the builds volume.
// Paths copied in are kept only under root. It records what the runner
// asked for, so that tests of the script and step logic need no engine.
type fakeDocker struct {
	root   string // builds_dir of the tests using it
	images map[string]bool

	mu         sync.Mutex
	pulls      []image.PullOptions
	pulled     []string
	containers map[string]*fakeContainer
	order      []*fakeContainer
	volumes    map[string]bool
	removed    []string
	seq        int
}

type fakeContainer struct {
	id       string
	cfg      *container.Config
	hc       *container.HostConfig
	platform *ocispec.Platform
	stdin    *io.PipeReader
	stdinW   *io.PipeWriter
	outR     *io.PipeReader
	outW     *io.PipeWriter
	cmd      *exec.Cmd
	done     chan container.WaitResponse
	exitCh   chan struct{} // closed when the process ended
	started  bool
	stopped  bool
	script   strings.Builder // what came on stdin
}

var _ Docker = (*fakeDocker)(nil)

func newFakeDocker(root string, images ...string) *fakeDocker {
	f := &fakeDocker{root: root, images: map[string]bool{}, containers: map[string]*fakeContainer{}, volumes: map[string]bool{}}
	for _, i := range images {
		f.images[i] = true
	}
	return f
}

func notFound(what string) error { return fmt.Errorf("%s: %w", what, cerrdefs.ErrNotFound) }

func (f *fakeDocker) ImageInspect(_ context.Context, ref string, _ ...client.ImageInspectOption) (image.InspectResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.images[ref] {
		return image.InspectResponse{}, notFound("image " + ref)
	}
	return image.InspectResponse{ID: "sha256:" + ref}, nil
}

func (f *fakeDocker) ImagePull(_ context.Context, ref string, o image.PullOptions) (io.ReadCloser, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pulls = append(f.pulls, o)
	f.pulled = append(f.pulled, ref)
	f.images[ref] = true
	return io.NopCloser(strings.NewReader(`{"status":"pulled"}`)), nil
}

func (f *fakeDocker) ContainerCreate(_ context.Context, cfg *container.Config, hc *container.HostConfig, _ *network.NetworkingConfig, p *ocispec.Platform, name string) (container.CreateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.images[cfg.Image] {
		return container.CreateResponse{}, notFound("image " + cfg.Image)
	}
	f.seq++
	c := &fakeContainer{id: fmt.Sprintf("c%d-%s", f.seq, name), cfg: cfg, hc: hc, platform: p, done: make(chan container.WaitResponse, 1), exitCh: make(chan struct{})}
	c.stdin, c.stdinW = io.Pipe()
	c.outR, c.outW = io.Pipe()
	f.containers[c.id] = c
	f.order = append(f.order, c)
	return container.CreateResponse{ID: c.id}, nil
}

func (f *fakeDocker) get(id string) (*fakeContainer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.containers[id]
	if c == nil {
		return nil, notFound("container " + id)
	}
	return c, nil
}

func (f *fakeDocker) ContainerInspect(_ context.Context, id string) (container.InspectResponse, error) {
	if _, err := f.get(id); err != nil {
		return container.InspectResponse{}, err
	}
	return container.InspectResponse{}, nil
}

// hijacked is the attach stream: writes go to the container's stdin,
// reads come from its (multiplexed) output.
type hijacked struct {
	c *fakeContainer
}

func (h hijacked) Read(p []byte) (int, error)       { return h.c.outR.Read(p) }
func (h hijacked) Write(p []byte) (int, error)      { return h.c.stdinW.Write(p) }
func (h hijacked) CloseWrite() error                { return h.c.stdinW.Close() }
func (h hijacked) Close() error                     { h.c.stdinW.Close(); return h.c.outR.Close() }
func (h hijacked) LocalAddr() net.Addr              { return nil }
func (h hijacked) RemoteAddr() net.Addr             { return nil }
func (h hijacked) SetDeadline(time.Time) error      { return nil }
func (h hijacked) SetReadDeadline(time.Time) error  { return nil }
func (h hijacked) SetWriteDeadline(time.Time) error { return nil }

func (f *fakeDocker) ContainerAttach(_ context.Context, id string, _ container.AttachOptions) (types.HijackedResponse, error) {
	c, err := f.get(id)
	if err != nil {
		return types.HijackedResponse{}, err
	}
	h := hijacked{c}
	return types.HijackedResponse{Conn: h, Reader: bufio.NewReader(h)}, nil
}

// ContainerStart runs the command with the host's sh: an ENTRYPOINT set
// on the container (the fake images have none) would go first.
func (f *fakeDocker) ContainerStart(_ context.Context, id string, _ container.StartOptions) error {
	c, err := f.get(id)
	if err != nil {
		return err
	}
	argv := append(append([]string(nil), c.cfg.Entrypoint...), c.cfg.Cmd...)
	if len(argv) == 0 {
		return errors.New("no command")
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	// the PATH an image's ENV would give
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, c.cfg.Env...)
	cmd.Dir = f.root
	cmd.Stdin = io.TeeReader(c.stdin, &lockedBuilder{mu: &f.mu, b: &c.script})
	cmd.Stdout = stdcopy.NewStdWriter(c.outW, stdcopy.Stdout)
	cmd.Stderr = stdcopy.NewStdWriter(c.outW, stdcopy.Stderr)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	f.mu.Lock()
	c.cmd, c.started = cmd, true
	f.mu.Unlock()
	go func() {
		err := cmd.Wait()
		c.outW.Close()
		c.stdin.Close()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
			if code < 0 { // killed by a signal, as an engine reports it
				code = 128 + int(ee.Sys().(syscall.WaitStatus).Signal())
			}
		}
		close(c.exitCh)
		c.done <- container.WaitResponse{StatusCode: int64(code)}
	}()
	return nil
}

type lockedBuilder struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (l *lockedBuilder) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (f *fakeDocker) ContainerWait(_ context.Context, id string, _ container.WaitCondition) (<-chan container.WaitResponse, <-chan error) {
	errC := make(chan error, 1)
	c, err := f.get(id)
	if err != nil {
		errC <- err
		return nil, errC
	}
	return c.done, errC
}

// ContainerStop: SIGTERM to the process group, SIGKILL after the timeout.
func (f *fakeDocker) ContainerStop(ctx context.Context, id string, o container.StopOptions) error {
	c, err := f.get(id)
	if err != nil {
		return err
	}
	f.mu.Lock()
	c.stopped = true
	cmd := c.cmd
	f.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return nil
	}
	grace := 10 * time.Second
	if o.Timeout != nil {
		grace = time.Duration(*o.Timeout) * time.Second
	}
	pg := -cmd.Process.Pid
	_ = syscall.Kill(pg, syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-t.C:
		_ = syscall.Kill(pg, syscall.SIGKILL)
	case <-ctx.Done():
		_ = syscall.Kill(pg, syscall.SIGKILL)
	case <-c.exitCh:
	}
	return nil
}

func (f *fakeDocker) ContainerRemove(_ context.Context, id string, _ container.RemoveOptions) error {
	c, err := f.get(id)
	if err != nil {
		return err
	}
	f.mu.Lock()
	cmd := c.cmd
	delete(f.containers, id)
	f.removed = append(f.removed, id)
	f.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	return nil
}

// CopyToContainer extracts the regular files and directories of a tar
// under root (other paths are dropped: the fake has no image filesystem).
func (f *fakeDocker) CopyToContainer(_ context.Context, id, dst string, content io.Reader, _ container.CopyToContainerOptions) error {
	if _, err := f.get(id); err != nil {
		return err
	}
	tr := tar.NewReader(content)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		p := filepath.Join(dst, h.Name)
		if !strings.HasPrefix(p, f.root+"/") {
			continue
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			data, err := io.ReadAll(tr)
			if err == nil {
				err = os.WriteFile(p, data, 0o644)
			}
			if err != nil {
				return err
			}
		}
	}
}

func (f *fakeDocker) CopyFromContainer(_ context.Context, id, src string) (io.ReadCloser, container.PathStat, error) {
	return nil, container.PathStat{}, notFound(src)
}

func (f *fakeDocker) VolumeCreate(_ context.Context, o volume.CreateOptions) (volume.Volume, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.volumes[o.Name] = true
	return volume.Volume{Name: o.Name, Labels: o.Labels}, nil
}

func (f *fakeDocker) VolumeInspect(_ context.Context, id string) (volume.Volume, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.volumes[id] {
		return volume.Volume{}, notFound("volume " + id)
	}
	return volume.Volume{Name: id}, nil
}

func (f *fakeDocker) VolumeList(context.Context, volume.ListOptions) (volume.ListResponse, error) {
	return volume.ListResponse{}, nil
}

func (f *fakeDocker) VolumeRemove(_ context.Context, id string, _ bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.volumes[id] {
		return notFound("volume " + id)
	}
	delete(f.volumes, id)
	return nil
}

func (f *fakeDocker) NetworkCreate(_ context.Context, name string, _ network.CreateOptions) (network.CreateResponse, error) {
	return network.CreateResponse{ID: "net-" + name}, nil
}

func (f *fakeDocker) NetworkRemove(context.Context, string) error { return nil }

// created are the containers made so far, in order.
func (f *fakeDocker) created() []*fakeContainer {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*fakeContainer(nil), f.order...)
}

func (f *fakeDocker) scriptOf(c *fakeContainer) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return c.script.String()
}

package localdocker

import (
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"sync"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/executors"
)

// Paths inside a host.
const (
	confDir         = "/etc/paas-runner"
	heptapodConfDir = "/etc/heptapod-runner"
	binaryInImage   = "/usr/bin/paas-runner"
	// heptapodEntry is Heptapod Runner's binary; in paas-runner's base
	// image it is a link to paas-runner, which answers Heptapod's entry
	// point too.
	heptapodEntry = "/usr/bin/gitlab-runner"
)

// shape is how a host image runs the inner runner: its entry point, and
// the environment it wants. Where job.json and runner.toml go is read from
// the entry point (the path after --config, and the last argument).
type shape struct {
	Name       string
	Entrypoint []string
	Env        []string
}

// paasShape is paas-runner's own base image.
var paasShape = shape{Name: "paas-runner",
	Entrypoint: []string{binaryInImage, "exec-fetched-job", "--config", confDir + "/runner.toml", confDir + "/job.json"}}

// FilesFromStdin is the inner runner's flag (exec-fetched-job) that has it
// read its files from its standard input, a tar, before it starts: the
// executor sends them there as the host starts, rather than copying them
// into the container through the API beforehand (a copy costs the engine
// a mount of the container's file system and a process). Only hosts of
// the default image, made from the daemon's own binary, get it.
const FilesFromStdin = "--files-from-stdin"

// ExitNoFiles is the inner runner's exit status when its files did not
// arrive on its standard input (the daemon stopped while sending them):
// it ran nothing, and its host may be made again.
const ExitNoFiles = 75

// stdinEntrypoint is paasShape's entry point reading its files from stdin.
func stdinEntrypoint() []string {
	ep := paasShape.Entrypoint
	return append([]string{ep[0], ep[1], FilesFromStdin}, ep[2:]...)
}

// filesFromStdin tells whether a host's entry point reads its files from
// its standard input.
func filesFromStdin(entrypoint []string) bool {
	for _, a := range entrypoint {
		if a == FilesFromStdin {
			return true
		}
	}
	return false
}

// heptapodShape is Heptapod PAAS Runner's Dockerfile (§5.1 of the research
// notes): ENV DEBUG="true", ENTRYPOINT gitlab-runner exec-fetched-job.
var heptapodShape = shape{Name: "heptapod",
	Entrypoint: []string{heptapodEntry, "exec-fetched-job", "--config", heptapodConfDir + "/runner.toml", heptapodConfDir + "/job.json"},
	Env:        []string{"DEBUG=true"}}

// shapeOf chooses the shape from an image's labels: paas-runner's base
// image says so (LabelHostImage); any other image is taken for a Heptapod
// Runner image.
func shapeOf(imageLabels map[string]string) shape {
	if imageLabels[LabelHostImage] != "" {
		return paasShape
	}
	return heptapodShape
}

// filePaths returns where an entry point reads runner.toml and job.json.
func filePaths(entrypoint []string) (runnerTOML, jobJSON string, err error) {
	for i, a := range entrypoint {
		if a == "--config" && i+1 < len(entrypoint) {
			runnerTOML = entrypoint[i+1]
		}
	}
	if runnerTOML == "" || len(entrypoint) < 2 || !path.IsAbs(entrypoint[len(entrypoint)-1]) {
		return "", "", fmt.Errorf("entry point %q does not name runner.toml and job.json", entrypoint)
	}
	return runnerTOML, entrypoint[len(entrypoint)-1], nil
}

// hostRef is the image a host is created from and its shape.
type hostRef struct {
	Image string
	Shape shape
}

// hostImage makes sure the image hosts are created from exists (building
// the base image, or pulling inner_image when the engine lacks it) and
// says its shape. It is looked at for each job: retagging inner_image
// takes effect at the next job.
func (e *Executor) hostImage(ctx context.Context) (hostRef, error) {
	if e.opts.InnerImage == "" {
		if err := e.base.ensure(ctx); err != nil {
			return hostRef{}, err
		}
		return hostRef{Image: e.base.Tag(), Shape: paasShape}, nil
	}
	ref := e.opts.InnerImage
	info, err := e.cli.ImageInspect(ctx, ref)
	if cerrdefs.IsNotFound(err) {
		if err := pull(ctx, e.cli, ref); err != nil {
			if ctx.Err() != nil {
				return hostRef{}, ctx.Err()
			}
			return hostRef{}, executors.Permanent("provision", fmt.Errorf("inner image %s is not on the engine and pulling it failed: %w", ref, err))
		}
		info, err = e.cli.ImageInspect(ctx, ref)
	}
	if err != nil {
		return hostRef{}, executors.Transient("provision", fmt.Errorf("inspecting inner image %s: %w", ref, err))
	}
	var l map[string]string
	if info.Config != nil {
		l = info.Config.Labels
	}
	return hostRef{Image: ref, Shape: shapeOf(l)}, nil
}

// pull fetches an image and returns the pull's own error, if any.
func pull(ctx context.Context, cli *client.Client, ref string) error {
	rc, err := cli.ImagePull(ctx, ref, image.PullOptions{})
	if err != nil {
		return err
	}
	defer rc.Close()
	return jsonStreamError(rc)
}

// jsonStreamError reads a build or pull progress stream to its end and
// returns the error it reports.
func jsonStreamError(r io.Reader) error {
	dec := json.NewDecoder(r)
	for {
		var msg struct {
			Error string `json:"error"`
		}
		if err := dec.Decode(&msg); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("reading the engine's progress: %w", err)
		}
		if msg.Error != "" {
			return errors.New(strings.TrimSpace(msg.Error))
		}
	}
}

// baseImage is paas-runner's own host image: FROM scratch, the static
// paas-runner binary (also as /usr/bin/gitlab-runner) and a CA bundle.
type baseImage struct {
	cli                      *client.Client
	log                      *zap.Logger
	version, binPath, caPath string
	mu                       sync.Mutex
	ready                    bool
	tag                      string
}

func newBaseImage(cli *client.Client, version, binPath, caPath string, log *zap.Logger) *baseImage {
	if version == "" {
		version = "dev"
	}
	if caPath == "" {
		caPath = "/etc/ssl/certs/ca-certificates.crt"
	}
	return &baseImage{cli: cli, log: log, version: version, binPath: binPath, caPath: caPath}
}

// BuildBaseImage builds the default host base image on the engine at host
// from binary (default: the running executable) unless it exists, and
// returns its tag.
func BuildBaseImage(ctx context.Context, host, version, binary string, log *zap.Logger) (string, error) {
	cli, _, err := connect(host, nil)
	if err != nil {
		return "", err
	}
	defer cli.Close()
	if err := ping(ctx, cli); err != nil {
		return "", err
	}
	if log == nil {
		log = zap.NewNop()
	}
	b := newBaseImage(cli, version, binary, "", log)
	return b.Tag(), b.ensure(ctx)
}

// BaseImageTag is the tag of the base image made from binary (default:
// the running executable) for version.
func BaseImageTag(version, binary string) string {
	return newBaseImage(nil, version, binary, "", zap.NewNop()).Tag()
}

// Tag names the base image after the version and the binary's hash: a
// development build never reuses an image holding another binary.
func (b *baseImage) Tag() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.tagLocked()
}

func (b *baseImage) tagLocked() string {
	if b.tag != "" {
		return b.tag
	}
	tag := "paas-runner-host:" + nameSafe.Replace(b.version)
	if sum, err := b.binaryHash(); err == nil {
		tag += "-" + hex.EncodeToString(sum[:6])
	}
	b.tag = tag
	return tag
}

// binaryPath is the static paas-runner binary the base image holds.
func (b *baseImage) binaryPath() (string, error) {
	if b.binPath != "" {
		return b.binPath, nil
	}
	bin, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("finding paas-runner's own binary: %w", err)
	}
	return bin, nil
}

// binaryHash hashes the binary without holding it in memory.
func (b *baseImage) binaryHash() ([]byte, error) {
	bin, err := b.binaryPath()
	if err != nil {
		return nil, err
	}
	f, err := os.Open(bin)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// forget makes the next ensure look at the engine again (the image was
// removed behind the daemon's back).
func (b *baseImage) forget() {
	b.mu.Lock()
	b.ready = false
	b.mu.Unlock()
}

// baseImports serialises the making of one base image tag across the
// executors of a daemon (one per local-docker runner, each with its own
// baseImage): two imports of a tag at once leave the first image on the
// engine, untagged, for good.
var baseImports sync.Map // tag → *sync.Mutex

// ensure builds the base image unless it exists.
func (b *baseImage) ensure(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ready {
		return nil
	}
	tag := b.tagLocked()
	m, _ := baseImports.LoadOrStore(tag, new(sync.Mutex))
	m.(*sync.Mutex).Lock()
	defer m.(*sync.Mutex).Unlock()
	if _, err := b.cli.ImageInspect(ctx, tag); err == nil {
		b.ready = true
		return nil
	} else if !cerrdefs.IsNotFound(err) {
		return executors.Transient("provision", fmt.Errorf("inspecting base image %s: %w", tag, err))
	}
	bin, err := b.binaryPath()
	if err != nil {
		return executors.Permanent("provision", err)
	}
	binFile, err := os.Open(bin)
	if err != nil {
		return executors.Permanent("provision", fmt.Errorf("reading %s for the base image: %w", bin, err))
	}
	defer binFile.Close()
	st, err := binFile.Stat()
	if err != nil {
		return executors.Permanent("provision", fmt.Errorf("reading %s for the base image: %w", bin, err))
	}
	if err := checkStatic(binFile); err != nil {
		return executors.Permanent("provision", err)
	}
	caData, err := os.ReadFile(b.caPath)
	if err != nil {
		return executors.Permanent("provision", fmt.Errorf("reading CA bundle for the base image: %w", err))
	}
	// The root file system is streamed: the binary (tens of MB) is never
	// held in the daemon's memory.
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(writeTar(pw,
			tarFile{name: "usr/", mode: 0o755}, tarFile{name: "usr/bin/", mode: 0o755},
			tarFile{name: "usr/bin/paas-runner", mode: 0o755, size: st.Size(), from: io.NewSectionReader(binFile, 0, st.Size())},
			tarFile{name: "usr/bin/gitlab-runner", link: "paas-runner"},
			tarFile{name: "etc/", mode: 0o755}, tarFile{name: "etc/ssl/", mode: 0o755}, tarFile{name: "etc/ssl/certs/", mode: 0o755},
			tarFile{name: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, data: caData},
			tarFile{name: "tmp/", mode: 0o1777},
		))
	}()
	defer pr.Close()
	rc, err := b.cli.ImageImport(ctx, image.ImportSource{Source: pr, SourceName: "-"}, tag, image.ImportOptions{Changes: baseChanges(b.version)})
	if err == nil {
		err = jsonStreamError(rc)
		rc.Close()
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return executors.Permanent("provision", fmt.Errorf("making base image %s: %w", tag, err))
	}
	b.log.Info("made the host base image", zap.String("image", tag))
	b.ready = true
	return nil
}

// baseChanges make the imported root file system (the static paas-runner
// binary, a CA bundle, /tmp) paas-runner's host image. The image is
// imported, not built: it appears whole or not at all (a crash leaves no
// intermediate image or container), and no registry is needed.
// /usr/bin/gitlab-runner links to paas-runner, so that the image also runs
// under Heptapod's entry point (e.g. as Heptapod PAAS Runner's
// heptapod_runner_main_image).
func baseChanges(version string) []string {
	return []string{
		fmt.Sprintf("LABEL %s=%q org.opencontainers.image.version=%q", LabelHostImage, paasShape.Name, version),
		"ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt TMPDIR=/tmp",
		fmt.Sprintf("ENTRYPOINT [%q]", binaryInImage),
	}
}

// checkStatic refuses a binary that cannot run in a FROM-scratch image: a
// dynamically linked one (built with cgo, e.g. by a plain "go run").
func checkStatic(r io.ReaderAt) error {
	f, err := elf.NewFile(r)
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

package jobrunner

import (
	"archive/tar"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"strings"
	"sync"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
	"go.uber.org/zap"
)

// The pipeline guard in job containers: the inner runner's own executable
// (static: paas-runner's hosts run it FROM scratch) is copied into each job
// container before it starts, as /usr/local/bin/gitlab-job-guard (called
// under that name, paas-runner is `paas-runner guard`, a drop-in
// gitlab-job-guard) and /usr/local/bin/paas-runner (a link to it), so that
// a job's script can call either on any job image of the host's platform.
// Only the executable goes: runner.toml and job.json stay on the host, and
// a file the image already has at either path is never replaced.

// GuardDir is where the guard goes in job containers; GuardName and
// GuardAlias are its names there.
const (
	GuardDir   = "/usr/local/bin"
	GuardName  = "gitlab-job-guard"
	GuardAlias = "paas-runner"
)

// NoGuardBinary as Options.GuardBinary ships nothing.
const NoGuardBinary = "-"

// guardShip is what one job decided about shipping the guard: the binary,
// the job image's platform, and the job log line already said.
type guardShip struct {
	once sync.Once
	bin  string // "" when there is none to ship
	why  string // why not (said once in the job log), when bin is ""

	mu       sync.Mutex
	platform map[string]string // image → why it cannot run the guard ("" if it can)
	said     map[string]bool
}

// shipGuard puts the guard into the created (not started) container id of
// image img. It never fails the job: what prevents it is one line in the
// job log, once per job.
func (r *runner) shipGuard(ctx context.Context, id, img string) {
	g := &r.guard
	g.once.Do(func() {
		if !r.callsGuard() {
			return // nothing to ship, nothing to say: bin and why stay ""
		}
		g.bin, g.why = guardBinary(r.o.GuardBinary)
	})
	if g.bin == "" {
		r.guardNote(g.why)
		return
	}
	if why := r.guardPlatform(ctx, img); why != "" {
		r.guardNote(why)
		return
	}
	var missing []string
	for _, name := range []string{GuardName, GuardAlias} {
		p := path.Join(GuardDir, name)
		rc, _, err := r.docker.CopyFromContainer(ctx, id, p)
		switch {
		case err == nil:
			rc.Close()
			r.guardNote(fmt.Sprintf("the job image has its own %s: it is kept", p))
		case cerrdefs.IsNotFound(err):
			missing = append(missing, name)
		case ctx.Err() != nil:
			return // the job is over: nothing to say
		default:
			r.log.Warn("looking for the guard's place in the job container failed", zap.String("path", p), zap.Error(err))
			r.guardNoteOnce("check", fmt.Sprintf("%s not provided: checking %s in the job container: %v", GuardName, p, err))
			return
		}
	}
	if len(missing) == 0 {
		return
	}
	t := guardTar(g.bin, missing)
	err := r.docker.CopyToContainer(ctx, id, "/", t, container.CopyToContainerOptions{})
	t.Close() // ends the writer if the engine did not read it all
	if err != nil && ctx.Err() == nil {
		r.log.Warn("copying the guard into the job container failed", zap.Error(err))
		r.guardNoteOnce("copy", fmt.Sprintf("%s not provided: copying it into the job container: %v", GuardName, err))
	}
}

// guardNote says in the job log, once per job and message, why the guard
// is not (all) there.
func (r *runner) guardNote(msg string) { r.guardNoteOnce(msg, msg) }

// guardNoteOnce says msg unless a note of that key was said in this job.
func (r *runner) guardNoteOnce(key, msg string) {
	if msg == "" {
		return
	}
	g := &r.guard
	g.mu.Lock()
	if g.said == nil {
		g.said = map[string]bool{}
	}
	done := g.said[key]
	g.said[key] = true
	g.mu.Unlock()
	if !done {
		r.printf("%spaas-runner: %s%s\n", ansiYellow, msg, ansiReset)
	}
}

// guardPlatform is why img cannot run this executable ("" when it can):
// an image of another OS or architecture than the binary's (the engine
// says, for the job's platform when it sets one).
func (r *runner) guardPlatform(ctx context.Context, img string) string {
	g := &r.guard
	g.mu.Lock()
	why, known := g.platform[img]
	g.mu.Unlock()
	if known {
		return why
	}
	var opts []client.ImageInspectOption
	if p := r.jobPlatform(); p != nil {
		opts = append(opts, client.ImageInspectWithPlatform(p))
	}
	info, err := r.docker.ImageInspect(ctx, img, opts...)
	if err != nil && len(opts) > 0 && !cerrdefs.IsNotFound(err) {
		info, err = r.docker.ImageInspect(ctx, img) // an engine older than API 1.49
	}
	switch {
	case err != nil && ctx.Err() != nil:
		return "" // the job is over: the container is gone next
	case err != nil:
		why = fmt.Sprintf("%s not provided: inspecting the job image: %v", GuardName, err)
	case (info.Os != "" && info.Os != runtime.GOOS) || (info.Architecture != "" && info.Architecture != runtime.GOARCH):
		why = fmt.Sprintf("%s not provided: the job image is %s/%s, paas-runner is %s/%s", GuardName, info.Os, info.Architecture, runtime.GOOS, runtime.GOARCH)
	}
	g.mu.Lock()
	if g.platform == nil {
		g.platform = map[string]string{}
	}
	g.platform[img] = why
	g.mu.Unlock()
	return why
}

// VarShipGuard set to true ships the guard into a job whose scripts do not
// name it (a script file of the repository calling it, for example).
const VarShipGuard = "PAAS_SHIP_GUARD"

// callsGuard tells whether the job may call the guard: one of its scripts
// (steps, hooks) names gitlab-job-guard or paas-runner, or it sets
// PAAS_SHIP_GUARD. Copying the 20 MB executable into every job container
// costs seconds when many start at once on one engine (bench/load), so
// jobs that never call it do not pay for it.
func (r *runner) callsGuard() bool {
	switch strings.ToLower(r.expanded.Get(VarShipGuard)) {
	case "true", "1", "yes":
		return true
	case "false", "0", "no":
		return false
	}
	names := func(lines []string) bool {
		for _, l := range lines {
			if strings.Contains(l, GuardName) || strings.Contains(l, GuardAlias) {
				return true
			}
		}
		return false
	}
	for _, st := range r.p.Steps {
		if names(st.Script) {
			return true
		}
	}
	for _, h := range r.p.Hooks {
		if names(h.Script) {
			return true
		}
	}
	return false
}

// guardBinary is the executable to ship (spec, else this process's own),
// or "" and why not: only a static ELF executable runs in any job image.
func guardBinary(spec string) (bin, why string) {
	if spec == NoGuardBinary {
		return "", "" // said nowhere: asked for
	}
	bin = spec
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return "", fmt.Sprintf("%s not provided: finding paas-runner's executable: %v", GuardName, err)
		}
		bin = exe
	}
	if err := checkStaticELF(bin); err != nil {
		return "", fmt.Sprintf("%s not provided: %v", GuardName, err)
	}
	return bin, ""
}

// checkStaticELF refuses what cannot run in an image without a dynamic
// loader: a non-ELF file, or one that asks for an interpreter (built with
// cgo).
func checkStaticELF(bin string) error {
	f, err := elf.Open(bin)
	if err != nil {
		return fmt.Errorf("%s is not an ELF executable: %w", bin, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked (build it with CGO_ENABLED=0, as make build does)", bin)
		}
	}
	return nil
}

// guardTar streams a tar, to extract at /, of bin as GuardDir/<first of
// names> (mode 0755, root's) and links to it named by the others; the
// binary is never held in memory. No directory entry: the engine makes a
// missing GuardDir (0755, as it makes missing parents), and an existing one
// keeps its mode and owner.
func guardTar(bin string, names []string) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(writeGuardTar(pw, bin, names))
	}()
	return pr
}

func writeGuardTar(w io.Writer, bin string, names []string) error {
	f, err := os.Open(bin)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return errors.New(bin + " is not a regular file")
	}
	tw := tar.NewWriter(w)
	dir := strings.TrimPrefix(GuardDir, "/") + "/"
	if err := tw.WriteHeader(&tar.Header{Name: dir + names[0], Typeflag: tar.TypeReg, Mode: 0o755, Size: st.Size(), ModTime: st.ModTime()}); err != nil {
		return err
	}
	if _, err := io.CopyN(tw, f, st.Size()); err != nil {
		return fmt.Errorf("reading %s: %w", bin, err)
	}
	for _, n := range names[1:] {
		if err := tw.WriteHeader(&tar.Header{Name: dir + n, Typeflag: tar.TypeSymlink, Linkname: names[0], Mode: 0o777, ModTime: st.ModTime()}); err != nil {
			return err
		}
	}
	return tw.Close()
}

package jobrunner

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
	"gitlab.com/paas-runner/paas-runner/job"
)

// The guard (the inner runner's own static executable) in job containers:
// guardbin.go.

// guardFake is the fake engine with an image file system as far as the
// guard is concerned: which paths the image has, its platform, and what
// was copied into GuardDir (decoded, per container, with whether the
// container had started).
type guardFake struct {
	*fakeDocker
	os, arch string
	has      map[string]bool // absolute paths in the image
	copyErr  error           // what copying the guard answers

	gmu    sync.Mutex
	copies []guardCopy
}

type guardCopy struct {
	container string
	started   bool
	entries   []guardEntry
}

type guardEntry struct {
	name string
	typ  byte
	mode int64
	uid  int
	link string
	size int64
	sum  [32]byte
}

func newGuardFake(t *testing.T) *guardFake {
	return &guardFake{fakeDocker: newFakeDocker(t.TempDir(), jobImage), os: "linux", arch: runtime.GOARCH, has: map[string]bool{}}
}

func (g *guardFake) ImageInspect(ctx context.Context, ref string, opts ...client.ImageInspectOption) (image.InspectResponse, error) {
	info, err := g.fakeDocker.ImageInspect(ctx, ref, opts...)
	if err == nil {
		info.Os, info.Architecture = g.os, g.arch
	}
	return info, err
}

func (g *guardFake) CopyFromContainer(ctx context.Context, id, src string) (io.ReadCloser, container.PathStat, error) {
	if g.has[src] {
		return io.NopCloser(bytes.NewReader(nil)), container.PathStat{Name: path.Base(src), Mode: 0o755}, nil
	}
	return g.fakeDocker.CopyFromContainer(ctx, id, src)
}

func (g *guardFake) CopyToContainer(ctx context.Context, id, dst string, content io.Reader, o container.CopyToContainerOptions) error {
	all, err := io.ReadAll(content)
	if err != nil {
		return err
	}
	first, err := tar.NewReader(bytes.NewReader(all)).Next()
	if dst != "/" || err != nil || !strings.HasPrefix(first.Name, strings.TrimPrefix(GuardDir, "/")+"/") {
		return g.fakeDocker.CopyToContainer(ctx, id, dst, bytes.NewReader(all), o)
	}
	if g.copyErr != nil {
		return g.copyErr
	}
	c, err := g.get(id)
	if err != nil {
		return err
	}
	g.mu.Lock()
	started := c.started
	g.mu.Unlock()
	cp := guardCopy{container: id, started: started}
	tr := tar.NewReader(bytes.NewReader(all))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		e := guardEntry{name: h.Name, typ: h.Typeflag, mode: h.Mode, uid: h.Uid, link: h.Linkname, size: h.Size}
		hs := sha256.New()
		if _, err := io.Copy(hs, tr); err != nil {
			return err
		}
		copy(e.sum[:], hs.Sum(nil))
		cp.entries = append(cp.entries, e)
	}
	g.gmu.Lock()
	g.copies = append(g.copies, cp)
	g.gmu.Unlock()
	return nil
}

func (g *guardFake) guardCopies() []guardCopy {
	g.gmu.Lock()
	defer g.gmu.Unlock()
	return append([]guardCopy(nil), g.copies...)
}

// staticBinary is a static ELF executable of this machine: Debian's
// busybox-static (the test job image's too).
func staticBinary(t *testing.T) (string, [32]byte, int64) {
	t.Helper()
	const bin = "/bin/busybox"
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Skipf("busybox-static is needed: %v", err)
	}
	if err := checkStaticELF(bin); err != nil {
		t.Fatalf("%s: %v", bin, err)
	}
	return bin, sha256.Sum256(data), int64(len(data))
}

func runGuardFake(t *testing.T, g *guardFake, bin string) (string, []guardCopy) {
	t.Helper()
	j := runJobWith(t, jobSpec{script: []string{"echo script"}, after: []string{"echo after"},
		vars:    []map[string]any{{"key": VarShipGuard, "value": "true", "public": true}},
		options: func(o *Options) { o.GuardBinary = bin }}, g, g.root)
	if j.Status != "success" {
		t.Fatalf("job %s:\n%s", j.Status, j.Trace)
	}
	if n := len(g.created()); n != 2 {
		t.Fatalf("%d containers, want the script's and after_script's", n)
	}
	return string(j.Trace), g.guardCopies()
}

// Each job container gets the binary as GuardDir/gitlab-job-guard, mode
// 0755, root's, before it starts, with paas-runner linked to it; nothing
// else travels with it.
func TestGuardCopiedIntoEachJobContainer(t *testing.T) {
	bin, sum, size := staticBinary(t)
	g := newGuardFake(t)
	tr, copies := runGuardFake(t, g, bin)
	if len(copies) != 2 {
		t.Fatalf("%d copies of the guard, want one per container", len(copies))
	}
	for i, cp := range copies {
		if cp.container != g.created()[i].id || cp.started {
			t.Errorf("copy %d into %s (started %v)", i, cp.container, cp.started)
		}
		want := []guardEntry{
			{name: "usr/local/bin/" + GuardName, typ: tar.TypeReg, mode: 0o755, size: size, sum: sum},
			{name: "usr/local/bin/" + GuardAlias, typ: tar.TypeSymlink, mode: 0o777, link: GuardName, sum: sha256.Sum256(nil)},
		}
		if fmt.Sprint(cp.entries) != fmt.Sprint(want) {
			t.Errorf("copy %d:\n got %+v\nwant %+v", i, cp.entries, want)
		}
	}
	if strings.Contains(tr, GuardName) {
		t.Errorf("the log mentions the guard:\n%s", tr)
	}
}

// A file the image has at either path is kept: the other name gets the
// binary; with both, nothing is copied. The log says so once.
func TestGuardNotCopiedOverImageFiles(t *testing.T) {
	bin, sum, size := staticBinary(t)
	g := newGuardFake(t)
	g.has[GuardDir+"/"+GuardName] = true
	tr, copies := runGuardFake(t, g, bin)
	if len(copies) != 2 {
		t.Fatalf("%d copies", len(copies))
	}
	for _, cp := range copies {
		want := []guardEntry{{name: "usr/local/bin/" + GuardAlias, typ: tar.TypeReg, mode: 0o755, size: size, sum: sum}}
		if fmt.Sprint(cp.entries) != fmt.Sprint(want) {
			t.Errorf("got %+v\nwant %+v", cp.entries, want)
		}
	}
	note := "paas-runner: the job image has its own /usr/local/bin/gitlab-job-guard: it is kept"
	if strings.Count(tr, note) != 1 {
		t.Errorf("want %q once:\n%s", note, tr)
	}

	g = newGuardFake(t)
	g.has[GuardDir+"/"+GuardName], g.has[GuardDir+"/"+GuardAlias] = true, true
	tr, copies = runGuardFake(t, g, bin)
	if len(copies) != 0 {
		t.Fatalf("copied over the image's files: %+v", copies)
	}
	if strings.Count(tr, "/usr/local/bin/paas-runner: it is kept") != 1 {
		t.Errorf("log:\n%s", tr)
	}
}

// A job image of another architecture, or a dynamically linked binary:
// nothing copied, one line in the log; disabled: nothing said.
func TestGuardSkipped(t *testing.T) {
	bin, _, _ := staticBinary(t)
	other := "arm64"
	if runtime.GOARCH == other {
		other = "amd64"
	}
	g := newGuardFake(t)
	g.arch = other
	tr, copies := runGuardFake(t, g, bin)
	line := fmt.Sprintf("paas-runner: gitlab-job-guard not provided: the job image is linux/%s, paas-runner is %s/%s", other, runtime.GOOS, runtime.GOARCH)
	if len(copies) != 0 || strings.Count(tr, line) != 1 {
		t.Errorf("%d copies; want %q once:\n%s", len(copies), line, tr)
	}

	dyn := dynamicBinary(t)
	g = newGuardFake(t)
	tr, copies = runGuardFake(t, g, dyn)
	line = fmt.Sprintf("paas-runner: gitlab-job-guard not provided: %s is dynamically linked", dyn)
	if len(copies) != 0 || strings.Count(tr, line) != 1 {
		t.Errorf("%d copies; want %q once:\n%s", len(copies), line, tr)
	}

	g = newGuardFake(t)
	tr, copies = runGuardFake(t, g, NoGuardBinary)
	if len(copies) != 0 || strings.Contains(tr, GuardName) {
		t.Errorf("disabled: %d copies\n%s", len(copies), tr)
	}
}

// The engine refusing the copy (e.g. a read-only file system) does not
// fail the job: one line in its log, whatever the number of containers.
func TestGuardCopyRefusedIsNotFatal(t *testing.T) {
	bin, _, _ := staticBinary(t)
	g := newGuardFake(t)
	g.copyErr = errors.New("container c1 rootfs is marked read-only")
	tr, _ := runGuardFake(t, g, bin)
	line := "paas-runner: gitlab-job-guard not provided: copying it into the job container: container c1 rootfs is marked read-only"
	if strings.Count(tr, "gitlab-job-guard not provided") != 1 || !strings.Contains(tr, line) {
		t.Errorf("want %q once:\n%s", line, tr)
	}
}

// dynamicBinary is a dynamically linked executable of this machine.
func dynamicBinary(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/env", "/bin/ls", "/usr/bin/ls"} {
		f, err := elf.Open(p)
		if err != nil {
			continue
		}
		for _, pr := range f.Progs {
			if pr.Type == elf.PT_INTERP {
				f.Close()
				return p
			}
		}
		f.Close()
	}
	t.Skip("no dynamically linked executable found")
	return ""
}

// On the real engine: the file is there with mode 0755 and runs from the
// job's PATH; an image's own gitlab-job-guard is neither replaced nor
// shadowed.
func TestGuardInRealContainers(t *testing.T) {
	if cli == nil {
		t.Skip("no Docker engine")
	}
	bin, _, _ := staticBinary(t)
	j := runJob(t, jobSpec{
		script: []string{"stat -c '%a %u %F' /usr/local/bin/gitlab-job-guard", "readlink /usr/local/bin/paas-runner",
			"cmp /usr/local/bin/gitlab-job-guard /bin/busybox && echo same binary", "command -v gitlab-job-guard"},
		options: func(o *Options) { o.GuardBinary = bin }})
	tr := string(j.Trace)
	for _, want := range []string{"\n755 0 regular file\n", "\ngitlab-job-guard\n", "\nsame binary\n", "\n/usr/local/bin/gitlab-job-guard\n"} {
		if j.Status != "success" || !strings.Contains(tr, want) {
			t.Errorf("%s; log lacks %q:\n%s", j.Status, want, tr)
		}
	}

	own := fmt.Sprintf("paas-runner-test-ownguard:p%d", os.Getpid())
	bb, _ := os.ReadFile(bin)
	if err := localdockertest.BuildImage(context.Background(), cli, own, map[string][]byte{
		"Dockerfile": []byte("FROM scratch\nCOPY busybox /bin/sh\nCOPY busybox /bin/busybox\nCOPY guard /usr/local/bin/gitlab-job-guard\nLABEL paas-runner.test=true\n"),
		"busybox":    bb,
		"guard":      []byte("#!/bin/sh\necho the image own guard\n"),
	}); err != nil {
		t.Fatal(err)
	}
	defer localdockertest.RemoveImage(cli, own)
	j = runJob(t, jobSpec{
		script: []string{"gitlab-job-guard", "cmp /usr/local/bin/paas-runner /bin/busybox && echo alias is the binary"},
		setup: func(_ *coordinatortest.Server, q *coordinatortest.Job) {
			q.Payload["image"] = map[string]any{"name": own, "pull_policy": []string{"if-not-present"}}
		},
		options: func(o *Options) { o.GuardBinary = bin }})
	tr = string(j.Trace)
	for _, want := range []string{"\nthe image own guard\n", "\nalias is the binary\n", "the job image has its own /usr/local/bin/gitlab-job-guard: it is kept"} {
		if j.Status != "success" || !strings.Contains(tr, want) {
			t.Errorf("%s; log lacks %q:\n%s", j.Status, want, tr)
		}
	}
}

// BenchmarkGuardShip: what shipping the guard adds to each job container's
// start on the real engine: the two path checks and the copy of a static
// paas-runner (built here, unstripped) into a created busybox container.
func BenchmarkGuardShip(b *testing.B) {
	if cli == nil {
		b.Skip("no Docker engine")
	}
	bin := filepath.Join(b.TempDir(), "paas-runner")
	if err := localdockertest.BuildStatic("./cmd/paas-runner", bin); err != nil {
		b.Fatal(err)
	}
	st, _ := os.Stat(bin)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		c, err := cli.ContainerCreate(ctx, &container.Config{Image: jobImage, Cmd: []string{"true"}, Labels: map[string]string{"paas-runner.test": "guard-bench"}}, nil, nil, nil,
			fmt.Sprintf("paas-guard-bench-%d-%d", os.Getpid(), i))
		if err != nil {
			b.Fatal(err)
		}
		// no trace: a job log line (the guard not shipped) would panic
		r := &runner{o: Options{GuardBinary: bin}, p: &job.Payload{}, docker: cli, log: zap.NewNop(),
			expanded: job.Variables{{Key: VarShipGuard, Value: "true"}}}
		b.StartTimer()
		r.shipGuard(ctx, c.ID, jobImage)
		b.StopTimer()
		rc, _, serr := cli.CopyFromContainer(ctx, c.ID, GuardDir+"/"+GuardName)
		if serr == nil {
			rc.Close()
		}
		cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
		if serr != nil {
			b.Fatalf("not shipped: %v", serr)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(st.Size())/1e6, "MB")
}

// A job whose scripts never name the guard, and that does not set
// PAAS_SHIP_GUARD, gets no copy (it costs seconds when many containers
// start at once); PAAS_SHIP_GUARD=false refuses it even to one that does.
func TestGuardShippedOnlyToJobsThatCallIt(t *testing.T) {
	bin, _, _ := staticBinary(t)
	for _, c := range []struct {
		name   string
		script string
		vars   []map[string]any
		want   bool
	}{
		{"plain", "echo script", nil, false},
		{"calls it", "gitlab-job-guard -x || exit 1", nil, true},
		{"calls paas-runner guard", "paas-runner guard -x", nil, true},
		{"asked", "./deploy.sh", []map[string]any{{"key": VarShipGuard, "value": "true", "public": true}}, true},
		{"refused", "gitlab-job-guard", []map[string]any{{"key": VarShipGuard, "value": "false", "public": true}}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := newGuardFake(t)
			j := runJobWith(t, jobSpec{script: []string{c.script}, vars: c.vars,
				options: func(o *Options) { o.GuardBinary = bin }}, g, g.root)
			if got := len(g.guardCopies()) > 0; got != c.want {
				t.Fatalf("shipped %v, want %v:\n%s", got, c.want, j.Trace)
			}
			if strings.Contains(string(j.Trace), "not provided") {
				t.Fatalf("a job log line about the guard:\n%s", j.Trace)
			}
		})
	}
}

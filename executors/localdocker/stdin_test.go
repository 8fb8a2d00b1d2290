package localdocker

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A host of the default image gets its files on its standard input as it
// starts. A crash after the start and before they are sent leaves a host
// that read nothing and exited ExitNoFiles: the next Launch makes it
// again, with the files, and starts it once.
func TestLaunchInterruptedBeforeTheFilesAreSent(t *testing.T) {
	needDocker(t)
	hj := newHostJob(t, nil, busyboxImage(t), []string{"echo made again"}, nil)
	hj.provision(t)
	e, h, j, ctx := hj.e, hj.h, hj.job, ctxT(t)
	crash := errors.New("crash")
	e.testStep = func(s string) error {
		if s == "started" {
			return crash
		}
		return nil
	}
	if _, err := e.Launch(ctx, h, j); !errors.Is(err, crash) {
		t.Fatalf("launch: %v", err)
	}
	e.testStep = nil
	hd, _ := decodeHandle(h)
	waitExited(t, e, h)
	first, err := e.cli.ContainerInspect(ctx, hd.Container)
	if err != nil {
		t.Fatal(err)
	}
	if first.State.ExitCode != ExitNoFiles || !filesFromStdin(first.Config.Entrypoint) {
		t.Fatalf("host after the crash: exit %d, entry point %v", first.State.ExitCode, first.Config.Entrypoint)
	}
	st, err := e.Inspect(ctx, h)
	if err != nil || !strings.Contains(st.Detail, "did not arrive on standard input") {
		t.Fatalf("what became of it: %q %v", st.Detail, err)
	}
	// restart: Launch makes it again and starts it, once
	if _, err := e.Launch(ctx, h, j); err != nil {
		t.Fatal(err)
	}
	got := hj.run(t) // the second Launch of the restart: no new start
	if got.Status != "success" || !strings.Contains(string(got.Trace), "made again") {
		t.Fatalf("job %s:\n%s", got.Status, got.Trace)
	}
	again, err := e.cli.ContainerInspect(ctx, hd.Container)
	if err != nil || again.ID == first.ID || !started(again) || again.RestartCount != 0 || again.State.ExitCode == ExitNoFiles {
		t.Fatalf("made again: %v (same container %v, started %v, exit %d)", err, again.ID == first.ID, started(again), again.State.ExitCode)
	}
	r, _, err := e.cli.CopyFromContainer(ctx, hd.Container, confDir+"/job.json")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	tr := tar.NewReader(r)
	hdr, err := tr.Next()
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(tr)
	if hdr.FileInfo().Mode().Perm() != 0o600 || !strings.Contains(string(data), `"token":"`+hj.q.Token+`"`) {
		t.Fatalf("job.json %v: %s", hdr.FileInfo().Mode(), data)
	}
}

// The host's side: only the files its entry point names, both of them,
// from a tar that is whole (filesEnd last).
func TestReceiveFiles(t *testing.T) {
	dir := t.TempDir()
	toml, job := filepath.Join(dir, "etc", "runner.toml"), filepath.Join(dir, "etc", "job.json")
	files := HostFiles{JobJSON: []byte(`{"id":1}`), RunnerTOML: []byte("[[runners]]\n"), CA: []byte("CA")}
	good, err := files.stdinTar(toml, job)
	if err != nil {
		t.Fatal(err)
	}
	whole := good.Bytes()
	if err := ReceiveFiles(strings.NewReader(string(whole)), toml, job); err != nil {
		t.Fatal(err)
	}
	for p, mode := range map[string]os.FileMode{toml: 0o600, job: 0o600, CAPath(toml): 0o644} {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v %v, want mode %v", p, fi.Mode(), err, mode)
		}
	}
	for name, in := range map[string]string{
		"nothing":   "",
		"truncated": string(whole[:len(whole)/2]),
		"only one":  tarOf(t, map[string]string{job: "{}", filesEnd: ""}),
		"elsewhere": tarOf(t, map[string]string{toml: "", job: "{}", filepath.Join(dir, "etc", "passwd"): "x", filesEnd: ""}),
		"no end":    tarOf(t, map[string]string{toml: "", job: "{}"}),
	} {
		if err := ReceiveFiles(strings.NewReader(in), toml, job); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func tarOf(t *testing.T, files map[string]string) string {
	var b strings.Builder
	tw := tar.NewWriter(&b)
	for name, data := range files {
		if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(name, "/"), Mode: 0o600, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(data))
	}
	tw.Close()
	return b.String()
}

package localdocker

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/internal/testca"
)

// The runner's tls-ca-file reaches the host as ca.pem next to runner.toml,
// which names it; no token goes with it.
func TestHostFilesCarryTheCA(t *testing.T) {
	ca, err := testca.New()
	if err != nil {
		t.Fatal(err)
	}
	caFile, err := ca.WriteFile(t.TempDir(), "gitlab-ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	pem, err := ReadCA(caFile)
	if err != nil || !bytes.Equal(pem, ca.PEM) {
		t.Fatalf("ReadCA: %v", err)
	}
	inner := map[string]any{"token": "glrt-runner-secret", "tls-ca-file": caFile, "cc_token": "cc-secret"}
	e := &Executor{opts: Options{RunnerID: "tabc1234", SystemID: "r_0123456789ab", RunnerURL: "https://gitlab.example", Inner: inner, TLSCAFile: caFile}, ca: pem}
	p := json.RawMessage(`{"id":7,"token":"glcbt-job-secret","image":{"name":"debian:12"}}`)
	for _, s := range []shape{paasShape, heptapodShape} {
		tomlPath, jobPath, err := filePaths(s.Entrypoint)
		if err != nil {
			t.Fatal(err)
		}
		f, err := e.FilesFor(executors.Job{ID: 7, Payload: p}, tomlPath)
		if err != nil {
			t.Fatal(err)
		}
		buf, err := f.tar(tomlPath, jobPath)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string][]byte{}
		tr := tar.NewReader(buf)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			got["/"+h.Name], _ = io.ReadAll(tr)
		}
		caPath := filepath.Dir(tomlPath) + "/ca.pem"
		if !bytes.Equal(got[caPath], ca.PEM) || len(got) != 3 {
			t.Fatalf("%s: tar holds %d files, ca.pem %q", s.Name, len(got), got[caPath])
		}
		if want := `tls-ca-file = "` + caPath + `"`; !strings.Contains(string(got[tomlPath]), want) {
			t.Errorf("%s: runner.toml lacks %s:\n%s", s.Name, want, got[tomlPath])
		}
		for _, name := range []string{tomlPath, caPath} {
			for _, secret := range []string{"glrt-runner-secret", "glcbt-job-secret", "cc-secret", caFile} {
				if bytes.Contains(got[name], []byte(secret)) {
					t.Errorf("%s: %s holds %q", s.Name, name, secret)
				}
			}
		}
	}

	// without tls-ca-file: two files, no tls-ca-file key
	e.ca = nil
	f, err := e.Files(executors.Job{ID: 7, Payload: p})
	if err != nil || f.CA != nil || bytes.Contains(f.RunnerTOML, []byte("tls-ca-file")) {
		t.Fatalf("without a CA: %v %q\n%s", err, f.CA, f.RunnerTOML)
	}
}

func TestReadCARefusesNonPEM(t *testing.T) {
	p := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(p, []byte("not a certificate"), 0o644)
	if _, err := ReadCA(p); err == nil || !strings.Contains(err.Error(), "tls-ca-file") {
		t.Fatalf("ReadCA: %v", err)
	}
	if _, err := New(Options{RunnerID: "tabc1234", RunnerURL: "https://gitlab.example", SystemID: "r_0123456789ab", TLSCAFile: p}); err == nil || !strings.Contains(err.Error(), "tls-ca-file") {
		t.Fatalf("New: %v", err)
	}
	if b, err := ReadCA(""); b != nil || err != nil {
		t.Fatal(b, err)
	}
}

func TestDockerfileCopiesTheCA(t *testing.T) {
	for _, inner := range []string{"", "registry.example/heptapod-runner:1"} {
		d := string(Dockerfile("paas-runner-base:1", inner, true))
		dir := confDir
		if inner != "" {
			dir = heptapodConfDir
		}
		if !strings.Contains(d, "COPY ca.pem "+dir+"/ca.pem\n") {
			t.Errorf("Dockerfile lacks the CA:\n%s", d)
		}
		if d := string(Dockerfile("paas-runner-base:1", inner, false)); strings.Contains(d, "ca.pem") {
			t.Errorf("Dockerfile without a CA copies one:\n%s", d)
		}
	}
}

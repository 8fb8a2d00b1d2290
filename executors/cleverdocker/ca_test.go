package cleverdocker

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gitlab.com/paas-runner/paas-runner/internal/testca"
)

// The runner's tls-ca-file is pushed with the job as ca.pem, copied next
// to runner.toml (which names it) by the Dockerfile; no token goes with it.
func TestPushedTreeCarriesTheCA(t *testing.T) {
	ca, err := testca.New()
	if err != nil {
		t.Fatal(err)
	}
	caFile, err := ca.WriteFile(t.TempDir(), "gitlab-ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, func(o *Options) { o.TLSCAFile = caFile })
	j := testJob(778)
	_, h := provision(t, f, j)
	if _, err := f.e.Launch(ctx(t), h, j); err != nil {
		t.Fatalf("launch: %v", err)
	}
	apps := f.s.Apps(orga)
	if len(apps) != 1 {
		t.Fatalf("%d apps", len(apps))
	}
	files, _, _, err := f.s.Pushed(apps[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 4 || !bytes.Equal(files["ca.pem"], ca.PEM) {
		t.Fatalf("pushed %d files, ca.pem %q", len(files), files["ca.pem"])
	}
	if !strings.Contains(string(files["Dockerfile"]), "COPY ca.pem /etc/heptapod-runner/ca.pem\n") {
		t.Errorf("Dockerfile:\n%s", files["Dockerfile"])
	}
	if !strings.Contains(string(files["runner.toml"]), `tls-ca-file = "/etc/heptapod-runner/ca.pem"`) {
		t.Errorf("runner.toml:\n%s", files["runner.toml"])
	}
	for _, name := range []string{"ca.pem", "runner.toml", "Dockerfile"} {
		for _, secret := range []string{ccToken, j.Token, caFile} {
			if bytes.Contains(files[name], []byte(secret)) {
				t.Errorf("%s holds %q", name, secret)
			}
		}
	}
}

func TestNewRefusesABadCAFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(p, []byte("not a certificate"), 0o644)
	_, err := New(Options{APIURL: "https://api.clever-cloud.com/v2", OrgaID: orga, Token: ccToken, InnerImage: "x", RunnerID: runnerID,
		RunnerURL: "https://gitlab.example.com", SystemID: "r_0123456789ab", TLSCAFile: p})
	if err == nil || !strings.Contains(err.Error(), "tls-ca-file") {
		t.Fatalf("New: %v", err)
	}
}

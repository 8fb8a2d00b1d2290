package cleverdocker

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/cleverdocker/cleverdockertest"
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

// Multi-tenant: the group attributes are read from a GitLab behind the
// private CA when tls-ca-file is set (and fail without it).
func TestMultiTenantGitLabBehindPrivateCA(t *testing.T) {
	ca, err := testca.New()
	if err != nil {
		t.Fatal(err)
	}
	caFile, err := ca.WriteFile(t.TempDir(), "gitlab-ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	up := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(up.Close)
	gl := cleverdockertest.NewGitLabTLS(t, up.URL, adminTok, srv)
	gl.SetGroup("acme", map[string]string{"cc_orga_id": orgA, "cc_orga_token": tokA})
	for _, withCA := range []bool{true, false} {
		f := newFixture(t, func(o *Options) {
			o.MultiTenant, o.OrgaID, o.Token = true, "", ""
			o.GitLabURL, o.AttributesToken = gl.URL, adminTok
			o.RetryFor = 50 * time.Millisecond
			if withCA {
				o.TLSCAFile = caFile
			}
		})
		f.s.AddOrg(orgA, tokA)
		_, err := f.e.Plan(ctx(t), nsJob(1, "acme"))
		if withCA {
			if err != nil {
				t.Fatalf("with the CA: %v", err)
			}
			if _, err := f.e.Provision(ctx(t), mustPlan(t, f, nsJob(2, "acme")), nsJob(2, "acme")); err != nil {
				t.Fatalf("provision with the CA: %v", err)
			}
			if len(f.s.Apps(orgA)) != 1 {
				t.Fatalf("%d apps in the tenant's organisation", len(f.s.Apps(orgA)))
			}
			continue
		}
		if err == nil {
			_, err = f.e.Provision(ctx(t), mustPlan(t, f, nsJob(3, "acme")), nsJob(3, "acme"))
		}
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("without the CA: %v, want a certificate error", err)
		}
	}
}

func mustPlan(t *testing.T, f *fixture, j executors.Job) executors.Handle {
	t.Helper()
	h, err := f.e.Plan(ctx(t), j)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

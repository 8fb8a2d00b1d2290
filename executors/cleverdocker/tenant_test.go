package cleverdocker

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/cleverdocker/cleverdockertest"
)

const (
	orgA, tokA = "orga_aaaa", "tenant-a-secret-token"
	orgB, tokB = "orga_bbbb", "tenant-b-secret-token"
	adminTok   = "gitlab-admin-attributes-token"
)

type mtFixture struct {
	*fixture
	gl *cleverdockertest.GitLab
}

func newMT(t testing.TB) *mtFixture {
	t.Helper()
	up := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(up.Close)
	var gl *cleverdockertest.GitLab
	f := newFixture(t, func(o *Options) {
		gl = cleverdockertest.NewGitLab(t, up.URL, adminTok)
		o.MultiTenant, o.OrgaID, o.Token = true, "", ""
		o.GitLabURL, o.AttributesToken = gl.URL, adminTok
	})
	f.s.AddOrg(orgA, tokA)
	f.s.AddOrg(orgB, tokB)
	gl.SetGroup("acme", map[string]string{"cc_orga_id": orgA, "cc_orga_token": tokA, "other": "x"})
	gl.SetGroup("beta", map[string]string{"cc_orga_id": orgB, "cc_orga_token": tokB})
	gl.SetGroup("noattrs", map[string]string{"cc_orga_id": orgB})
	gl.SetGroup("revoked", map[string]string{"cc_orga_id": orgB, "cc_orga_token": "not-the-token"})
	return &mtFixture{fixture: f, gl: gl}
}

func nsJob(id int64, ns string) executors.Job {
	return testJob(id, "CI_PROJECT_ROOT_NAMESPACE", ns)
}

func TestMultiTenant(t *testing.T) {
	f := newMT(t)
	ha, h := provision(t, f.fixture, nsJob(1, "acme"))
	provision(t, f.fixture, nsJob(2, "acme"))
	hb, _ := provision(t, f.fixture, nsJob(3, "beta"))
	if ha.OrgaID != orgA || hb.OrgaID != orgB || ha.namespace() != "acme" || len(f.s.Apps(orgA)) != 2 || len(f.s.Apps(orgB)) != 1 {
		t.Fatalf("handles %+v %+v, apps %d/%d", ha, hb, len(f.s.Apps(orgA)), len(f.s.Apps(orgB)))
	}
	if n := f.gl.Requests(); n != 2 {
		t.Fatalf("%d attribute requests for 2 tenants (cached)", n)
	}
	if _, err := f.e.Launch(ctx(t), h, nsJob(1, "acme")); err != nil {
		t.Fatal(err)
	}
	checkNoSecret(t, f.s, tokA, tokB, adminTok)

	for _, c := range []struct{ ns, want string }{
		{"noattrs", `GitLab group "noattrs" has no custom attribute cc_orga_token`},
		{"nowhere", `GitLab group "nowhere" not found (HTTP 404)`},
		{"", "the job has no CI_PROJECT_ROOT_NAMESPACE"},
		{"revoked", `the Clever Cloud token of GitLab group "revoked" (custom attribute cc_orga_token) was refused`},
	} {
		j := nsJob(9, c.ns)
		ph, _ := f.e.Plan(ctx(t), j)
		_, err := f.e.Provision(ctx(t), ph, j)
		if err == nil || !executors.IsPermanent(err) || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s: %v", c.ns, err)
		}
		if err := f.e.Decommission(ctx(t), ph); err != nil {
			t.Fatalf("decommission after a tenant error (%s): %v", c.ns, err)
		}
	}
	// other tenants keep working
	provision(t, f.fixture, nsJob(4, "beta"))

	// token rotated in Clever and in GitLab: the cached token is refused,
	// the attributes are read again
	f.s.SetToken(orgA, "tenant-a-new-token")
	f.gl.SetGroup("acme", map[string]string{"cc_orga_id": orgA, "cc_orga_token": "tenant-a-new-token"})
	if hd, _ := provision(t, f.fixture, nsJob(5, "acme")); hd.OrgaID != orgA {
		t.Fatalf("after rotation %+v", hd)
	}
}

func TestMultiTenantAttributesTokenRefused(t *testing.T) {
	f := newMT(t)
	f.gl.AddToken("not-admin")
	f.e.opts.AttributesToken = "not-admin"
	j := nsJob(1, "acme")
	ph, _ := f.e.Plan(ctx(t), j)
	_, err := f.e.Provision(ctx(t), ph, j)
	if err == nil || !executors.IsPermanent(err) || !strings.Contains(err.Error(), "HTTP 403") || !strings.Contains(err.Error(), "cc_gitlab_namespace_attributes_token") {
		t.Fatalf("non-admin token: %v", err)
	}
	if executors.FailureReason(err) != "runner_configuration_error" {
		t.Fatalf("reason %s", executors.FailureReason(err))
	}
}

func TestMultiTenantReap(t *testing.T) {
	f := newMT(t)
	old := time.Now().Add(-time.Hour)
	orphanA := f.s.AddApp(orgA, "hpd-job-t1a2b3c4-100", nil, old)
	orphanB := f.s.AddApp(orgB, "hpd-job-t1a2b3c4-200", nil, old)
	ka, _ := provision(t, f.fixture, nsJob(1, "acme"))
	// a fresh executor (a restart): only the organisations of the kept
	// handles are known
	removed, err := f.e.Reap(ctx(t), []executors.Handle{ka.encode()}, time.Minute)
	if err != nil || len(removed) != 1 || !strings.Contains(removed[0], orphanA.ID) {
		t.Fatalf("removed %v (%v)", removed, err)
	}
	if len(f.s.AppNamed(orphanB.Name)) != 1 {
		t.Fatal("reaped an organisation it had no reason to look at")
	}
	// once beta is seen, its organisation is reaped too
	provision(t, f.fixture, nsJob(2, "beta"))
	removed, err = f.e.Reap(ctx(t), []executors.Handle{ka.encode()}, 0)
	if err != nil || len(f.s.AppNamed(orphanB.Name)) != 0 {
		t.Fatalf("removed %v (%v)", removed, err)
	}
	if len(f.s.AppNamed(ka.Name)) != 1 {
		t.Fatal("reaped a kept app")
	}
}

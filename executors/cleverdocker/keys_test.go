package cleverdocker

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/executors"
)

// TestErrorsNameTheKeys: a cc_* value Clever refuses fails with the key
// named, so that the administrator knows what to fix.
func TestErrorsNameTheKeys(t *testing.T) {
	if _, err := New(Options{APIURL: "https://a/v2", OrgaID: "o", Token: "t", InnerImage: "i", RunnerID: "r", RunnerURL: "https://g",
		InstanceVariant: "not-a-uuid"}); err == nil || !strings.Contains(err.Error(), `cc_instance_variant_uuid "not-a-uuid" is not a UUID`) {
		t.Fatalf("variant: %v", err)
	}
	provisionErr := func(f *fixture, id int64) error {
		j := testJob(id)
		h, _ := f.e.Plan(ctx(t), j)
		_, err := f.e.Provision(ctx(t), h, j)
		return err
	}
	f := newFixture(t, func(o *Options) { o.Token = "wrong" })
	if err := provisionErr(f, 1); !executors.IsPermanent(err) || !strings.Contains(err.Error(), "HTTP 401") || !strings.Contains(err.Error(), "check cc_token and cc_auth_scheme token") {
		t.Fatalf("refused token: %v", err)
	}
	f = newFixture(t, func(o *Options) { o.APIURL = strings.TrimSuffix(o.APIURL, "/v2") })
	if err := f.e.Check(ctx(t)); err == nil || !strings.Contains(err.Error(), "HTTP 404") || !strings.Contains(err.Error(), "Clever's API base includes /v2") {
		t.Fatalf("API URL without /v2: %v", err)
	}
	f = newFixture(t, func(o *Options) { o.FlavorNamePrefix = "jenkins-" })
	if err := f.e.Check(ctx(t)); err == nil || !strings.Contains(err.Error(), "(cc_flavor_name_prefix, cc_flavor_context)") {
		t.Fatalf("flavor prefix: %v", err)
	}
	f = newFixture(t, nil)
	f.s.FailWith("^POST /organisations/:id/applications$", 400, 4010, "Invalid instance variant", -1)
	if err := provisionErr(f, 2); !executors.IsPermanent(err) || !strings.Contains(err.Error(), "(id 4010): Invalid instance variant") ||
		!strings.Contains(err.Error(), "instanceVariant 70d676a0-a775-4dc9-a43d-3121036e8515 (cc_instance_variant_uuid)") || !strings.Contains(err.Error(), "cc_zone par") {
		t.Fatalf("create refused: %v", err)
	}
	f = newFixture(t, nil)
	j := testJob(3)
	_, h := provision(t, f, j)
	f.s.GitUser = "someone-else"
	if _, err := f.e.Launch(ctx(t), h, j); !executors.IsPermanent(err) || !strings.Contains(err.Error(), `check cc_auth_user "Jenkins"`) {
		t.Fatalf("push refused: %v", err)
	}
}

// TestGoneAs4004: Clever's "no such application" (id 4004) means gone,
// whatever the status it comes with.
func TestGoneAs4004(t *testing.T) {
	f := newFixture(t, nil)
	hd, _ := provision(t, f, testJob(4))
	f.s.FailWith("^DELETE ", 400, 4004, "Application not found", -1)
	if err := f.e.Decommission(ctx(t), hd.encode()); err != nil {
		t.Fatalf("delete of a gone application: %v", err)
	}
}

// TestDockerRuntimeByType: without a runtime named Docker (Heptapod's
// choice), the docker type is used.
func TestDockerRuntimeByType(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v2/products/instances":
			io.WriteString(w, `[{"type":"node","version":"1","name":"Node"},{"type":"docker","version":"20250101","name":"Docker (new)","enabled":true}]`)
		case "/v2/products/flavors":
			io.WriteString(w, `[{"name":"heptapod-runner-M","mem":8192,"cpus":4,"available":true}]`)
		}
	}))
	t.Cleanup(srv.Close)
	e, err := New(Options{APIURL: srv.URL + "/v2", OrgaID: "o", Token: "t", InnerImage: "i", RunnerID: "r", RunnerURL: "https://g", RetryFor: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	p, err := e.products(ctx(t), false)
	if err != nil || p.instanceType != "docker" || p.instanceVersion != "20250101" {
		t.Fatalf("products %+v: %v", p, err)
	}
}

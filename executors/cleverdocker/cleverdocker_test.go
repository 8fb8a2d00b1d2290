package cleverdocker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/cleverdocker/cleverdockertest"
	"gitlab.com/paas-runner/paas-runner/executors/executortest"
)

const (
	orga     = "orga_07cf2ef0-c9ad-4f04-b492-94c164f95c76"
	ccToken  = "cc-secret-bb52e490-d47e-47a4-b190"
	runnerID = "t1a2b3c4"
)

type fixture struct {
	s     *cleverdockertest.Server
	e     *Executor
	calls atomic.Int64
}

func newFixture(t testing.TB, mod func(*Options)) *fixture {
	t.Helper()
	f := &fixture{s: cleverdockertest.New(t)}
	f.s.AddOrg(orga, ccToken)
	f.s.GitUser = "Jenkins"
	opts := Options{
		APIURL: f.s.APIURL(), OrgaID: orga, Token: ccToken, Zone: "par", DefaultFlavor: "M",
		RepoTimeout: 20 * time.Second, RepoWaitStep: 5 * time.Millisecond,
		AuthUser: "Jenkins", InstanceVariant: "70d676a0-a775-4dc9-a43d-3121036e8515",
		ExtraEnv:   map[string]string{"CC_ENABLE_HEPTAPOD_RUNNER": "true"},
		InnerImage: "registry.example.com/paas-runner-host:1", RunnerID: runnerID, RunnerLabel: "clever", RunnerURL: "https://gitlab.example.com",
		Inner:    map[string]any{"docker": map[string]any{"image": "debian:bookworm"}},
		SystemID: "r_0123456789ab", RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond, RetryFor: 10 * time.Second,
		OnAPICall: func() { f.calls.Add(1) },
	}
	if mod != nil {
		mod(&opts)
	}
	e, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	f.e = e
	return f
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func testJob(id int64, vars ...string) executors.Job {
	var vs []map[string]any
	for i := 0; i+1 < len(vars); i += 2 {
		vs = append(vs, map[string]any{"key": vars[i], "value": vars[i+1], "public": true})
	}
	p, _ := json.Marshal(map[string]any{"id": id, "token": fmt.Sprintf("job-token-%d", id), "variables": vs,
		"image": map[string]any{"name": "alpine:3"}})
	return executors.Job{RunnerID: runnerID, ID: id, Token: fmt.Sprintf("job-token-%d", id), Payload: p, TraceOffset: 17}
}

type inspector struct{ s *cleverdockertest.Server }

func (in inspector) Observe(_ context.Context, h executors.Handle) (bool, int, error) {
	hd, err := decodeHandle(h)
	if err != nil {
		return false, 0, err
	}
	apps := in.s.AppNamed(hd.Name)
	if len(apps) == 0 {
		return false, 0, nil
	}
	if len(apps) > 1 {
		return true, 0, fmt.Errorf("%d applications named %s", len(apps), hd.Name)
	}
	return true, apps[0].Pushes, nil
}

func TestConformance(t *testing.T) {
	executortest.Run(t, func(t *testing.T) executortest.Subject {
		f := newFixture(t, nil)
		return executortest.Subject{Executor: f.e, Observer: inspector{f.s}, RunnerID: runnerID, Timeout: time.Minute,
			Payload: func(id int64) json.RawMessage { return testJob(id).Payload }}
	})
}

func provision(t *testing.T, f *fixture, j executors.Job) (handle, executors.Handle) {
	t.Helper()
	h, err := f.e.Plan(ctx(t), j)
	if err != nil {
		t.Fatal(err)
	}
	h, err = f.e.Provision(ctx(t), h, j)
	if err != nil {
		t.Fatalf("provision: %v", err)
	}
	hd, err := decodeHandle(h)
	if err != nil {
		t.Fatal(err)
	}
	return hd, h
}

func TestProvisionLaunchDecommission(t *testing.T) {
	f := newFixture(t, nil)
	j := testJob(777, "CI_CLEVER_CLOUD_FLAVOR", "S")
	planned, _ := f.e.Plan(ctx(t), j)
	if string(planned) != `{"name":"hpd-job-t1a2b3c4-777","job_id":777,"gitlab_namespace":null,"flavor":"S","launched":false}` {
		t.Fatalf("planned handle %s", planned)
	}
	hd, h := provision(t, f, j)
	apps := f.s.Apps(orga)
	if len(apps) != 1 {
		t.Fatalf("%d apps", len(apps))
	}
	a := apps[0]
	if a.Name != "hpd-job-t1a2b3c4-777" || a.Lifetime != "TASK" || a.MinFlavor != "heptapod-runner-S" || a.MaxFlavor != "heptapod-runner-S" ||
		a.Zone != "par" || a.Variant != "70d676a0-a775-4dc9-a43d-3121036e8515" || a.InstanceType != "docker" || a.Version != "20231020" ||
		a.MinInstances != 1 || a.MaxInstances != 1 || strings.Join(a.Tags, ",") != "paas-runner,paas-runner-system-r_0123456789ab" {
		t.Fatalf("app %+v", a)
	}
	if len(a.Env) != 2 || a.Env["CC_MOUNT_DOCKER_SOCKET"] != "true" || a.Env["CC_ENABLE_HEPTAPOD_RUNNER"] != "true" {
		t.Fatalf("env %v", a.Env)
	}
	if hd.ID != a.ID || hd.OrgaID != orga || hd.DeployURL != f.s.Git.URL+"/"+a.ID+".git" || hd.Launched || hd.Weight < 5.6 || hd.Weight > 5.7 {
		t.Fatalf("handle %+v", hd)
	}
	if bytes.Contains(h, []byte(ccToken)) {
		t.Fatalf("handle holds the token: %s", h)
	}
	h2, err := f.e.Launch(ctx(t), h, j)
	if err != nil {
		t.Fatalf("launch: %v", err)
	}
	if hd2, _ := decodeHandle(h2); !hd2.Launched {
		t.Fatalf("launched handle %s", h2)
	}
	files, commits, msg, err := f.s.Pushed(a.ID)
	if err != nil || commits != 1 || msg != "Job definition (job 777)" {
		t.Fatalf("pushed: %v %d %q", err, commits, msg)
	}
	wantDockerfile := `FROM registry.example.com/paas-runner-host:1
COPY runner.toml /etc/heptapod-runner/runner.toml
COPY job.json /etc/heptapod-runner/job.json
ENV DEBUG="true"
ENTRYPOINT ["/usr/bin/gitlab-runner", "exec-fetched-job", "--config", "/etc/heptapod-runner/runner.toml", "/etc/heptapod-runner/job.json"]
`
	wantJob := `{"id":777,"image":{"name":"alpine:3"},"paas_runner":{"runner_id":"t1a2b3c4","system_id":"r_0123456789ab","trace_offset":17},"token":"job-token-777","variables":[{"key":"CI_CLEVER_CLOUD_FLAVOR","public":true,"value":"S"}]}` + "\n"
	wantTOML := `# Generated by paas-runner for the inner runner of one job.
[[runners]]
  executor = "docker"
  name = "clever"
  url = "https://gitlab.example.com"
  [runners.docker]
    image = "debian:bookworm"
`
	if len(files) != 3 || string(files["Dockerfile"]) != wantDockerfile || string(files["job.json"]) != wantJob || string(files["runner.toml"]) != wantTOML {
		t.Fatalf("pushed tree:\n%s\n---\n%s\n---\n%s", files["Dockerfile"], files["job.json"], files["runner.toml"])
	}
	// launched again from the handle saved before the launch: not twice
	if _, err := f.e.Launch(ctx(t), h, j); err != nil {
		t.Fatalf("launch again: %v", err)
	}
	// …nor after a restart, where the job log offset (so job.json) differs
	j2 := j
	j2.TraceOffset = 99
	if _, err := f.e.Launch(ctx(t), h, j2); err != nil {
		t.Fatalf("launch again after a restart: %v", err)
	}
	if a := f.s.Apps(orga)[0]; a.Pushes != 1 {
		t.Fatalf("%d pushes", a.Pushes)
	}
	if files, _, _, _ := f.s.Pushed(a.ID); string(files["job.json"]) != wantJob {
		t.Fatalf("master changed: %s", files["job.json"])
	}
	if err := f.e.Decommission(ctx(t), h2); err != nil {
		t.Fatal(err)
	}
	if n := len(f.s.Apps("")); n != 0 {
		t.Fatalf("%d apps left", n)
	}
	if err := f.e.Decommission(ctx(t), h2); err != nil {
		t.Fatalf("decommission of a deleted app: %v", err)
	}
	checkNoSecret(t, f.s, ccToken)
}

// checkNoSecret greps every request body and every pushed file and
// commit for secret.
func checkNoSecret(t *testing.T, s *cleverdockertest.Server, secrets ...string) {
	t.Helper()
	for _, r := range s.Requests() {
		for _, sec := range secrets {
			if bytes.Contains(r.Body, []byte(sec)) || strings.Contains(r.Path+r.RawQuery, sec) {
				t.Fatalf("secret in request %s %s: %s", r.Method, r.Path, r.Body)
			}
		}
	}
	for _, a := range s.Apps("") {
		filepath.Walk(s.RepoDir(a.ID), func(p string, fi os.FileInfo, err error) error {
			if err != nil || fi.IsDir() {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, sec := range secrets {
				if bytes.Contains(b, []byte(sec)) {
					t.Fatalf("secret in the pushed repository: %s", p)
				}
			}
			return nil
		})
		files, _, msg, _ := s.Pushed(a.ID)
		for n, b := range files {
			for _, sec := range secrets {
				if bytes.Contains(b, []byte(sec)) || strings.Contains(msg, sec) {
					t.Fatalf("secret in pushed %s", n)
				}
			}
		}
	}
}

func TestProductsCachedAndRefreshedWhenStale(t *testing.T) {
	f := newFixture(t, nil)
	for id := int64(1); id <= 3; id++ {
		provision(t, f, testJob(id))
	}
	if n, m := f.s.Count("GET /products/instances"), f.s.Count("GET /products/flavors"); n != 1 || m != 1 {
		t.Fatalf("products fetched %d/%d times for 3 jobs", n, m)
	}
	// the Docker runtime got a new version: the cached one is refused
	f.s.SetDockerVersion("20260101")
	hd, _ := provision(t, f, testJob(4))
	if n := f.s.Count("GET /products/instances"); n != 2 {
		t.Fatalf("products fetched %d times after a 9017", n)
	}
	if a := f.s.AppNamed(hd.Name); len(a) != 1 || a[0].Version != "20260101" {
		t.Fatalf("apps %+v", a)
	}
	// TTL
	g := newFixture(t, func(o *Options) { o.ProductsTTL = time.Nanosecond })
	provision(t, g, testJob(1))
	provision(t, g, testJob(2))
	if n := g.s.Count("GET /products/flavors"); n != 2 {
		t.Fatalf("expired cache: flavors fetched %d times", n)
	}
	// a failing refresh: the expired products serve at once (one attempt,
	// no retries)
	g.s.Fail("^GET /products/instances$", 500, -1)
	g.e.api.retryFor = time.Hour
	provision(t, g, testJob(3))
	if n := g.s.Count("GET /products/instances"); n != 3 {
		t.Fatalf("instances fetched %d times", n)
	}
}

func TestFlavorErrors(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.MaxFlavor = "L" })
	for _, c := range []struct{ flavor, want string }{
		{"XL", `flavor "XL" is bigger than this runner's maximum L (set CI_CLEVER_CLOUD_FLAVOR to one of: XS, S, M, L)`},
		{"XXL", `flavor "XXL" is not available (set CI_CLEVER_CLOUD_FLAVOR to one of: XS, S, M, L)`},
		{"4XL", `flavor "4XL" is not available`}, // exists but unavailable
		{"heptapod-runner-M", `is not available`},
	} {
		j := testJob(5, "CI_CLEVER_CLOUD_FLAVOR", c.flavor)
		h, _ := f.e.Plan(ctx(t), j)
		_, err := f.e.Provision(ctx(t), h, j)
		if err == nil || !executors.IsPermanent(err) || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("flavor %s: %v", c.flavor, err)
		}
		if executors.FailureReason(err) != "script_failure" {
			t.Fatalf("reason %s", executors.FailureReason(err))
		}
		// nothing to remove; decommission of the planned handle is fine
		if err := f.e.Decommission(ctx(t), h); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.s.Count("POST /organisations/:id/applications"); n != 0 {
		t.Fatalf("%d creates for refused flavors", n)
	}
	// an unknown flavor refreshes the products at most once a minute
	if n := f.s.Count("GET /products/flavors"); n != 2 {
		t.Fatalf("flavors fetched %d times", n)
	}
	if err := f.e.Check(ctx(t)); err != nil {
		t.Fatal(err)
	}
	g := newFixture(t, func(o *Options) { o.DefaultFlavor = "XXS" })
	if err := g.e.Check(ctx(t)); err == nil || !strings.Contains(err.Error(), `cc_default_flavor "XXS" is not an available flavor (available: XS, S, M, L, XL, 2XL, 3XL)`) {
		t.Fatalf("check: %v", err)
	}
}

func TestAdoptsExistingApp(t *testing.T) {
	f := newFixture(t, nil)
	j := testJob(42)
	// a create that went through before a crash, twice (a retried create
	// of an older version)
	first := f.s.AddApp(orga, "hpd-job-t1a2b3c4-42", nil, time.Now().Add(-time.Minute))
	f.s.AddApp(orga, "hpd-job-t1a2b3c4-42", nil, time.Now())
	hd, _ := provision(t, f, j)
	if hd.ID != first.ID {
		t.Fatalf("adopted %s, want the oldest %s", hd.ID, first.ID)
	}
	if apps := f.s.Apps(orga); len(apps) != 1 || apps[0].ID != first.ID || apps[0].EnvPuts != 1 {
		t.Fatalf("apps %+v", apps)
	}
	if n := f.s.Count("POST /organisations/:id/applications"); n != 0 {
		t.Fatalf("%d creates", n)
	}
	// a planned handle (no id) is decommissioned by name
	planned, _ := f.e.Plan(ctx(t), j)
	if err := f.e.Decommission(ctx(t), planned); err != nil {
		t.Fatal(err)
	}
	if n := len(f.s.Apps("")); n != 0 {
		t.Fatalf("%d apps", n)
	}
}

// TestCreateAnswers: a create that conflicts (409) or answers without an
// id looks the application up by name; one being deleted (repository
// DELETED, still listed) is not adopted; a 429's Retry-After is waited.
func TestCreateAnswers(t *testing.T) {
	f := newFixture(t, nil)
	f.s.FailWith("^POST /organisations/:id/applications$", 409, 409, "Conflict", 1)
	hd, _ := provision(t, f, testJob(60))
	if a := f.s.AppNamed(hd.Name); len(a) != 1 || a[0].ID != hd.ID {
		t.Fatalf("after a conflict: %+v, handle %s", a, hd.ID)
	}
	f.s.CreateAnswer = func(view map[string]any) { delete(view, "id") }
	hd, _ = provision(t, f, testJob(61))
	if a := f.s.AppNamed(hd.Name); len(a) != 1 || a[0].ID != hd.ID || hd.ID == "" {
		t.Fatalf("after an answer without id: %+v, handle %q", a, hd.ID)
	}
	f.s.CreateAnswer = nil
	dying := f.s.AddApp(orga, "hpd-job-t1a2b3c4-62", nil, time.Now())
	f.s.MarkDeleted(dying.ID)
	hd, _ = provision(t, f, testJob(62))
	if hd.ID == dying.ID || len(f.s.AppNamed(hd.Name)) != 2 {
		t.Fatalf("adopted an application being deleted: %s", hd.ID)
	}
	f.s.Fail("^POST /organisations/:id/applications$", 429, 1) // Retry-After: 1
	start := time.Now()
	provision(t, f, testJob(63))
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Fatalf("create retried %v after a 429 with Retry-After: 1", d)
	}
}

func TestTransientAndPermanentErrors(t *testing.T) {
	f := newFixture(t, nil)
	// 5xx for a while on every route: retried, nothing doubled
	f.s.Fail("^(GET|POST|PUT) ", 500, 6)
	f.s.Fail("^POST ", 429, 1)
	hd, h := provision(t, f, testJob(1))
	if n := len(f.s.AppNamed(hd.Name)); n != 1 {
		t.Fatalf("%d apps", n)
	}
	if _, err := f.e.Launch(ctx(t), h, testJob(1)); err != nil {
		t.Fatal(err)
	}
	// slow answers past the client's timeout: transient
	g := newFixture(t, func(o *Options) {
		o.HTTPClient = &httpClientWithTimeout
		o.RetryFor = time.Millisecond
	})
	g.s.Slow("^GET /products/instances$", time.Hour, -1)
	j := testJob(2)
	ph, _ := g.e.Plan(ctx(t), j)
	_, err := g.e.Provision(ctx(t), ph, j)
	if err == nil || executors.IsPermanent(err) {
		t.Fatalf("slow API: %v", err)
	}
	g.s.ClearFaults()
	// 4xx: permanent, with Clever's id and message
	k := newFixture(t, func(o *Options) { o.Zone = "mars" })
	ph, _ = k.e.Plan(ctx(t), j)
	_, err = k.e.Provision(ctx(t), ph, j)
	if err == nil || !executors.IsPermanent(err) || !strings.Contains(err.Error(), "HTTP 400") || !strings.Contains(err.Error(), "Unknown zone mars") {
		t.Fatalf("bad zone: %v", err)
	}
	bad := newFixture(t, func(o *Options) { o.Token = "wrong" })
	ph, _ = bad.e.Plan(ctx(t), j)
	_, err = bad.e.Provision(ctx(t), ph, j)
	if err == nil || !executors.IsPermanent(err) || !strings.Contains(err.Error(), "HTTP 401 (id 401)") {
		t.Fatalf("bad token: %v", err)
	}
	// 500 forever: transient after the retries
	f.s.Fail("^DELETE ", 500, -1)
	f.e.api.retryFor = 50 * time.Millisecond
	launched, _ := decodeHandle(h)
	err = f.e.Decommission(ctx(t), launched.encode())
	if err == nil || executors.IsPermanent(err) || !strings.Contains(err.Error(), "(id 5001)") {
		t.Fatalf("delete with 500s: %v", err)
	}
}

func TestLaunchWaitsForTheRepository(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.RepoTimeout = 300 * time.Millisecond; o.RepoWaitStep = 10 * time.Millisecond })
	f.s.RepoCreatingGets = 3
	j := testJob(9)
	hd, h := provision(t, f, j)
	if _, err := f.e.Launch(ctx(t), h, j); err != nil {
		t.Fatal(err)
	}
	if n := f.s.Count("GET /organisations/:id/applications/:app"); n != 4 {
		t.Fatalf("%d GETs", n)
	}
	f.s.HoldRepos = true
	j = testJob(10)
	_, h = provision(t, f, j)
	_, err := f.e.Launch(ctx(t), h, j)
	if err == nil || executors.IsPermanent(err) || !strings.Contains(err.Error(), "is still CREATING after 300ms") {
		t.Fatalf("held repository: %v", err)
	}
	f.s.ReleaseRepos()
	if _, err := f.e.Launch(ctx(t), h, j); err != nil {
		t.Fatal(err)
	}
	// the app vanished: permanent
	gone := hd
	gone.ID, gone.Launched = "app_00000000-0000-0000-0000-000000000000", false
	if _, err := f.e.Launch(ctx(t), gone.encode(), testJob(9)); err == nil || !executors.IsPermanent(err) || !strings.Contains(err.Error(), "id 4004") {
		t.Fatalf("launch of a deleted app: %v", err)
	}
}

// TestDeployURLWithoutHTTPURL: without deployment.httpUrl the job is
// pushed to the view's deployUrl, or to the HTTPS form of the git+ssh URL.
func TestDeployURLWithoutHTTPURL(t *testing.T) {
	f := newFixture(t, nil)
	f.s.OmitHTTPURL = true
	j := testJob(12)
	hd, h := provision(t, f, j)
	if want := f.s.Git.URL + "/" + hd.ID + ".git"; hd.DeployURL != want {
		t.Fatalf("deploy URL %q, want %q", hd.DeployURL, want)
	}
	if _, err := f.e.Launch(ctx(t), h, j); err != nil {
		t.Fatal(err)
	}
	if a := f.s.AppNamed(hd.Name); len(a) != 1 || a[0].Pushes != 1 {
		t.Fatalf("not pushed: %+v", a)
	}
	var a app
	a.Deployment.URL = "git+ssh://git@push-n3-par-clevercloud-customers.services.clever-cloud.com/app_1.git"
	if u := a.pushURL(); u != "https://push-n3-par-clevercloud-customers.services.clever-cloud.com/app_1.git" {
		t.Fatalf("from the ssh URL: %q", u)
	}
}

// TestPushTimeout: a git host that never answers fails the push attempt
// (transient) after PushTimeout.
func TestPushTimeout(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.PushTimeout = 200 * time.Millisecond })
	stuck := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-stuck:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(hang.Close)
	t.Cleanup(func() { close(stuck) })
	bc, err := f.e.Context(ctx(t), testJob(5))
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.e.push(ctx(t), hang.URL+"/app_x.git", ccToken, bc, testJob(5))
	if err == nil || executors.IsPermanent(err) || !strings.Contains(err.Error(), "did not finish in 200ms") || strings.Contains(err.Error(), ccToken) {
		t.Fatalf("stuck push: %v", err)
	}
}

// TestInspect: an application that was pushed runs the job, one not yet
// pushed does not, one gone (deleted, 4004, DELETED) does not exist; an
// API that keeps failing is an error, not a verdict.
func TestInspect(t *testing.T) {
	f := newFixture(t, nil)
	j := testJob(70)
	hd, h := provision(t, f, j)
	if st, err := f.e.Inspect(ctx(t), h); err != nil || !st.Exists || st.Running {
		t.Fatalf("provisioned, not pushed: %+v %v", st, err)
	}
	lh, err := f.e.Launch(ctx(t), h, j)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := f.e.Inspect(ctx(t), lh); err != nil || !st.Exists || !st.Running {
		t.Fatalf("pushed: %+v %v", st, err)
	}
	// launched (a Heptapod handle says so) though its master is not seen:
	// running, not a verdict of death
	heptapod := f.s.AddApp(orga, "hpd-job-t1a2b3c4-71", nil, time.Now())
	hh := executors.Handle(fmt.Sprintf(`{"id": %q, "gitlab_namespace": null, "weight": 13.45, "launched": true, "deploy_url": "https://push/x.git"}`, heptapod.ID))
	if st, err := f.e.Inspect(ctx(t), hh); err != nil || !st.Exists || !st.Running {
		t.Fatalf("launched Heptapod handle: %+v %v", st, err)
	}
	// planned handle (no id yet): found by name
	planned, _ := f.e.Plan(ctx(t), j)
	if st, err := f.e.Inspect(ctx(t), planned); err != nil || !st.Exists || !st.Running {
		t.Fatalf("by name: %+v %v", st, err)
	}
	f.s.Fail("^GET /organisations/:id/applications/:app$", 500, -1)
	f.e.api.retryFor = 20 * time.Millisecond
	if _, err := f.e.Inspect(ctx(t), lh); err == nil {
		t.Fatal("no error while the API fails")
	}
	f.s.ClearFaults()
	f.s.FailWith("^GET /organisations/:id/applications/:app$", 400, 4004, "Application not found", 1)
	if st, err := f.e.Inspect(ctx(t), lh); err != nil || st.Exists {
		t.Fatalf("4004: %+v %v", st, err)
	}
	f.s.MarkDeleted(hd.ID)
	if st, err := f.e.Inspect(ctx(t), lh); err != nil || st.Exists {
		t.Fatalf("DELETED: %+v %v", st, err)
	}
	f.s.RemoveApp(hd.ID)
	if st, err := f.e.Inspect(ctx(t), lh); err != nil || st.Exists || !strings.Contains(st.Detail, "no longer exists") {
		t.Fatalf("removed: %+v %v", st, err)
	}
	if st, err := f.e.Inspect(ctx(t), planned); err != nil || st.Exists {
		t.Fatalf("removed, by name: %+v %v", st, err)
	}
}

func TestPushRefusedCredentialsArePermanent(t *testing.T) {
	f := newFixture(t, nil)
	j := testJob(3)
	_, h := provision(t, f, j)
	f.s.GitUser = "someone-else"
	_, err := f.e.Launch(ctx(t), h, j)
	if err == nil || !executors.IsPermanent(err) || !strings.Contains(err.Error(), "authentication") {
		t.Fatalf("push refused: %v", err)
	}
}

func TestReapSparesOthers(t *testing.T) {
	f := newFixture(t, nil)
	old := time.Now().Add(-time.Hour)
	mineDesc := "paas-runner job 4 of runner t1a2b3c4 (paas-runner-system-r_0123456789ab)"
	heptapod := f.s.AddApp(orga, "hpd-job-t1a2b3c4-1", nil, old)
	// Clever's listing has no tags: another daemon's application is known
	// by the system tag in its description…
	other := f.s.AddAppDescribed(orga, "hpd-job-t1a2b3c4-2", "paas-runner job 2 of runner t1a2b3c4 (paas-runner-system-r_otherdaemon0)", nil, old)
	// …or, made by an older paas-runner, by its tags (GET …/tags)
	otherOld := f.s.AddAppDescribed(orga, "hpd-job-t1a2b3c4-3", "paas-runner job 3 of runner t1a2b3c4", []string{"paas-runner", "paas-runner-system-r_otherdaemon0"}, old)
	mineOld := f.s.AddAppDescribed(orga, "hpd-job-t1a2b3c4-6", "paas-runner job 6 of runner t1a2b3c4", []string{"paas-runner", "paas-runner-system-r_0123456789ab"}, old)
	otherRunner := f.s.AddApp(orga, "hpd-job-x9y8z7w6-3", nil, old)
	unrelated := f.s.AddApp(orga, "my-website", nil, old)
	mine := f.s.AddAppDescribed(orga, "hpd-job-t1a2b3c4-4", mineDesc, nil, old)
	kept := f.s.AddAppDescribed(orga, "hpd-job-t1a2b3c4-5", mineDesc, nil, old)
	keep := handle{Name: kept.Name, ID: kept.ID, OrgaID: orga}
	removed, err := f.e.Reap(ctx(t), []executors.Handle{keep.encode()}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(removed, " ")
	if len(removed) != 3 || !strings.Contains(all, heptapod.ID) || !strings.Contains(all, mine.ID) || !strings.Contains(all, mineOld.ID) {
		t.Fatalf("removed %v", removed)
	}
	var left []string
	for _, a := range f.s.Apps(orga) {
		left = append(left, a.ID)
	}
	if strings.Join(left, " ") != strings.Join([]string{other.ID, otherOld.ID, otherRunner.ID, unrelated.ID, kept.ID}, " ") {
		t.Fatalf("left %v", left)
	}
	if n := f.s.Count("GET /organisations/:id/applications/:app/tags"); n != 2 {
		t.Fatalf("%d tag reads, want 2 (the older paas-runner's applications only)", n)
	}
}

// TestReapSparesAnotherDaemonsApplication: an application another daemon
// of the same runner created is never reaped, through what Clever's
// listing really shows of it.
func TestReapSparesAnotherDaemonsApplication(t *testing.T) {
	f := newFixture(t, nil)
	g, err := New(func() Options { o := f.e.opts; o.SystemID = "r_otherdaemon0"; o.OnAPICall = nil; return o }())
	if err != nil {
		t.Fatal(err)
	}
	j := testJob(31)
	h, _ := g.Plan(ctx(t), j)
	if _, err := g.Provision(ctx(t), h, j); err != nil {
		t.Fatal(err)
	}
	removed, err := f.e.Reap(ctx(t), nil, 0)
	if err != nil || len(removed) != 0 {
		t.Fatalf("reaped %v (%v): another daemon's application", removed, err)
	}
	removed, err = g.Reap(ctx(t), nil, 0)
	if err != nil || len(removed) != 1 {
		t.Fatalf("its own daemon reaped %v (%v)", removed, err)
	}
}

func TestHeptapodHandle(t *testing.T) {
	f := newFixture(t, nil)
	a := f.s.AddApp(orga, "hpd-job-t1a2b3c4-956", nil, time.Now())
	h := executors.Handle(fmt.Sprintf(`{"id": %q, "gitlab_namespace": null, "weight": 13.45, "launched": true, "deploy_url": "https://push/x.git"}`, a.ID))
	if err := f.e.Decommission(ctx(t), h); err != nil {
		t.Fatal(err)
	}
	if len(f.s.Apps("")) != 0 {
		t.Fatal("Heptapod's app not removed")
	}
	// a pending job of a Heptapod state file, provisioned, not launched:
	// launched as Heptapod would
	b := f.s.AddApp(orga, "hpd-job-t1a2b3c4-957", nil, time.Now())
	ph := executors.Handle(fmt.Sprintf(`{"id": %q, "gitlab_namespace": null, "weight": 13.45, "launched": false, "deploy_url": "https://push/x.git"}`, b.ID))
	lh, err := f.e.Launch(ctx(t), ph, testJob(957))
	if err != nil {
		t.Fatalf("launch of an imported pending job: %v", err)
	}
	if hd, _ := decodeHandle(lh); !hd.Launched || hd.ID != b.ID || hd.Name != "" || f.s.AppNamed(b.Name)[0].Pushes != 1 {
		t.Fatalf("launched %s: %+v", lh, f.s.AppNamed(b.Name))
	}
	if _, err := decodeHandle(executors.Handle(`{"container":"x"}`)); err == nil {
		t.Fatal("local-docker handle accepted")
	}
}

func TestNewRefusesBadOptions(t *testing.T) {
	for _, c := range []struct {
		mod  func(*Options)
		want string
	}{
		{func(o *Options) { o.APIURL = "ftp://x" }, "not an http(s) URL"},
		{func(o *Options) { o.OrgaID = "" }, "organisation id and its token are required"},
		{func(o *Options) { o.MultiTenant = true; o.OrgaID = "" }, "multi-tenant needs"},
		{func(o *Options) { o.InnerImage = "" }, "inner_image is required"},
		{func(o *Options) { o.AuthScheme = "basic" }, "auth scheme"},
	} {
		o := Options{APIURL: "https://api.example.com/v2", OrgaID: "o", Token: "t", InnerImage: "i", RunnerID: "r", RunnerURL: "https://g"}
		c.mod(&o)
		if _, err := New(o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s: %v", c.want, err)
		}
	}
}

var httpClientWithTimeout = http.Client{Timeout: 200 * time.Millisecond}

func TestBearerAuthScheme(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.AuthScheme = "bearer" })
	f.s.AuthScheme = "bearer"
	provision(t, f, testJob(1))
	for _, r := range f.s.Requests() {
		if strings.HasPrefix(r.Route, "POST ") && r.Auth != "Bearer "+ccToken {
			t.Fatalf("auth header %q", r.Auth)
		}
		if strings.Contains(r.Route, "/products/") && r.Auth != "" {
			t.Fatalf("products fetched with credentials: %q", r.Auth)
		}
	}
	f.s.AuthScheme = "token"
	j := testJob(2)
	h, _ := f.e.Plan(ctx(t), j)
	if _, err := f.e.Provision(ctx(t), h, j); err == nil || !strings.Contains(err.Error(), "HTTP 401") {
		t.Fatalf("scheme refused: %v", err)
	}
}

// TestBearerGoesThroughTheBridge: Clever takes API tokens (Bearer) only
// on the API bridge; the main API's default URL is switched to it.
func TestBearerGoesThroughTheBridge(t *testing.T) {
	for _, c := range []struct{ url, scheme, want string }{
		{MainAPI, "bearer", BridgeAPI},
		{MainAPI + "/", "bearer", BridgeAPI},
		{MainAPI, "token", MainAPI},
		{"https://clever.internal.example/v2", "bearer", "https://clever.internal.example/v2"},
	} {
		e, err := New(Options{APIURL: c.url, AuthScheme: c.scheme, OrgaID: "o", Token: "t", InnerImage: "i", RunnerID: "r", RunnerURL: "https://g"})
		if err != nil {
			t.Fatal(err)
		}
		if e.api.base != c.want {
			t.Fatalf("%s with %s: %s, want %s", c.url, c.scheme, e.api.base, c.want)
		}
	}
}

// TestProductsAuthenticatedWhenAsked: the product lists are fetched
// without credentials (the main API's are public), and with the
// organisation's token when the server refuses that (the API bridge).
func TestProductsAuthenticatedWhenAsked(t *testing.T) {
	f := newFixture(t, nil)
	f.s.ProductsNeedAuth = true
	provision(t, f, testJob(1))
	var anon, authed int
	for _, r := range f.s.Requests() {
		if strings.Contains(r.Route, "/products/") {
			if r.Auth == "" {
				anon++
			} else if r.Auth == "token "+ccToken {
				authed++
			}
		}
	}
	if anon != 2 || authed != 2 {
		t.Fatalf("product requests: %d without credentials, %d with", anon, authed)
	}
}

// TestCheckZone: cc_zone is checked at start against Clever's zones.
func TestCheckZone(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.Zone = "mars" })
	if err := f.e.Check(ctx(t)); err == nil || !strings.Contains(err.Error(), `cc_zone "mars" is not a Clever Cloud zone (zones: grahds, ldn, mtl, par,`) {
		t.Fatalf("check: %v", err)
	}
	if err := newFixture(t, func(o *Options) { o.Zone = "rbx" }).e.Check(ctx(t)); err != nil {
		t.Fatal(err)
	}
	g := newFixture(t, func(o *Options) { o.Zone = "mars" })
	g.s.Fail("^GET /products/zones$", 404, -1)
	if err := g.e.Check(ctx(t)); err != nil {
		t.Fatalf("no zone list: %v", err)
	}
}

func TestCheckTriesOnce(t *testing.T) {
	f := newFixture(t, nil)
	f.s.Fail("^GET /products/instances$", 503, -1)
	f.e.api.retryFor = time.Hour
	if err := f.e.Check(ctx(t)); err == nil || !strings.Contains(err.Error(), "HTTP 503") {
		t.Fatalf("check: %v", err)
	}
	if n := f.s.Count("GET /products/instances"); n != 1 {
		t.Fatalf("%d attempts", n)
	}
}

// FuzzDecodeHandle: any state file content decodes or is refused, never
// panics, and a decoded handle re-encodes to one that decodes the same.
func FuzzDecodeHandle(f *testing.F) {
	f.Add([]byte(`{"name":"hpd-job-x-1","job_id":1,"gitlab_namespace":null,"launched":false}`))
	f.Add([]byte(`{"id":"app_1","gitlab_namespace":"acme","weight":13.45,"launched":true,"deploy_url":"https://x"}`))
	f.Add([]byte(`"hpd-job-x-1"`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		hd, err := decodeHandle(b)
		if err != nil {
			if !executors.IsPermanent(err) {
				t.Fatalf("refusal is not permanent: %v", err)
			}
			return
		}
		again, err := decodeHandle(hd.encode())
		if err != nil || again.Name != hd.Name || again.ID != hd.ID || again.namespace() != hd.namespace() {
			t.Fatalf("round trip: %+v → %+v (%v)", hd, again, err)
		}
	})
}

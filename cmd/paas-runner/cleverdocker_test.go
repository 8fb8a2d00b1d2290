package main_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors/cleverdocker/cleverdockertest"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
	"gitlab.com/paas-runner/paas-runner/state"
)

const (
	ccOrga  = "orga_07cf2ef0-c9ad-4f04-b492-94c164f95c76"
	ccToken = "cc-secret-bb52e490-d47e-47a4-b190-73e23"
)

// cleverEnv is a daemon with clever-docker runners against the fake
// Clever Cloud API and a fake GitLab (fronted for group attributes).
type cleverEnv struct {
	*env
	cc    *cleverdockertest.Server
	front *cleverdockertest.GitLab
}

// newCleverEnv writes a configuration with one clever-docker runner;
// runnerTOML is added to its section. Pushed jobs are "run" by
// simulateInner (what the inner runner does on a Clever host), unless
// the test replaces OnPush.
func newCleverEnv(t *testing.T, runnerTOML string) *cleverEnv {
	t.Helper()
	e := &cleverEnv{env: &env{t: t, dir: t.TempDir(), gl: coordinatortest.New(t), token: "glrt-clever-0123456789"}}
	e.cc = cleverdockertest.New(t)
	e.cc.GitUser = "Jenkins"
	e.cc.AddOrg(ccOrga, ccToken)
	e.front = cleverdockertest.NewGitLab(t, e.gl.URL, "gitlab-admin-attr-token")
	e.gl.AddRunner(e.token)
	e.hosts = filepath.Join(e.dir, "hosts")
	os.Mkdir(e.hosts, 0o700)
	e.state = filepath.Join(e.dir, "state.json")
	e.config = filepath.Join(e.dir, "config.toml")
	os.WriteFile(filepath.Join(e.dir, "cc.token"), []byte(ccToken+"\n"), 0o600)
	e.cc.OnPush = func(a cleverdockertest.App, files map[string][]byte) { simulateInner(t, e.gl.URL, files) }
	writeCleverConfig(t, e.config, e.state, e.front.URL, e.token, e.cc.APIURL(), runnerTOML)
	return e
}

// writeCleverConfig writes a configuration with one clever-docker runner;
// runnerTOML is added to its section.
func writeCleverConfig(t testing.TB, path, state, glURL, token, apiURL, runnerTOML string) {
	cfg := fmt.Sprintf(`concurrent = 10
check_interval = 0.05
state_file = %q

[[runners]]
name = "clever"
url = %q
token = %q
executor = "clever-docker"
inner_image = "registry.example/paas-runner-host:1"
cc_api_url = %q
cc_deployment_repo_wait_step = 0.02
cc_deployment_repo_timeout = 60
%s
  [runners.cc_extra_env]
  CC_ENABLE_HEPTAPOD_RUNNER = "true"
  [runners.docker]
  image = "alpine"
`, state, glURL, token, apiURL, runnerTOML)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

const fixedOrg = "cc_orga_id = \"" + ccOrga + "\"\ncc_token_file = \"cc.token\""

// simulateInner does what the inner runner does with the pushed job.json:
// append to the job log where the daemon left it, report success.
func simulateInner(t testing.TB, glURL string, files map[string][]byte) {
	var j struct {
		ID         int64  `json:"id"`
		Token      string `json:"token"`
		PaasRunner struct {
			TraceOffset int64 `json:"trace_offset"`
		} `json:"paas_runner"`
		Variables []struct{ Key, Value string } `json:"variables"`
	}
	if err := json.Unmarshal(files["job.json"], &j); err != nil {
		if t != nil {
			t.Errorf("pushed job.json: %v", err)
		}
		return
	}
	for _, v := range j.Variables {
		if v.Key == "TEST_INNER" && v.Value == "sleep" {
			return
		}
	}
	base := fmt.Sprintf("%s/api/v4/jobs/%d", glURL, j.ID)
	line := fmt.Sprintf("inner runner: running job %d\n", j.ID)
	req, _ := http.NewRequest(http.MethodPatch, base+"/trace", strings.NewReader(line))
	req.Header.Set("Job-Token", j.Token)
	req.Header.Set("Content-Range", fmt.Sprintf("%d-%d", j.PaasRunner.TraceOffset, j.PaasRunner.TraceOffset+int64(len(line))-1))
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
	body, _ := json.Marshal(map[string]any{"token": j.Token, "state": "success", "exit_code": 0})
	req, _ = http.NewRequest(http.MethodPut, base, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		if t != nil {
			t.Errorf("final update: %v", err)
		}
		return
	}
	resp.Body.Close()
}

// appOf returns the applications of a job (by the name's job id suffix).
func (e *cleverEnv) appsOf(id int64) []cleverdockertest.App {
	var out []cleverdockertest.App
	for _, a := range e.cc.Apps("") {
		if strings.HasPrefix(a.Name, "hpd-job-") && strings.HasSuffix(a.Name, fmt.Sprintf("-%d", id)) {
			out = append(out, a)
		}
	}
	return out
}

func (e *cleverEnv) waitNoApps() {
	e.t.Helper()
	e.cc.WaitFor(procWait, "every application deleted", func() bool { return len(e.cc.Apps("")) == 0 })
}

func (e *cleverEnv) waitFinal(id int64) string {
	e.t.Helper()
	e.gl.WaitFor(procWait, fmt.Sprintf("job %d to end", id), func(s *coordinatortest.Server) bool { return jobFinal(s.StatusOf(id)) })
	return e.gl.Job(id).Status
}

func TestCleverEndToEnd(t *testing.T) {
	e := newCleverEnv(t, fixedOrg)
	var checked = make(chan map[string][]byte, 4)
	e.cc.OnPush = func(a cleverdockertest.App, files map[string][]byte) {
		checked <- files
		simulateInner(t, e.gl.URL, files)
	}
	p := e.start("")
	var ids []int64
	for i := 0; i < 2; i++ {
		ids = append(ids, e.gl.Enqueue(e.token, nil).ID)
	}
	for _, id := range ids {
		if st := e.waitFinal(id); st != "success" {
			t.Fatalf("job %d: %s\n%s", id, st, e.gl.TraceOf(id))
		}
	}
	e.waitNoApps()
	for _, id := range ids {
		if !e.gl.TraceContains(id, "inner runner: running job") || !e.gl.TraceContains(id, "provisioning a clever-docker host") {
			t.Fatalf("trace of %d: %q", id, e.gl.TraceOf(id))
		}
	}
	if n := e.cc.Count("POST /organisations/:id/applications"); n != 2 {
		t.Fatalf("%d creates for 2 jobs", n)
	}
	for i := 0; i < 2; i++ {
		files := <-checked
		if !bytes.Contains(files["Dockerfile"], []byte("FROM registry.example/paas-runner-host:1\n")) || !bytes.Contains(files["runner.toml"], []byte(`image = "alpine"`)) {
			t.Fatalf("pushed %s\n%s", files["Dockerfile"], files["runner.toml"])
		}
		if bytes.Contains(files["runner.toml"], []byte(e.token)) {
			t.Fatal("runner token pushed")
		}
	}
	// env of the apps, as PUT
	var puts int
	for _, r := range e.cc.Requests() {
		if r.Route == "PUT /organisations/:id/applications/:app/env" {
			puts++
			if string(r.Body) != `{"CC_ENABLE_HEPTAPOD_RUNNER":"true","CC_MOUNT_DOCKER_SOCKET":"true"}` {
				t.Fatalf("env %s", r.Body)
			}
		}
	}
	if puts != 2 {
		t.Fatalf("%d env PUTs", puts)
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	e.checkSecrets(p, ccToken)
}

// checkSecrets greps every Clever request body, every pushed repository,
// the state file and the daemon log for the secrets.
func (e *cleverEnv) checkSecrets(p *proc, secrets ...string) {
	e.t.Helper()
	var blobs []struct {
		what string
		data []byte
	}
	add := func(what string, b []byte) {
		blobs = append(blobs, struct {
			what string
			data []byte
		}{what, b})
	}
	for _, r := range e.cc.Requests() {
		add("request body "+r.Method+" "+r.Path, r.Body)
		add("request path "+r.Path, []byte(r.Path+"?"+r.RawQuery))
	}
	filepath.Walk(e.dir, func(path string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && filepath.Base(path) != "cc.token" && filepath.Base(path) != "config.toml" {
			b, _ := os.ReadFile(path)
			add(path, b)
		}
		return nil
	})
	if p != nil {
		add("daemon log", []byte(p.log()))
	}
	for _, id := range e.gl.Jobs() {
		add(fmt.Sprintf("job %d log", id.ID), id.Trace)
	}
	for _, b := range blobs {
		for _, s := range secrets {
			if bytes.Contains(b.data, []byte(s)) {
				e.t.Fatalf("secret %.6s… found in %s", s, b.what)
			}
		}
	}
}

func TestCleverPushedReposHoldNoSecret(t *testing.T) {
	e := newCleverEnv(t, fixedOrg)
	// keep the apps (and their repositories) to grep them
	var pushedDirs = make(chan string, 1)
	e.cc.OnPush = func(a cleverdockertest.App, files map[string][]byte) {
		var walkErr error
		filepath.Walk(e.cc.RepoDir(a.ID), func(path string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() {
				b, _ := os.ReadFile(path)
				if bytes.Contains(b, []byte(ccToken)) || bytes.Contains(b, []byte(e.token)) {
					walkErr = fmt.Errorf("secret in %s", path)
				}
			}
			return nil
		})
		// the objects above are compressed: read the commit and its tree too
		tree, _, msg, err := e.cc.Pushed(a.ID)
		if err != nil {
			walkErr = err
		}
		for name, b := range tree {
			if bytes.Contains(b, []byte(ccToken)) || bytes.Contains(b, []byte(e.token)) {
				walkErr = fmt.Errorf("secret in the pushed %s", name)
			}
		}
		if strings.Contains(msg, ccToken) || len(tree) != 3 {
			walkErr = fmt.Errorf("pushed commit %q with %d files", msg, len(tree))
		}
		if walkErr != nil {
			t.Error(walkErr)
		}
		pushedDirs <- a.ID
		simulateInner(t, e.gl.URL, files)
	}
	e.start("")
	q := e.gl.Enqueue(e.token, nil)
	<-pushedDirs
	e.waitFinal(q.ID)
	e.waitNoApps()
}

func TestCleverCancelDuringProvisioning(t *testing.T) {
	e := newCleverEnv(t, fixedOrg)
	e.cc.HoldRepos = true // the launch waits for the repository
	p := e.start("")
	q := e.gl.Enqueue(e.token, nil)
	e.cc.WaitFor(procWait, "the app", func() bool { return len(e.appsOf(q.ID)) == 1 && e.appsOf(q.ID)[0].Gets > 0 })
	e.gl.Cancel(q.ID)
	e.waitNoApps()
	if st := e.waitFinal(q.ID); st != "canceled" {
		t.Fatalf("status %s", st)
	}
	if n := e.cc.Count("POST /organisations/:id/applications"); n != 1 {
		t.Fatalf("%d creates", n)
	}
	p.signal(syscall.SIGTERM)
	p.wait(t)
}

// TestCleverStateBeforeCreate: when Clever receives the create, the
// application's name is in the state file already (write-ahead), and
// nothing of the cc_* configuration reaches the host: not its env, not
// the pushed tree.
func TestCleverStateBeforeCreate(t *testing.T) {
	e := newCleverEnv(t, fixedOrg)
	seen := make(chan string, 1)
	e.cc.CreateAnswer = func(view map[string]any) {
		// the state as a daemon starting now would read it (file and
		// journal)
		jobs, err := state.Read(e.state)
		name, _ := view["name"].(string)
		found := false
		for _, j := range jobs {
			found = found || bytes.Contains(j.Resource, []byte(`"`+name+`"`))
		}
		if err != nil || !found {
			t.Errorf("state at the create of %s: %v %+v", name, err, jobs)
		}
		select {
		case seen <- name:
		default:
		}
	}
	pushed := make(chan map[string][]byte, 1)
	e.cc.OnPush = func(a cleverdockertest.App, files map[string][]byte) {
		pushed <- files
		simulateInner(t, e.gl.URL, files)
	}
	p := e.start("")
	q := e.gl.Enqueue(e.token, nil)
	if name := <-seen; name != fmt.Sprintf("hpd-job-%s-%d", config.RunnerID(e.token), q.ID) {
		t.Fatalf("application name %s", name)
	}
	files := <-pushed
	for n, b := range files {
		if bytes.Contains(b, []byte("cc_")) || bytes.Contains(b, []byte(ccOrga)) {
			t.Fatalf("cc_* configuration in the pushed %s:\n%s", n, b)
		}
	}
	if st := e.waitFinal(q.ID); st != "success" {
		t.Fatalf("job: %s", st)
	}
	for _, r := range e.cc.Requests() {
		if r.Route == "PUT /organisations/:id/applications/:app/env" && (bytes.Contains(r.Body, []byte(ccToken)) || bytes.Contains(r.Body, []byte(e.token))) {
			t.Fatalf("a secret in the host's env: %s", r.Body)
		}
	}
	p.signal(syscall.SIGTERM)
	p.wait(t)
}

func TestCleverCrashAfterCreateBeforeHandleSaved(t *testing.T) {
	e := newCleverEnv(t, fixedOrg)
	// the env PUT hangs: the app exists, Provision has not returned, its
	// id is not in the state file
	e.cc.Slow("^PUT /organisations/:id/applications/:app/env$", time.Hour, -1)
	p := e.start("")
	q := e.gl.Enqueue(e.token, nil)
	e.cc.WaitFor(procWait, "the env PUT", func() bool { return e.cc.Count("PUT /organisations/:id/applications/:app/env") == 1 })
	p.cmd.Process.Kill()
	p.wait(t)
	e.cc.ClearFaults()
	p = e.start("")
	if st := e.waitFinal(q.ID); st != "success" {
		t.Fatalf("job: %s\n%s", st, e.gl.TraceOf(q.ID))
	}
	e.waitNoApps()
	if n := e.cc.Count("POST /organisations/:id/applications"); n != 1 {
		t.Fatalf("%d applications created for one job", n)
	}
	if !strings.Contains(p.log(), "adopting the job's existing application") {
		t.Fatalf("log:\n%s", p.log())
	}
	p.signal(syscall.SIGTERM)
	p.wait(t)
}

func TestCleverCrashAfterProvisionBeforePush(t *testing.T) {
	e := newCleverEnv(t, fixedOrg)
	e.cc.HoldRepos = true
	p := e.start("")
	q := e.gl.Enqueue(e.token, nil)
	e.cc.WaitFor(procWait, "the repository wait", func() bool { a := e.appsOf(q.ID); return len(a) == 1 && a[0].Gets > 0 })
	p.cmd.Process.Kill()
	p.wait(t)
	e.cc.ReleaseRepos()
	p = e.start("")
	if st := e.waitFinal(q.ID); st != "success" {
		t.Fatalf("job: %s", st)
	}
	e.waitNoApps()
	// lists: one before the create, one reap at each start; none by the
	// resumed Provision, which has the app id
	if n, m := e.cc.Count("POST /organisations/:id/applications"), e.cc.Count("GET /organisations/:id/applications"); n != 1 || m != 3 {
		t.Fatalf("%d creates, %d lists: the restart should resume from the saved app id", n, m)
	}
	p.signal(syscall.SIGTERM)
	p.wait(t)
}

// TestCleverHostGoneWhileDown: a job's application removed while the
// daemon was down fails its job at the restart, not at GitLab's timeout;
// one still there keeps running.
func TestCleverHostGoneWhileDown(t *testing.T) {
	e := newCleverEnv(t, fixedOrg)
	pushed := make(chan cleverdockertest.App, 2)
	e.cc.OnPush = func(a cleverdockertest.App, files map[string][]byte) { pushed <- a } // the jobs keep running
	p := e.start("")
	gone, kept := e.gl.Enqueue(e.token, nil), e.gl.Enqueue(e.token, nil)
	apps := map[string]cleverdockertest.App{}
	for i := 0; i < 2; i++ {
		a := <-pushed
		apps[a.Name] = a
	}
	p.waitLog(t, "both jobs launched", "job launched", fmt.Sprint(gone.ID))
	p.waitLog(t, "both jobs launched", "job launched", fmt.Sprint(kept.ID))
	p.signal(syscall.SIGTERM)
	p.wait(t)
	e.cc.RemoveApp(apps[fmt.Sprintf("hpd-job-%s-%d", config.RunnerID(e.token), gone.ID)].ID)
	e.cc.OnPush = func(cleverdockertest.App, map[string][]byte) {}
	p = e.start("")
	if st := e.waitFinal(gone.ID); st != "failed" || !e.gl.TraceContains(gone.ID, "disappeared") {
		t.Fatalf("job of the removed app: %s %q", st, e.gl.TraceOf(gone.ID))
	}
	if r := e.gl.Job(gone.ID).FailureReason; r != "runner_system_failure" {
		t.Fatalf("failure reason %s", r)
	}
	if st := e.gl.StatusOf(kept.ID); st != "running" {
		t.Fatalf("the other job: %s", st)
	}
	p.signal(syscall.SIGTERM)
	p.wait(t)
}

func TestCleverFlavorErrors(t *testing.T) {
	e := newCleverEnv(t, fixedOrg+"\ncc_max_flavor = \"L\"")
	p := e.start("")
	vars := func(v string) map[string]any {
		return map[string]any{"variables": []map[string]any{{"key": "CI_CLEVER_CLOUD_FLAVOR", "value": v, "public": true}}}
	}
	big := e.gl.Enqueue(e.token, vars("XL"))
	unknown := e.gl.Enqueue(e.token, vars("HUGE"))
	ok := e.gl.Enqueue(e.token, vars("S"))
	for _, c := range []struct {
		id   int64
		want string
	}{
		{big.ID, `flavor "XL" is bigger than this runner's maximum L (set CI_CLEVER_CLOUD_FLAVOR to one of: XS, S, M, L)`},
		{unknown.ID, `flavor "HUGE" is not available (set CI_CLEVER_CLOUD_FLAVOR to one of: XS, S, M, L)`},
	} {
		if st := e.waitFinal(c.id); st != "failed" || !e.gl.TraceContains(c.id, c.want) {
			t.Fatalf("job %d: %s %q", c.id, st, e.gl.TraceOf(c.id))
		}
		if r := e.gl.Job(c.id).FailureReason; r != "script_failure" {
			t.Fatalf("failure reason %s", r)
		}
	}
	if st := e.waitFinal(ok.ID); st != "success" {
		t.Fatalf("ok job: %s", st)
	}
	e.waitNoApps()
	if n := e.cc.Count("POST /organisations/:id/applications"); n != 1 {
		t.Fatalf("%d creates", n)
	}
	p.signal(syscall.SIGTERM)
	p.wait(t)
}

// TestCleverAPIErrorInJobLog: a create Clever refuses (400, its Message
// body) fails the job with Clever's id and message and the call in the job
// log and the daemon log; a wrong cc_zone is named at start.
func TestCleverAPIErrorInJobLog(t *testing.T) {
	e := newCleverEnv(t, fixedOrg+"\ncc_zone = \"mars\"")
	p := e.start("")
	j := e.gl.Enqueue(e.token, nil)
	want := "Clever Cloud API POST /organisations/" + ccOrga + "/applications: HTTP 400 (id 400): Unknown zone mars"
	if st := e.waitFinal(j.ID); st != "failed" || !e.gl.TraceContains(j.ID, want) {
		t.Fatalf("job %d: %s %q", j.ID, st, e.gl.TraceOf(j.ID))
	}
	p.signal(syscall.SIGTERM)
	p.wait(t)
	if log := p.log(); !strings.Contains(log, want) || !strings.Contains(log, `cc_zone \"mars\" is not a Clever Cloud zone`) {
		t.Fatalf("daemon log:\n%s", log)
	}
	if n := len(e.cc.Apps("")); n != 0 {
		t.Fatalf("%d apps", n)
	}
}

func TestCleverMultiTenant(t *testing.T) {
	e := newCleverEnv(t, "cc_multi_tenant = true\ncc_gitlab_namespace_attributes_token_env = \"TEST_CC_ATTR_TOKEN\"")
	e.extraEnv = []string{"TEST_CC_ATTR_TOKEN=gitlab-admin-attr-token"}
	const orgB, tokB = "orga_beta", "tenant-beta-secret"
	e.cc.AddOrg(orgB, tokB)
	e.front.SetGroup("acme", map[string]string{"cc_orga_id": ccOrga, "cc_orga_token": ccToken})
	e.front.SetGroup("beta", map[string]string{"cc_orga_id": orgB, "cc_orga_token": tokB})
	e.front.SetGroup("unset", map[string]string{"unrelated": "x"})
	e.front.SetGroup("revoked", map[string]string{"cc_orga_id": orgB, "cc_orga_token": "revoked-token"})
	p := e.start("")
	ns := func(n string) map[string]any {
		return map[string]any{"variables": []map[string]any{{"key": "CI_PROJECT_ROOT_NAMESPACE", "value": n, "public": true}}}
	}
	a := e.gl.Enqueue(e.token, ns("acme"))
	b := e.gl.Enqueue(e.token, ns("beta"))
	unset := e.gl.Enqueue(e.token, ns("unset"))
	revoked := e.gl.Enqueue(e.token, ns("revoked"))
	for _, id := range []int64{a.ID, b.ID} {
		if st := e.waitFinal(id); st != "success" {
			t.Fatalf("job %d: %s %q", id, st, e.gl.TraceOf(id))
		}
	}
	for _, c := range []struct {
		id   int64
		want string
	}{
		{unset.ID, `GitLab group "unset" has no custom attribute cc_orga_id nor cc_orga_token`},
		{revoked.ID, `the Clever Cloud token of GitLab group "revoked" (custom attribute cc_orga_token) was refused`},
	} {
		if st := e.waitFinal(c.id); st != "failed" || !e.gl.TraceContains(c.id, c.want) {
			t.Fatalf("job %d: %s %q", c.id, st, e.gl.TraceOf(c.id))
		}
	}
	e.waitNoApps()
	var orgs []string
	for _, r := range e.cc.Requests() {
		if r.Method == "POST" {
			orgs = append(orgs, strings.Split(r.Path, "/")[3])
		}
	}
	if strings.Join(orgs, " ") != ccOrga+" "+orgB && strings.Join(orgs, " ") != orgB+" "+ccOrga {
		t.Fatalf("apps created in %v", orgs)
	}
	p.signal(syscall.SIGTERM)
	p.wait(t)
	e.checkSecrets(p, ccToken, tokB, "gitlab-admin-attr-token")
}

func TestCleverServerErrorsForAWhile(t *testing.T) {
	e := newCleverEnv(t, fixedOrg)
	e.extraEnv = []string{"PAAS_RUNNER_RETRY_MIN=20ms"}
	e.cc.Fail("^(GET|POST|PUT) /organisations", 500, 30)
	e.cc.Fail("^GET /products", 503, 5)
	p := e.start("")
	var ids []int64
	for i := 0; i < 3; i++ {
		ids = append(ids, e.gl.Enqueue(e.token, nil).ID)
	}
	for _, id := range ids {
		if st := e.waitFinal(id); st != "success" {
			t.Fatalf("job %d: %s %q", id, st, e.gl.TraceOf(id))
		}
	}
	e.waitNoApps()
	created := 0
	for _, r := range e.cc.Requests() {
		if r.Method == "POST" && r.Status == 200 {
			created++
		}
	}
	if created != 3 {
		t.Fatalf("%d apps created for 3 jobs", created)
	}
	p.signal(syscall.SIGTERM)
	p.wait(t)
}

func TestCleverBadConfiguration(t *testing.T) {
	e := newCleverEnv(t, "")
	cfg, _ := os.ReadFile(e.config)
	for _, c := range []struct{ edit, want string }{
		{"", "runners[0].cc_orga_id: required unless cc_multi_tenant = true"},
		{fixedOrg + "\ncc_zone = \"\"", `runners[0].cc_zone: must not be empty`},
		{"cc_orga_id = \"o\"\ncc_token_file = \"missing.token\"", "runners[0].cc_token_file: cannot read"},
	} {
		body := strings.Replace(string(cfg), "cc_deployment_repo_wait_step", c.edit+"\ncc_deployment_repo_wait_step", 1)
		path := filepath.Join(e.dir, "bad.toml")
		os.WriteFile(path, []byte(body), 0o600)
		code, stderr := runOnce(t, nil, path)
		if code != 2 || !strings.Contains(stderr, c.want) || !strings.Contains(stderr, path) {
			t.Fatalf("%q: exit %d\n%s", c.edit, code, stderr)
		}
	}
	// a bad cc_api_url
	body := strings.Replace(strings.Replace(string(cfg), e.cc.APIURL(), "not a url", 1), "cc_deployment_repo_wait_step", fixedOrg+"\ncc_deployment_repo_wait_step", 1)
	os.WriteFile(filepath.Join(e.dir, "bad.toml"), []byte(body), 0o600)
	if code, stderr := runOnce(t, nil, filepath.Join(e.dir, "bad.toml")); code != 2 || !strings.Contains(stderr, `bad.toml:11: runners[0].cc_api_url: "not a url" is not an http:// or https:// URL`) {
		t.Fatalf("bad cc_api_url: exit %d\n%s", code, stderr)
	}
	// unreachable API at start: the daemon runs, says so, jobs retry
	body = strings.Replace(string(cfg), e.cc.APIURL(), "http://127.0.0.1:1/v2", 1)
	body = strings.Replace(body, "cc_deployment_repo_wait_step", fixedOrg+"\ncc_deployment_repo_wait_step", 1)
	incomplete := body + "  [runners.cache]\n  Type = \"s3\"\n  [runners.cache.s3]\n  AccessKey = \"AK\"\n  SecretKey = \"SK\"\n"
	os.WriteFile(e.config, []byte(incomplete), 0o600)
	if code, stderr := runOnce(t, nil, e.config); code != 2 || !strings.Contains(stderr, `: runners[0].cache.s3: Type = "s3" needs ServerAddress, BucketName in [runners.cache.s3]`) {
		t.Fatalf("incomplete S3 cache: exit %d\n%s", code, stderr)
	}
	os.WriteFile(e.config, []byte(body), 0o600)
	p := e.start("", "--poll-cycles", "2")
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if !strings.Contains(p.log(), "checking the Clever Cloud products failed") {
		t.Fatalf("log:\n%s", p.log())
	}
}

// BenchmarkCleverAcquireToPush: through the real daemon, the time from the
// fake GitLab handing a job out to the fake Clever git host receiving the
// job's commit (create, env, repository check, push), one job at a time,
// caches warm; the Clever API calls per job (reaps included); and the time
// from the job's final report to its application's deletion
// (check_interval = 0.05 s: the daemon learns the end by polling GitLab).
func BenchmarkCleverAcquireToPush(b *testing.B) {
	gl := coordinatortest.New(b)
	cc := cleverdockertest.New(b)
	cc.GitUser = "Jenkins"
	cc.AddOrg(ccOrga, ccToken)
	tok := "glrt-clbench-0123456789"
	gl.AddRunner(tok)
	dir := b.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	os.WriteFile(filepath.Join(dir, "cc.token"), []byte(ccToken), 0o600)
	writeCleverConfig(b, cfg, filepath.Join(dir, "state.json"), gl.URL, tok, cc.APIURL(), fixedOrg)
	pushed := make(chan time.Time, 1)
	cc.OnPush = func(a cleverdockertest.App, files map[string][]byte) {
		pushed <- time.Now()
		simulateInner(nil, gl.URL, files)
	}
	cmd := exec.Command(binary, cfg)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	var lags []time.Duration
	one := func() time.Duration {
		q := gl.Enqueue(tok, nil)
		at := <-pushed
		gl.WaitFor(procWait, "job end", func(s *coordinatortest.Server) bool { return jobFinal(s.StatusOf(q.ID)) })
		cc.WaitFor(procWait, "app deleted", func() bool { return len(cc.Apps("")) == 0 })
		lags = append(lags, time.Since(gl.Job(q.ID).FinishedAt))
		return at.Sub(gl.Job(q.ID).AcquiredAt)
	}
	one() // warm: products fetched, start-up reap done
	calls := cc.Total()
	lags = nil
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		lat = append(lat, one())
	}
	b.StopTimer()
	sort.Slice(lags, func(i, k int) bool { return lags[i] < lags[k] })
	b.ReportMetric(float64(lags[len(lags)/2].Microseconds())/1000, "end-to-deleted-p50-ms")
	b.ReportMetric(float64(lags[len(lags)*9/10].Microseconds())/1000, "end-to-deleted-p90-ms")
	sort.Slice(lat, func(i, k int) bool { return lat[i] < lat[k] })
	b.ReportMetric(float64(cc.Total()-calls)/float64(b.N), "api-calls/job")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*9/10].Microseconds())/1000, "p90-ms")
}

// deployWithDocker does what Clever Cloud does with a pushed Docker
// application, on the local engine: build the pushed tree, run it with the
// Docker socket (CC_MOUNT_DOCKER_SOCKET) on the host network.
func deployWithDocker(t *testing.T, cli *client.Client, label string, a cleverdockertest.App, files map[string][]byte) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, data := range files {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg})
		tw.Write(data)
	}
	tw.Close()
	tag := "paas-runner-clevertest:" + strings.ToLower(strings.TrimPrefix(a.ID, "app_"))
	ctx := context.Background()
	resp, err := cli.ImageBuild(ctx, &buf, build.ImageBuildOptions{Tags: []string{tag}, Remove: true, Labels: map[string]string{label: "true"}})
	if err != nil {
		t.Errorf("build: %v", err)
		return
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if bytes.Contains(out, []byte(`"error"`)) {
		t.Errorf("build: %s", out)
		return
	}
	var env []string
	for k, v := range a.Env {
		env = append(env, k+"="+v)
	}
	hc := &container.HostConfig{NetworkMode: "host"}
	if a.Env["CC_MOUNT_DOCKER_SOCKET"] == "true" {
		hc.Binds = []string{"/var/run/docker.sock:/var/run/docker.sock"}
	}
	c, err := cli.ContainerCreate(ctx, &container.Config{Image: tag, Env: env, Labels: map[string]string{label: "true"}}, hc, nil, nil, "")
	if err != nil {
		t.Errorf("create: %v", err)
		return
	}
	if err := cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		t.Errorf("start: %v", err)
	}
}

// TestCleverDeployedWithDocker: the pushed tree really runs. The fake Clever
// builds and starts it on the local engine FROM a Heptapod-shaped inner
// image (internal/testinner as /usr/bin/gitlab-runner), whose inner runner
// reads runner.toml and job.json and reports the job to GitLab itself.
func TestCleverDeployedWithDocker(t *testing.T) {
	cli := dockerInner(t)
	label := fmt.Sprintf("paas-runner.clevertest-%d", os.Getpid())
	clean := func() {
		f := filters.NewArgs(filters.Arg("label", label+"=true"))
		cs, _ := cli.ContainerList(context.Background(), container.ListOptions{All: true, Filters: f})
		for _, c := range cs {
			cli.ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true})
		}
		localdockertest.RemoveImagesLabelled(cli, label+"=true")
	}
	t.Cleanup(clean)
	e := newCleverEnv(t, fixedOrg)
	body, _ := os.ReadFile(e.config)
	os.WriteFile(e.config, bytes.Replace(body, []byte(`inner_image = "registry.example/paas-runner-host:1"`), []byte(fmt.Sprintf("inner_image = %q", innerTag)), 1), 0o600)
	e.cc.OnPush = func(a cleverdockertest.App, files map[string][]byte) { deployWithDocker(t, cli, label, a, files) }
	p := e.start("")
	ok := e.gl.Enqueue(e.token, nil)
	failed := e.gl.Enqueue(e.token, map[string]any{"variables": []map[string]any{{"key": "TEST_INNER", "value": "failed", "public": true}}})
	if st := e.waitFinal(ok.ID); st != "success" || !e.gl.TraceContains(ok.ID, "testinner: running job") {
		t.Fatalf("job: %s %q", st, e.gl.TraceOf(ok.ID))
	}
	if st := e.waitFinal(failed.ID); st != "failed" || e.gl.Job(failed.ID).FailureReason != "script_failure" {
		t.Fatalf("failing job: %s %s", st, e.gl.Job(failed.ID).FailureReason)
	}
	e.waitNoApps()
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// TestCleverHeptapodStateFile: a Heptapod PAAS Runner state file with a
// launched clever-docker job; once GitLab says the job ended, its
// application (Heptapod's handle: id, no name) is deleted.
func TestCleverHeptapodStateFile(t *testing.T) {
	e := newCleverEnv(t, fixedOrg)
	legacy := "Cl3vr123abcdefghijkl"
	body, _ := os.ReadFile(e.config)
	os.WriteFile(e.config, bytes.Replace(body, []byte(e.token), []byte(legacy), 1), 0o600)
	e.gl.AddRunner(legacy)
	j := e.gl.AddRunning(legacy)
	a := e.cc.AddApp(ccOrga, fmt.Sprintf("hpd-job-Cl3vr123-%d", j.ID), nil, time.Now().Add(-time.Hour))
	orphan := e.cc.AddApp(ccOrga, "hpd-job-Cl3vr123-1", nil, time.Now()) // Heptapod's leftover: reaped at start
	state := fmt.Sprintf(`{"launched": [{"runner_name": "Cl3vr123", "job_id": %d, "token": %q, "trace_offset": 0, "expected_weight": 13.45,
  "paas_resource": {"id": %q, "gitlab_namespace": null, "weight": 13.45, "launched": true, "deploy_url": "https://push.example/%s.git"}}],
 "to_decommission": [], "standby_resources": [], "pending": []}`, j.ID, j.Token, a.ID, a.ID)
	os.WriteFile(e.state, []byte(state), 0o600)
	p := e.start("")
	e.cc.WaitFor(procWait, "the leftover reaped", func() bool { return len(e.cc.AppNamed(orphan.Name)) == 0 })
	if len(e.cc.AppNamed(a.Name)) != 1 {
		t.Fatal("the tracked job's application was reaped")
	}
	e.gl.Finish(j.ID, "success")
	e.cc.WaitFor(procWait, "the app deleted", func() bool { return len(e.cc.AppNamed(a.Name)) == 0 })
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// TestCleverS3Cache: with an S3 [runners.cache], the daemon hands each
// Clever host presigned URLs of its job's cache keys (a real S3 protocol
// server stores what the host puts), and the S3 secret key appears in no
// request, pushed file, state file, log line or job log.
// TestCleverHeptapodPendingJob: a pending job of a Heptapod state file
// whose application was provisioned but not pushed is launched, as
// Heptapod would at its restart.
func TestCleverHeptapodPendingJob(t *testing.T) {
	e := newCleverEnv(t, fixedOrg)
	legacy := "Cl3vr123abcdefghijkl"
	body, _ := os.ReadFile(e.config)
	os.WriteFile(e.config, bytes.Replace(body, []byte(e.token), []byte(legacy), 1), 0o600)
	e.gl.AddRunner(legacy)
	j := e.gl.AddRunning(legacy)
	a := e.cc.AddApp(ccOrga, fmt.Sprintf("hpd-job-Cl3vr123-%d", j.ID), nil, time.Now().Add(-time.Hour))
	state := fmt.Sprintf(`{"launched": [], "to_decommission": [], "standby_resources": [],
 "pending": [[{"runner_name": "Cl3vr123", "job_id": %d, "token": %q, "trace_offset": 0, "expected_weight": 13.45,
   "paas_resource": {"id": %q, "gitlab_namespace": null, "weight": 13.45, "launched": false, "deploy_url": "https://push.example/%s.git"}},
  {"id": %d, "token": %q, "variables": [], "image": {"name": "alpine"}}]]}`, j.ID, j.Token, a.ID, a.ID, j.ID, j.Token)
	os.WriteFile(e.state, []byte(state), 0o600)
	p := e.start("")
	if st := e.waitFinal(j.ID); st != "success" || !e.gl.TraceContains(j.ID, "inner runner: running job") {
		t.Fatalf("job: %s %q", st, e.gl.TraceOf(j.ID))
	}
	e.waitNoApps()
	if n := e.cc.Count("POST /organisations/:id/applications"); n != 0 {
		t.Fatalf("%d applications created for a provisioned job", n)
	}
	p.signal(syscall.SIGTERM)
	p.wait(t)
}

func TestCleverS3Cache(t *testing.T) {
	const s3Secret = "v0tdpjgpsDRqaSvIndvHAXFmjbpEd958gbZuO7yv"
	be := s3mem.New()
	srv := httptest.NewServer(gofakes3.New(be).Server())
	t.Cleanup(srv.Close)
	be.CreateBucket("heptapod-ci")
	e := newCleverEnv(t, fixedOrg)
	body, _ := os.ReadFile(e.config)
	body = append(body, fmt.Sprintf("  [runners.cache]\n  Type = \"s3\"\n  [runners.cache.s3]\n  ServerAddress = %q\n  AccessKey = \"dEA7gjmYM98gobVi6Y1x\"\n  SecretKey = %q\n  BucketName = \"heptapod-ci\"\n  Insecure = true\n",
		strings.TrimPrefix(srv.URL, "http://"), s3Secret)...)
	os.WriteFile(e.config, body, 0o600)
	stored := make(chan int, 1)
	e.cc.OnPush = func(a cleverdockertest.App, files map[string][]byte) {
		var j struct {
			PaasRunner struct {
				Cache map[string]struct {
					Put string `json:"put_url"`
				} `json:"cache"`
			} `json:"paas_runner"`
		}
		json.Unmarshal(files["job.json"], &j)
		code := 0
		if u := j.PaasRunner.Cache["deps-main"].Put; u != "" {
			req, _ := http.NewRequest(http.MethodPut, u, strings.NewReader("cache archive"))
			if resp, err := http.DefaultClient.Do(req); err == nil {
				code = resp.StatusCode
				resp.Body.Close()
			}
		}
		stored <- code
		simulateInner(t, e.gl.URL, files)
	}
	p := e.start("")
	q := e.gl.Enqueue(e.token, map[string]any{
		"variables": []map[string]any{{"key": "CI_COMMIT_REF_SLUG", "value": "main", "public": true}},
		"cache":     []map[string]any{{"key": "deps-$CI_COMMIT_REF_SLUG", "paths": []string{"vendor/"}, "policy": "pull-push", "when": "on_success"}},
	})
	if code := <-stored; code != 200 {
		t.Fatalf("the host could not store its cache: %d", code)
	}
	if st := e.waitFinal(q.ID); st != "success" {
		t.Fatalf("job: %s", st)
	}
	objs, err := be.ListBucket("heptapod-ci", nil, gofakes3.ListBucketPage{})
	if err != nil || len(objs.Contents) != 1 || !strings.HasSuffix(objs.Contents[0].Key, "/project/1/deps-main") {
		t.Fatalf("bucket: %+v %v", objs, err)
	}
	e.waitNoApps()
	p.signal(syscall.SIGTERM)
	p.wait(t)
	e.checkSecrets(p, ccToken, s3Secret)
}

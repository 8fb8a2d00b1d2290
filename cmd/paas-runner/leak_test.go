package main_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors/cleverdocker/cleverdockertest"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
	"gitlab.com/paas-runner/paas-runner/internal/gitserve"
	"gitlab.com/paas-runner/paas-runner/internal/labels"
)

// publicPrefixes are the well-known starts of GitLab's tokens: they say
// what a token is, not what it is worth, and a shortened token keeps one.
var publicPrefixes = []string{"glrt-", "glcbt-", "glpat-", "GR1348941"}

// minLeak is the shortest piece of a secret that counts as a leak: logs
// may name a token by its first few characters (logging.ShortToken keeps
// 8 after the prefix), never by more.
const minLeak = 12

// leaks lists the secrets that appear in text whole or by any piece of
// minLeak characters or more of what follows their public prefix.
func leaks(text string, secrets map[string]string) []string {
	var out []string
	for name, s := range secrets {
		body := s
		for _, p := range publicPrefixes {
			if strings.HasPrefix(body, p) {
				body = body[len(p):]
				break
			}
		}
		found := strings.Contains(text, s)
		for i := 0; !found && i+minLeak <= len(body); i++ {
			found = strings.Contains(text, body[i:i+minLeak])
		}
		if found {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

func TestLeaksFindsPieces(t *testing.T) {
	secrets := map[string]string{"runner": "glrt-0123456789abcdefghij", "s3": "ABCDEFGHIJKLMNOPQRSTUVWX"}
	for text, want := range map[string]string{
		"token glrt-01234567 (shortened)": "",
		"token glrt-0123456789abcdefghij": "runner",
		"...56789abcdefg...":              "runner",
		"key FGHIJKLMNOPQ in a URL":       "s3",
		"key ABCDEFGHIJK and LMNOPQRSTUV": "",
	} {
		if got := strings.Join(leaks(text, secrets), ","); got != want {
			t.Errorf("leaks(%q) = %q, want %q", text, got, want)
		}
	}
}

func randomSecret(t *testing.T, prefix string, n int) string {
	b := make([]byte, n/2)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return prefix + hex.EncodeToString(b)
}

// lockedBuffer collects output written by several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// hostLogs follows the output of every container of the given runners (the
// hosts, where the inner runner runs) from its creation to its end.
type hostLogs struct {
	mu   sync.Mutex
	logs map[string]*lockedBuffer // container name → output
	wg   sync.WaitGroup
}

func followHosts(ctx context.Context, t *testing.T, cli *client.Client, runners ...string) *hostLogs {
	h := &hostLogs{logs: map[string]*lockedBuffer{}}
	f := filters.NewArgs(filters.Arg("label", localdocker.LabelManaged+"=true"), filters.Arg("label", labels.LabelRole+"="+labels.RoleHost))
	want := map[string]bool{}
	for _, r := range runners {
		want[r] = true
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for ctx.Err() == nil {
			cs, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
			if err == nil {
				for _, c := range cs {
					// a host is created stopped: its output starts when it does
					if !want[c.Labels[localdocker.LabelRunner]] || c.State == container.StateCreated {
						continue
					}
					name := c.Labels[localdocker.LabelRunner] + "-" + c.Labels[localdocker.LabelJobID]
					h.mu.Lock()
					_, seen := h.logs[name]
					if !seen {
						buf := &lockedBuffer{}
						h.logs[name] = buf
						h.wg.Add(1)
						go func(id string, running bool) {
							defer h.wg.Done()
							// its whole output since it started, up to its end
							rc, err := cli.ContainerLogs(context.Background(), id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Follow: running})
							if err != nil {
								fmt.Fprintf(buf, "(logs: %v)\n", err)
								return
							}
							defer rc.Close()
							if _, err := stdcopy.StdCopy(buf, buf, rc); err != nil {
								fmt.Fprintf(buf, "(logs: %v)\n", err)
							}
						}(c.ID, c.State == container.StateRunning)
					}
					h.mu.Unlock()
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond): // listing is enough here: a host lives for seconds
			}
		}
	}()
	return h
}

// wait returns every host's output once every followed container ended.
func (h *hostLogs) wait() map[string]string {
	h.wg.Wait()
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]string{}
	for id, b := range h.logs {
		out[id] = b.String()
	}
	return out
}

// TestNoSecretInAnyOutput is a full run with the real daemon, inner
// runner and local-docker hosts (jobs that pass, fail, use a service,
// produce an artifact, use an S3 cache, share a lock, take a pool lock,
// wait on a pipeline guard), plus clever-docker runners against the fake
// Clever Cloud, at log level debug in both log formats. Every secret of
// the run — runner tokens (glrt- and legacy), job tokens, a registry
// password, the S3 secret key, the guard API token, the locks repository's
// password, the Clever Cloud tokens — is looked for in all the output:
// the daemon's stdout and stderr, the hosts' output (the inner runner's),
// every job log GitLab got, paas-runner status (from the daemon and from
// the state file), /debug/jobs, /debug/locks and /metrics.
func TestNoSecretInAnyOutput(t *testing.T) {
	cli := dockerInner(t)
	ctx := context.Background()
	if err := localdockertest.BuildBusyboxImage(ctx, cli, busyboxTag); err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{
		"runner token (glrt-)":         randomSecret(t, "glrt-", 24),
		"runner token (legacy)":        randomSecret(t, "", 20),
		"clever runner token":          randomSecret(t, "glrt-", 24),
		"multi-tenant runner token":    randomSecret(t, "glrt-", 24),
		"registry password":            randomSecret(t, "", 24),
		"S3 secret key":                randomSecret(t, "", 40),
		"guard API token":              randomSecret(t, "glpat-", 20),
		"locks repository password":    randomSecret(t, "", 24),
		"cc_token":                     randomSecret(t, "", 32),
		"cc_orga_token (group)":        randomSecret(t, "", 32),
		"namespace attributes token":   randomSecret(t, "glpat-", 20),
		"DOCKER_AUTH_CONFIG password":  randomSecret(t, "", 24),
		"masked variable of a job":     randomSecret(t, "", 24),
		"clever job's masked variable": randomSecret(t, "", 24),
	}
	newTok, legacyTok := secrets["runner token (glrt-)"], secrets["runner token (legacy)"]
	ccRunnerTok, mtRunnerTok := secrets["clever runner token"], secrets["multi-tenant runner token"]
	dir := t.TempDir()

	// GitLab, the locks repository, S3, Clever Cloud
	gl := coordinatortest.New(t)
	for _, tok := range []string{newTok, legacyTok, ccRunnerTok, mtRunnerTok} {
		gl.AddRunner(tok)
	}
	gl.AddAPIToken(secrets["guard API token"], "read_api")
	repos := filepath.Join(dir, "locks")
	if _, err := gitserve.MakeRepo(repos, "ops/locks.git", map[string]string{
		"envs/claimed/.gitkeep": "", "envs/unclaimed/.gitkeep": "", "envs/unclaimed/env-a": "region=eu-west-1", "envs/unclaimed/env-b": "region=us-east-1"}); err != nil {
		t.Fatal(err)
	}
	lockPW := secrets["locks repository password"] // (secrets grows while the server runs)
	locks, err := gitserve.New(repos, func(u, p string) bool { return u == "locks-bot" && p == lockPW })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(locks.Close)
	be := s3mem.New()
	s3srv := httptest.NewServer(gofakes3.New(be).Server())
	t.Cleanup(s3srv.Close)
	be.CreateBucket("paas-ci")
	cc := cleverdockertest.New(t)
	cc.GitUser = "Jenkins"
	const orgA, orgB = "orga_11111111-2222-3333-4444-555555555555", "orga_66666666-7777-8888-9999-000000000000"
	cc.AddOrg(orgA, secrets["cc_token"])
	cc.AddOrg(orgB, secrets["cc_orga_token (group)"])
	cc.OnPush = func(a cleverdockertest.App, files map[string][]byte) { simulateInner(t, gl.URL, files) }
	front := cleverdockertest.NewGitLab(t, gl.URL, secrets["namespace attributes token"])
	front.SetGroup("acme", map[string]string{"cc_orga_id": orgB, "cc_orga_token": secrets["cc_orga_token (group)"]})

	os.WriteFile(filepath.Join(dir, "locks.password"), []byte(secrets["locks repository password"]+"\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "cc.token"), []byte(secrets["cc_token"]+"\n"), 0o600)
	listen := freePort(t)
	state := filepath.Join(dir, "state.json")
	local := hostNetworkNoPull + fmt.Sprintf("\n  [runners.cache]\n  Type = \"s3\"\n  [runners.cache.s3]\n  ServerAddress = %q\n  AccessKey = \"AKIDLEAKTEST\"\n  SecretKey = %q\n  BucketName = \"paas-ci\"\n  Insecure = true",
		strings.TrimPrefix(s3srv.URL, "http://"), secrets["S3 secret key"])
	conf := fmt.Sprintf(`concurrent = 8
check_interval = 0.1
listen_address = %q
shutdown_timeout = 30
state_file = %q

[guards]
backend = "git"
  [guards.git]
  url = %q
  username = "locks-bot"
  password_file = %q
  retry_delay = "20ms"

[[runners]]
name = "leak-glrt"
url = %q
token = %q
executor = "local-docker"
guard_api_token = %q
%s

[[runners]]
name = "leak-legacy"
url = %q
token = %q
executor = "local-docker"
%s

[[runners]]
name = "leak-clever"
url = %q
token = %q
executor = "clever-docker"
inner_image = "registry.example/paas-runner-host:1"
cc_api_url = %q
cc_orga_id = %q
cc_token_file = "cc.token"
cc_deployment_repo_wait_step = 0.02
cc_deployment_repo_timeout = 60
  [runners.docker]
  image = "alpine"

[[runners]]
name = "leak-tenants"
url = %q
token = %q
executor = "clever-docker"
inner_image = "registry.example/paas-runner-host:1"
cc_api_url = %q
cc_multi_tenant = true
cc_gitlab_namespace_attributes_token_env = "TEST_LEAK_ATTR_TOKEN"
cc_deployment_repo_wait_step = 0.02
cc_deployment_repo_timeout = 60
  [runners.docker]
  image = "alpine"
`, listen, state, locks.URL+"/ops/locks.git", filepath.Join(dir, "locks.password"),
		gl.URL, newTok, secrets["guard API token"], local,
		gl.URL, legacyTok, local,
		gl.URL, ccRunnerTok, cc.APIURL(), orgA,
		front.URL, mtRunnerTok, cc.APIURL())
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	// the same state file, no listen_address: status reads the state file
	offline := filepath.Join(dir, "offline.toml")
	os.WriteFile(offline, []byte(strings.Replace(conf, fmt.Sprintf("listen_address = %q\n", listen), "", 1)), 0o600)
	newID, legacyID := config.RunnerID(newTok), config.RunnerID(legacyTok)
	cleanRunner(t, cli, newID)
	cleanRunner(t, cli, legacyID)

	jobCount := 0
	enqueue := func(runner string, stage string, script []string, extra map[string]any, vars ...map[string]any) *coordinatortest.Job {
		jobCount++
		tok := randomSecret(t, "glcbt-", 24)
		secrets[fmt.Sprintf("job token %d", jobCount)] = tok
		repo, sha := localdockertest.GitServer(t, tok)
		payload := map[string]any{
			"token": tok,
			"image": map[string]any{"name": busyboxTag},
			"job_info": map[string]any{"name": stage, "stage": stage, "project_id": 1, "pipeline_id": 500 + jobCount,
				"project_name": "web", "project_full_path": "acme/web"},
			"git_info": map[string]any{"repo_url": repo, "ref": "main", "sha": sha, "ref_type": "branch", "depth": 1,
				"refspecs": []string{"+refs/heads/main:refs/remotes/origin/main"}},
			"steps": []map[string]any{{"name": "script", "script": script, "timeout": 600, "when": "on_success"}},
			"variables": append([]map[string]any{
				{"key": "CI_JOB_TOKEN", "value": tok, "public": false, "masked": true},
				{"key": "CI_PROJECT_PATH", "value": "acme/web", "public": true},
				{"key": "CI_PROJECT_ROOT_NAMESPACE", "value": "acme", "public": true},
				{"key": "CI_REGISTRY_PASSWORD", "value": tok, "public": false, "masked": true},
				{"key": "DEPLOY_KEY", "value": secrets["masked variable of a job"], "public": false, "masked": true},
				{"key": "DOCKER_AUTH_CONFIG", "value": fmt.Sprintf(`{"auths":{"registry.leak.example":{"username":"bot","password":%q}}}`, secrets["DOCKER_AUTH_CONFIG password"]), "public": false, "masked": false},
			}, vars...),
			"credentials": []map[string]any{{"type": "registry", "url": "registry.gitlab.leak.example", "username": "gitlab-ci-token", "password": secrets["registry password"]}},
		}
		for k, v := range extra {
			payload[k] = v
		}
		return gl.Enqueue(runner, payload)
	}
	type want struct {
		job    *coordinatortest.Job
		status string
	}
	var jobs []want
	// the pipeline guard's own pipeline: nothing older runs, the job goes on
	own := gl.AddPipeline(1, "main", "running")

	logs := &lockedBuffer{}
	startDaemon := func(format string) (*exec.Cmd, chan error) {
		cmd := exec.Command(binary, "--log-format", format, "--log-level", "debug", cfg)
		cmd.Env = append(os.Environ(), "PAAS_RUNNER_RETRY_MIN=5ms", "PAAS_RUNNER_PIPEGUARD_INTERVAL=50ms",
			"TEST_LEAK_ATTR_TOKEN="+secrets["namespace attributes token"], "PAAS_RUNNER_LOG_LEVEL=debug")
		fmt.Fprintf(logs, "=== daemon, %s format\n", format)
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		t.Cleanup(func() { _ = cmd.Process.Kill() })
		return cmd, done
	}
	stopDaemon := func(cmd *exec.Cmd, done chan error) {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("daemon: %v\n%s", err, logs)
			}
		case <-time.After(procWait):
			t.Fatalf("daemon did not stop\n%s", logs)
		}
	}
	// scrape collects the ops endpoints and paas-runner status, both ways
	scraped := &lockedBuffer{}
	scrape := func() {
		for _, path := range []string{"/metrics", "/debug/jobs", "/debug/locks", "/healthz", "/readyz"} {
			if c, b := tryGet("http://" + listen + path); c != 0 {
				fmt.Fprintf(scraped, "=== %s %d\n%s", path, c, b)
			}
		}
		for _, c := range []string{cfg, offline} {
			st := exec.Command(binary, "status", c)
			st.Env = append(os.Environ(), "TEST_LEAK_ATTR_TOKEN="+secrets["namespace attributes token"])
			out, _ := st.CombinedOutput()
			fmt.Fprintf(scraped, "=== status %s\n%s", c, out)
		}
	}

	hctx, stopFollowing := context.WithCancel(ctx)
	hosts := followHosts(hctx, t, cli, newID, legacyID)
	defer stopFollowing()

	// first run: json logs
	cmd, done := startDaemon("json")
	cache := []map[string]any{{"key": "leak-deps", "paths": []string{"vendor/"}, "policy": "pull-push", "when": "on_success"}}
	jobs = append(jobs,
		want{enqueue(newTok, "pass", []string{"mkdir -p vendor", "echo dep > vendor/lib.txt", "echo passing",
			// masked variables printed by the script: masked in the job log
			`echo "key $DEPLOY_KEY, token $CI_JOB_TOKEN"`}, map[string]any{"cache": cache},
			map[string]any{"key": "CI_API_V4_URL", "value": gl.URL + "/api/v4", "public": true},
			map[string]any{"key": "CI_PROJECT_ID", "value": "1", "public": true},
			map[string]any{"key": "CI_PIPELINE_ID", "value": strconv.FormatInt(own, 10), "public": true},
			map[string]any{"key": "GUARD_REF_REGEX", "value": "^main$", "public": true}), "success"},
		want{enqueue(newTok, "fail", []string{"echo failing", "exit 3"}, nil), "failed"},
		want{enqueue(newTok, "service", []string{"wget -q -O - http://web:8080/index.html"}, map[string]any{"services": []map[string]any{{
			"name": busyboxTag, "alias": "web", "entrypoint": []string{"/bin/sh", "-c"},
			"command": []string{"mkdir -p /www && echo answered > /www/index.html && httpd -f -p 8080 -h /www"},
			"ports":   []map[string]any{{"number": 8080}},
		}}}), "success"},
		want{enqueue(legacyTok, "artifact", []string{"mkdir -p out", "echo notes > out/notes.txt"}, map[string]any{"artifacts": []map[string]any{{
			"name": "pkg", "paths": []string{"out/"}, "when": "on_success", "artifact_type": "archive", "artifact_format": "zip", "expire_in": "1 day"}}}), "success"},
		want{enqueue(newTok, "deploy", []string{"echo deploying", "sleep 2"}, nil, map[string]any{"key": "PAAS_LOCK", "value": "production", "public": true}), "success"},
		want{enqueue(legacyTok, "deploy", []string{"echo deploying", "sleep 2"}, nil, map[string]any{"key": "PAAS_LOCK", "value": "production", "public": true}), "success"},
		want{enqueue(legacyTok, "review", []string{"echo review on $PAAS_POOL_NAME"}, nil, map[string]any{"key": "PAAS_POOL", "value": "envs", "public": true}), "success"},
		want{enqueue(ccRunnerTok, "clever", []string{"true"}, nil), "success"},
		want{enqueue(mtRunnerTok, "tenant", []string{"true"}, nil,
			map[string]any{"key": "CLEVER_SECRET", "value": secrets["clever job's masked variable"], "public": false, "masked": true}), "success"},
	)
	waitJobs := func(ws []want, done chan error) {
		deadline := time.Now().Add(3 * procWait)
		for {
			select {
			case err := <-done:
				t.Fatalf("the daemon exited (%v):\n%s", err, logs)
			default:
			}
			scrape()
			all := true
			for _, w := range ws {
				if !jobFinal(gl.Job(w.job.ID).Status) {
					all = false
				}
			}
			if all {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("jobs did not end; daemon log:\n%s", logs)
			}
			time.Sleep(100 * time.Millisecond) // the daemon and its hosts are other processes
		}
		for _, w := range ws {
			if st := gl.Job(w.job.ID).Status; st != w.status {
				t.Errorf("job %d (%s): %s, want %s\n%s", w.job.ID, w.job.Payload["job_info"].(map[string]any)["name"], st, w.status, string(gl.Job(w.job.ID).Trace))
			}
		}
	}
	waitJobs(jobs, done)
	waitNoHosts(t, cli, newID, legacyID)
	scrape()
	stopDaemon(cmd, done)

	// second run: text (console) logs, a job of each local runner
	cmd, done = startDaemon("text")
	second := []want{
		{enqueue(newTok, "pass", []string{"echo again"}, nil), "success"},
		{enqueue(legacyTok, "fail", []string{"exit 4"}, nil), "failed"},
	}
	waitJobs(second, done)
	waitNoHosts(t, cli, newID, legacyID)
	scrape()
	stopDaemon(cmd, done)
	scrape() // both status commands read the state file now
	stopFollowing()
	hostOut := hosts.wait()

	if n := len(hostOut); n != 9 {
		t.Errorf("the output of %d hosts followed, want the 9 local-docker jobs': %v", n, hostOut)
	}
	for name, out := range hostOut {
		if strings.Contains(out, "(logs: ") {
			t.Errorf("host %s's output not read: %s", name, out)
		}
	}
	sources := map[string]string{"the daemon's output": logs.String(), "the ops endpoints and paas-runner status": scraped.String()}
	for id, out := range hostOut {
		sources["host "+id+"'s output"] = out
	}
	for _, j := range gl.Jobs() {
		sources[fmt.Sprintf("job %d's log", j.ID)] = string(j.Trace)
	}
	// what the checks rely on is there: a wrong collection would pass
	for what, sub := range map[string]string{
		"json logs": `"msg":"starting"`, "text logs": "\tINFO\t", "debug logs": "DEBUG",
		"metrics": "gitlab_runner_jobs{", "status from the daemon": "source: daemon at", "status from the state file": "source: state file",
		"a job in status": "RUNNER", "lock in /debug/locks": `"holders"`,
		"the pipeline guard (guard API token) used": "pipeline guard passed", "the locks repository used": "pool:envs/env-",
		"the S3 cache used": "Created cache", "the masked values masked": "key [MASKED], token [MASKED]", "a clever-docker job": "Clever Cloud application ready", "the multi-tenant orga": orgB,
		"the PaaS API metrics":          `paas_runner_paas_api_request_statuses_total{endpoint="create_application",executor="clever-docker",method="post",status="200"}`,
		"the Docker engine API metrics": `paas_runner_paas_api_request_statuses_total{endpoint="container_start",executor="local-docker",method="post",status="204"}`} {
		if !strings.Contains(logs.String()+scraped.String()+string(gl.Job(jobs[0].job.ID).Trace), sub) {
			t.Errorf("the collected output lacks %s (%q)", what, sub)
		}
	}
	names := make([]string, 0, len(sources))
	for n := range sources {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if l := leaks(sources[n], secrets); len(l) > 0 {
			t.Errorf("%s holds %s", n, strings.Join(l, ", "))
			for _, s := range l {
				t.Logf("%s: %s", s, context12(sources[n], secrets[s]))
			}
		}
	}
	if t.Failed() {
		t.Logf("daemon output:\n%s", logs)
		t.Logf("first job's log:\n%s", string(gl.Job(jobs[0].job.ID).Trace))
	}
}

// context12 shows where the first leaked piece of secret is in text.
func context12(text, secret string) string {
	for i := 0; i+minLeak <= len(secret); i++ {
		if at := strings.Index(text, secret[i:i+minLeak]); at >= 0 {
			return fmt.Sprintf("%q", text[max(0, at-120):min(len(text), at+80)])
		}
	}
	return "(not found)"
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

// tryGet is a GET that does not fail the test: 0 when nothing answers.
func tryGet(url string) (int, string) {
	c, err := httpClient.Get(url)
	if err != nil {
		return 0, ""
	}
	defer c.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(c.Body)
	return c.StatusCode, b.String()
}

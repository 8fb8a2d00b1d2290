package jobrunner

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"

	"gitlab.com/paas-runner/paas-runner/coordinator"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
	"gitlab.com/paas-runner/paas-runner/internal/testca"
	"gitlab.com/paas-runner/paas-runner/job"
)

// jobImage is per test process: several worktrees run this package at
// once on one engine, and each removes its image when it ends.
var jobImage = fmt.Sprintf("paas-runner-test-busybox:p%d", os.Getpid())

const (
	testSystemID = "r_jobrunnertest"
	testRunnerID = "tjobrun1"
)

var cli *client.Client

func TestMain(m *testing.M) {
	code := func() int {
		var err error
		cli, err = localdockertest.Client()
		if err != nil {
			if localdockertest.Required() {
				fmt.Fprintln(os.Stderr, "Docker required but not reachable:", err)
				return 1
			}
			fmt.Fprintln(os.Stderr, "skipping Docker tests:", err)
			cli = nil
			return m.Run()
		}
		if err := localdockertest.BuildBusyboxImage(context.Background(), cli, jobImage); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer localdockertest.RemoveImage(cli, jobImage)
		return m.Run()
	}()
	os.Exit(code)
}

type jobSpec struct {
	script, after []string
	timeout       int
	vars          []map[string]any
	// during runs while the job runs (e.g. to cancel it)
	during func(gl *coordinatortest.Server, id int64)
	// setup adjusts the queued job before it is acquired
	setup func(gl *coordinatortest.Server, q *coordinatortest.Job)
	// config adjusts the runner.toml the job runs with
	config func(rc *RunnerConfig)
	// remoteCache, if set, gives the presigned cache URLs of the payload
	// (job.json's paas_runner.cache, as the daemon writes it)
	remoteCache func(payload json.RawMessage) any
	// ca, if set, makes GitLab and the git server speak TLS with a
	// certificate ca signed (tls_test.go); the runner is given ca unless
	// withoutCA
	ca        *testca.CA
	withoutCA bool
	// options, if set, adjusts the inner runner's options
	options func(o *Options)
}

// runJob queues a job in a fake GitLab, acquires it like the daemon, and
// runs it with the inner runner; it returns the job as GitLab ended it.
func runJob(t *testing.T, spec jobSpec) coordinatortest.Job {
	t.Helper()
	if cli == nil {
		t.Skip("no Docker engine")
	}
	q := runJobWith(t, spec, cli, "/builds")
	assertNothingLeft(t, q.ID)
	return q
}

// runJobWith runs the job on d with builds_dir buildsDir.
func runJobWith(t *testing.T, spec jobSpec, d Docker, buildsDir string) coordinatortest.Job {
	t.Helper()
	q, err := runJobErr(t, spec, d, buildsDir)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, q.Trace)
	}
	return q
}

// runJobErr is runJobWith returning Run's error with the job as GitLab
// has it then.
func runJobErr(t *testing.T, spec jobSpec, d Docker, buildsDir string) (coordinatortest.Job, error) {
	t.Helper()
	gl := coordinatortest.New
	var caFile string
	if spec.ca != nil {
		gl = func(t coordinatortest.TB) *coordinatortest.Server { return coordinatortest.NewTLS(t, spec.ca) }
		var err error
		if caFile, err = spec.ca.WriteFile(t.TempDir(), "ca.pem"); err != nil {
			t.Fatal(err)
		}
	}
	return runJobOn(t, gl(t), caFile, spec, d, buildsDir)
}

func runJobOn(t *testing.T, gl *coordinatortest.Server, caFile string, spec jobSpec, d Docker, buildsDir string) (coordinatortest.Job, error) {
	t.Helper()
	gl.AddRunner("glrt-inner-0123456789")
	q := gl.Enqueue("", nil)
	var repo, sha string
	if spec.ca != nil {
		cfg, err := spec.ca.ServerConfig()
		if err != nil {
			t.Fatal(err)
		}
		repo, sha = localdockertest.GitServerTLS(t, q.Token, false, cfg)
	} else {
		repo, sha = localdockertest.GitServer(t, q.Token)
	}
	steps := []map[string]any{{"name": "script", "script": spec.script, "timeout": 3600, "when": "on_success"}}
	if spec.after != nil {
		steps = append(steps, map[string]any{"name": "after_script", "script": spec.after, "timeout": 3600, "when": "always"})
	}
	vars := append([]map[string]any{{"key": "CI_JOB_TOKEN", "value": q.Token, "public": false, "masked": true}}, spec.vars...)
	timeout := spec.timeout
	if timeout == 0 {
		timeout = 600
	}
	q.Payload["steps"] = steps
	q.Payload["variables"] = vars
	q.Payload["image"] = map[string]any{"name": jobImage, "pull_policy": []string{"if-not-present"}}
	q.Payload["runner_info"] = map[string]any{"timeout": timeout}
	q.Payload["git_info"] = map[string]any{"repo_url": repo, "ref": "main", "sha": sha, "ref_type": "branch", "depth": 5,
		"refspecs": []string{"+refs/heads/main:refs/remotes/origin/main"}}
	if spec.setup != nil {
		spec.setup(gl, q)
	}
	c, err := coordinator.New(coordinator.Config{URL: gl.URL, Token: "glrt-inner-0123456789", TLSCAFile: caFile,
		Info: coordinator.Info{Features: Features()}})
	if err != nil {
		t.Fatal(err)
	}
	a, err := c.RequestJob(context.Background())
	if err != nil || a == nil {
		t.Fatalf("acquiring: %v", err)
	}
	// the daemon wrote a line before handing over
	gl.AppendTrace(q.ID, "daemon line\n")
	var doc map[string]any
	json.Unmarshal(a.Raw, &doc)
	pr := map[string]any{"trace_offset": len("daemon line\n"), "trace_crc32": crc32.ChecksumIEEE([]byte("daemon line\n")),
		"system_id": testSystemID, "runner_id": testRunnerID}
	if spec.remoteCache != nil {
		pr["cache"] = spec.remoteCache(a.Raw)
	}
	doc["paas_runner"] = pr
	raw, _ := json.Marshal(doc)
	jp := filepath.Join(t.TempDir(), "job.json")
	os.WriteFile(jp, raw, 0o600)
	j, err := LoadJob(jp)
	if err != nil {
		t.Fatal(err)
	}
	rc := &RunnerConfig{URL: gl.URL, BuildsDir: buildsDir, OutputLimit: 4096}
	if caFile != "" && !spec.withoutCA {
		rc.TLSCAFile, rc.TLSCA = caFile, spec.ca.PEM
	}
	if spec.config != nil {
		spec.config(rc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if spec.during != nil {
		go spec.during(gl, q.ID)
	}
	o := Options{Config: rc, Job: j, Docker: d, TraceInterval: 50 * time.Millisecond, Info: coordinator.Info{Name: "paas-runner", Version: "test"}}
	if spec.options != nil {
		spec.options(&o)
	}
	err = Run(ctx, o)
	return gl.Job(q.ID), err
}

func assertNothingLeft(t *testing.T, id int64) {
	t.Helper()
	f := filters.NewArgs(filters.Arg("label", fmt.Sprintf("paas-runner.job-id=%d", id)))
	cs, _ := cli.ContainerList(context.Background(), container.ListOptions{All: true, Filters: f})
	vs, _ := cli.VolumeList(context.Background(), volume.ListOptions{Filters: f})
	ns, _ := cli.NetworkList(context.Background(), network.ListOptions{Filters: f})
	if len(cs) > 0 || len(vs.Volumes) > 0 || len(ns) > 0 {
		t.Fatalf("left behind: %d containers, %d volumes, %d networks", len(cs), len(vs.Volumes), len(ns))
	}
}

func TestSuccessfulJob(t *testing.T) {
	j := runJob(t, jobSpec{
		script: []string{"echo \"hello $WHO\"", "cat README", "cat \"$CONFIG_FILE\"", "echo secret is $SECRET", "pwd"},
		vars: []map[string]any{
			{"key": "WHO", "value": "world", "public": true, "masked": false},
			{"key": "CONFIG_FILE", "value": "file content here", "public": false, "masked": false, "file": true},
			{"key": "SECRET", "value": "sup3rs3cr3t", "public": false, "masked": true},
		},
	})
	tr := string(j.Trace)
	if j.Status != "success" {
		t.Fatalf("status %s\n%s", j.Status, tr)
	}
	for _, want := range []string{"daemon line\n", "$ echo \"hello $WHO\"", "hello world", "hello from the repository", "file content here", "secret is [MASKED]", "/builds/g/p", "Job succeeded"} {
		if !strings.Contains(tr, want) {
			t.Errorf("log lacks %q:\n%s", want, tr)
		}
	}
	if strings.Contains(tr, "sup3rs3cr3t") || strings.Contains(tr, j.Token) {
		t.Errorf("a secret leaked into the log:\n%s", tr)
	}
	if !strings.HasPrefix(tr, "daemon line\n") {
		t.Errorf("the daemon's part was overwritten:\n%s", tr)
	}
	last := j.Updates[len(j.Updates)-1]
	out, _ := last["output"].(map[string]any)
	if out["bytesize"] != float64(len(j.Trace)) || out["checksum"] != coordinator.Checksum(j.Trace) {
		t.Errorf("final update %v; log is %d bytes, %s", out, len(j.Trace), coordinator.Checksum(j.Trace))
	}
}

func TestFailingJobRunsAfterScript(t *testing.T) {
	j := runJob(t, jobSpec{
		script: []string{"echo before", "exit 7", "echo never"},
		after:  []string{"echo after with status $CI_JOB_STATUS"},
	})
	tr := string(j.Trace)
	if j.Status != "failed" || j.FailureReason != "script_failure" || j.ExitCode != 7 {
		t.Fatalf("%s %s %d\n%s", j.Status, j.FailureReason, j.ExitCode, tr)
	}
	if strings.Contains(tr, "\nnever") || !strings.Contains(tr, "after with status failed") {
		t.Errorf("log:\n%s", tr)
	}
}

func TestTimeout(t *testing.T) {
	j := runJob(t, jobSpec{script: []string{"echo start", "sleep 60"}, timeout: 2, after: []string{"echo after timeout"}})
	if j.Status != "failed" || j.FailureReason != "job_execution_timeout" {
		t.Fatalf("%s %s\n%s", j.Status, j.FailureReason, j.Trace)
	}
	if !strings.Contains(string(j.Trace), "after timeout") {
		t.Errorf("after_script did not run after the timeout:\n%s", j.Trace)
	}
}

func TestGracefulCancel(t *testing.T) {
	j := runJob(t, jobSpec{
		script: []string{"echo started", "sleep 120", "echo never"},
		after:  []string{"echo after with status $CI_JOB_STATUS"},
		during: func(gl *coordinatortest.Server, id int64) {
			gl.WaitFor(time.Minute, "the script to start", func(s *coordinatortest.Server) bool { return s.TraceContains(id, "started\n") })
			gl.Cancel(id) // the runner advertised cancel_gracefully: canceling
		},
	})
	tr := string(j.Trace)
	if j.Status != "canceled" || !strings.Contains(tr, "after with status canceled") || strings.Contains(tr, "\nnever") {
		t.Fatalf("status %s:\n%s", j.Status, tr)
	}
}

func TestHardCancel(t *testing.T) {
	start := time.Now()
	j := runJob(t, jobSpec{
		script: []string{"echo started", "sleep 120"},
		after:  []string{"echo after"},
		during: func(gl *coordinatortest.Server, id int64) {
			gl.WaitFor(time.Minute, "the script to start", func(s *coordinatortest.Server) bool { return s.TraceContains(id, "started\n") })
			gl.ForceCancel(id)
		},
	})
	if j.Status != "canceled" || strings.Contains(string(j.Trace), "\nafter\n") {
		t.Fatalf("status %s:\n%s", j.Status, j.Trace)
	}
	if time.Since(start) > 60*time.Second {
		t.Fatalf("a hard cancel took %v", time.Since(start))
	}
}

func TestArtifactsAndDependencies(t *testing.T) {
	j := runJob(t, jobSpec{
		script: []string{"mkdir -p out/sub", "echo A > out/a.bin", "echo B > out/sub/b.bin", "echo S > out/skip.log", "echo T > top.txt", "echo O > other.dat"},
		setup: func(gl *coordinatortest.Server, q *coordinatortest.Job) {
			q.Payload["artifacts"] = []map[string]any{
				{"name": "bundle", "paths": []string{"out/", "*.txt"}, "exclude": []string{"out/*.log"}, "when": "on_success", "expire_in": "1 day", "artifact_type": "archive", "artifact_format": "zip"},
				{"name": "never", "paths": []string{"other.dat"}, "when": "on_failure", "artifact_type": "junit", "artifact_format": "gzip"},
			}
		},
	})
	if j.Status != "success" {
		t.Fatalf("%s\n%s", j.Status, j.Trace)
	}
	if _, ok := j.Artifacts["junit"]; ok {
		t.Error("on_failure artifacts uploaded for a successful job")
	}
	a := j.Artifacts["archive"]
	if a.Filename != "bundle.zip" || a.ExpireIn != "1 day" || a.Format != "zip" {
		t.Fatalf("upload %+v", a)
	}
	zr, err := zip.NewReader(bytes.NewReader(a.Data), int64(len(a.Data)))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range zr.File {
		names = append(names, f.Name)
	}
	sort.Strings(names)
	if strings.Join(names, ",") != "out/a.bin,out/sub/b.bin,top.txt" {
		t.Fatalf("archive holds %v", names)
	}

	// a dependent job gets them before its script
	dep := runJob(t, jobSpec{
		script: []string{"cat out/sub/b.bin", "cat top.txt"},
		setup: func(gl *coordinatortest.Server, q *coordinatortest.Job) {
			build := gl.AddRunning("")
			gl.SetArtifacts(build.ID, a.Data)
			q.Payload["dependencies"] = []map[string]any{{"id": build.ID, "name": "build", "token": q.Token,
				"artifacts_file": map[string]any{"filename": "bundle.zip", "size": len(a.Data)}}}
		},
	})
	if dep.Status != "success" || !strings.Contains(string(dep.Trace), "\nB\n") || !strings.Contains(string(dep.Trace), "\nT\n") {
		t.Fatalf("%s\n%s", dep.Status, dep.Trace)
	}
}

func TestUntrackedArtifactsOnFailure(t *testing.T) {
	j := runJob(t, jobSpec{
		script: []string{"echo log > failure.log", "exit 1"},
		setup: func(gl *coordinatortest.Server, q *coordinatortest.Job) {
			q.Payload["artifacts"] = []map[string]any{{"untracked": true, "when": "on_failure", "artifact_type": "archive", "artifact_format": "zip"}}
		},
	})
	a := j.Artifacts["archive"]
	zr, err := zip.NewReader(bytes.NewReader(a.Data), int64(len(a.Data)))
	if j.Status != "failed" || err != nil || len(zr.File) != 1 || zr.File[0].Name != "failure.log" {
		t.Fatalf("%s %v %+v\n%s", j.Status, err, zr, j.Trace)
	}
}

func TestServiceReachableByAlias(t *testing.T) {
	// The service is the busybox image running an HTTP server on port 8080;
	// the job reaches it by its explicit alias and by the derived name.
	j := runJob(t, jobSpec{
		script: []string{"wget -q -O - http://web:8080/index.html", "wget -q -O - http://paas-runner-test-busybox:8080/index.html"},
		setup: func(gl *coordinatortest.Server, q *coordinatortest.Job) {
			q.Payload["services"] = []map[string]any{{
				"name": jobImage, "alias": "web", "entrypoint": []string{"/bin/sh", "-c"},
				"command":     []string{"mkdir -p /www && echo served-$GREETING > /www/index.html && httpd -f -p 8080 -h /www"},
				"variables":   []map[string]any{{"key": "GREETING", "value": "hello"}},
				"ports":       []map[string]any{{"number": 8080}},
				"pull_policy": []string{"if-not-present"},
			}}
		},
	})
	tr := string(j.Trace)
	if j.Status != "success" || strings.Count(tr, "served-hello") != 2 {
		t.Fatalf("%s\n%s", j.Status, tr)
	}
}

func TestServiceAliases(t *testing.T) {
	got := serviceAliases(job.Service{Image: job.Image{Name: "tutum/wordpress:latest", Alias: "wp, blog"}}, nil)
	want := "wp,blog,tutum-wordpress,tutum__wordpress"
	if strings.Join(got, ",") != want {
		t.Fatalf("%v", got)
	}
}

func TestCacheReusedBySecondJob(t *testing.T) {
	key := fmt.Sprintf("deps-%d", time.Now().UnixNano())
	t.Cleanup(func() {
		if cli != nil {
			cli.VolumeRemove(context.Background(), cacheVolume(testRunnerID, 1, key), true)
		}
	})
	cache := func(k string, fallback []string, policy string) func(*coordinatortest.Server, *coordinatortest.Job) {
		return func(gl *coordinatortest.Server, q *coordinatortest.Job) {
			q.Payload["cache"] = []map[string]any{{"key": k, "paths": []string{"vendor/"}, "policy": policy, "when": "on_success", "fallback_keys": fallback}}
		}
	}
	first := runJob(t, jobSpec{script: []string{"mkdir -p vendor", "echo cached-content > vendor/lib.txt", "echo not > other.txt"}, setup: cache(key, nil, "pull-push")})
	if first.Status != "success" || !strings.Contains(string(first.Trace), "Created cache") {
		t.Fatalf("%s\n%s", first.Status, first.Trace)
	}
	want := "cached-content"
	second := runJob(t, jobSpec{script: []string{"cat vendor/lib.txt", "test ! -e other.txt"}, setup: cache(key, nil, "pull")})
	if second.Status != "success" || !strings.Contains(string(second.Trace), want) {
		t.Fatalf("%s\n%s", second.Status, second.Trace)
	}
	third := runJob(t, jobSpec{script: []string{"cat vendor/lib.txt"}, setup: cache("no-such-key-"+key, []string{key}, "pull")})
	if third.Status != "success" || !strings.Contains(string(third.Trace), want) {
		t.Fatalf("fallback: %s\n%s", third.Status, third.Trace)
	}
}

func TestSubmodules(t *testing.T) {
	if cli == nil {
		t.Skip("no Docker engine")
	}
	j := runJob(t, jobSpec{
		script: []string{"cat lib/LIBFILE"},
		vars:   []map[string]any{{"key": "GIT_SUBMODULE_STRATEGY", "value": "normal", "public": true, "masked": false}},
		setup: func(gl *coordinatortest.Server, q *coordinatortest.Job) {
			repo, sha := localdockertest.GitServerWithSubmodule(t, q.Token)
			gi := q.Payload["git_info"].(map[string]any)
			gi["repo_url"], gi["sha"] = repo, sha
		},
	})
	if j.Status != "success" || !strings.Contains(string(j.Trace), "hello from the submodule") {
		t.Fatalf("%s\n%s", j.Status, j.Trace)
	}
}

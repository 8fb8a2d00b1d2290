package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors/cleverdocker/cleverdockertest"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
	"gitlab.com/paas-runner/paas-runner/internal/version"
)

// Run-time effect of configuration keys no other process test sets: each
// is set to a value other than its default and its effect observed on the
// real daemon.

// stateJob returns the state file's entry of job id (in any section), or nil.
func (e *env) stateJob(id int64) map[string]any {
	e.t.Helper()
	for _, list := range e.checkStateFile() {
		for _, raw := range list {
			var j map[string]any
			if json.Unmarshal(raw, &j) != nil {
				var pair []json.RawMessage
				if json.Unmarshal(raw, &pair) != nil || len(pair) == 0 || json.Unmarshal(pair[0], &j) != nil {
					continue
				}
			}
			if n, _ := j["job_id"].(float64); int64(n) == id {
				return j
			}
		}
	}
	return nil
}

// paas_finished_jobs_keep_resources = true: a finished job's host stays,
// and so does its entry, marked keep_resources, across a restart.
func TestKeyFinishedJobsKeepResources(t *testing.T) {
	e := newEnv(t, "paas_finished_jobs_keep_resources = true")
	p := e.start("")
	j := e.gl.Enqueue("", nil)
	e.waitFile(filepath.Join(e.hosts, e.hostName(j.ID)+".launched"))
	e.gl.Finish(j.ID, "success")
	p.waitLog(t, "the kept host", "keeping the host (paas_finished_jobs_keep_resources = true)")
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if _, err := os.Stat(filepath.Join(e.hosts, e.hostName(j.ID)+".host")); err != nil {
		t.Fatalf("host removed: %v", err)
	}
	if rec := e.stateJob(j.ID); rec == nil || rec["keep_resources"] != true {
		t.Fatalf("state entry %v", rec)
	}
	// and the next start leaves it alone too (not reaped, not removed)
	if code, stderr := runOnce(t, []string{"PAAS_RUNNER_TEST_EXECUTOR_DIR=" + e.hosts}, "--poll-cycles", "2", e.config); code != 0 {
		t.Fatalf("restart: exit %d\n%s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(e.hosts, e.hostName(j.ID)+".host")); err != nil {
		t.Fatalf("host removed at restart: %v", err)
	}
}

// paas_decommission_launch_failures = false keeps the host of a job that
// failed to launch (marked keep_resources in the state file); the default
// removes it.
func TestKeyDecommissionLaunchFailures(t *testing.T) {
	for _, keep := range []bool{true, false} {
		extra := ""
		if keep {
			extra = "paas_decommission_launch_failures = false"
		}
		e := newEnv(t, extra)
		// launches.log a directory: every launch attempt fails
		logDir := filepath.Join(e.hosts, "launches.log")
		os.Mkdir(logDir, 0o700)
		p := e.start("")
		j := e.gl.Enqueue("", nil)
		e.gl.WaitFor(procWait, "launch failure reported", func(s *coordinatortest.Server) bool {
			return s.StatusOf(j.ID) == "failed"
		})
		if r := e.gl.Job(j.ID).FailureReason; r != "runner_system_failure" {
			t.Fatalf("failure reason %q", r)
		}
		host := filepath.Join(e.hosts, e.hostName(j.ID)+".host")
		if keep {
			p.waitLog(t, "the kept host", "keeping the host of a failed launch (paas_decommission_launch_failures = false)")
		}
		os.Remove(logDir) // removals can work from now on
		if !keep {
			e.waitGone(host)
		}
		p.signal(syscall.SIGTERM)
		if code := p.wait(t); code != 0 {
			t.Fatalf("exit %d", code)
		}
		_, err := os.Stat(host)
		if keep != (err == nil) {
			t.Fatalf("keep=%v: host file: %v", keep, err)
		}
		rec := e.stateJob(j.ID)
		if keep && (rec == nil || rec["keep_resources"] != true) {
			t.Fatalf("kept host not in the state file: %v", rec)
		}
		if !keep && rec != nil {
			t.Fatalf("removed host still in the state file: %v", rec)
		}
	}
}

func (e *env) waitGone(path string) {
	e.t.Helper()
	deadline := time.Now().Add(procWait)
	for {
		if _, err := os.Stat(path); os.IsNotExist(err) {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s still there", path)
		}
		time.Sleep(10 * time.Millisecond) // another process removes it
	}
}

// log_format and log_level from the configuration (no flags): JSON lines
// at the configured level; the flags still win.
func TestKeyLogFormatAndLevel(t *testing.T) {
	e := newEnv(t, "log_format = \"json\"\nlog_level = \"warn\"")
	b, _ := os.ReadFile(e.config)
	os.WriteFile(e.config, append(b, "[runners.docker]\nhelper_image = \"x\"\n"...), 0o600)
	// helper_image is a warning: the one line a warn level lets through
	code, stderr := runOnce(t, []string{"PAAS_RUNNER_TEST_EXECUTOR_DIR=" + e.hosts}, "--poll-cycles", "1", e.config)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not a JSON line (log_format = \"json\"): %q", l)
		}
		if m["level"] != "warn" && m["level"] != "error" {
			t.Fatalf("a %v line with log_level = \"warn\": %s", m["level"], l)
		}
	}
	if !strings.Contains(stderr, "helper_image") {
		t.Fatalf("the warning is missing:\n%s", stderr)
	}
	// the flags win over the file
	code, stderr = runOnce(t, []string{"PAAS_RUNNER_TEST_EXECUTOR_DIR=" + e.hosts}, "--poll-cycles", "1", "--log-format", "text", "--log-level", "info", e.config)
	if code != 0 || !strings.Contains(stderr, "\tINFO\tstarting\t") {
		t.Fatalf("exit %d: flags not applied:\n%s", code, stderr)
	}
}

// paas_min_seconds_between_launches spaces the starts of provisioning.
func TestKeyMinSecondsBetweenLaunches(t *testing.T) {
	e := newEnv(t, "paas_min_seconds_between_launches = 1")
	p := e.start("")
	a, b := e.gl.Enqueue("", nil), e.gl.Enqueue("", nil)
	var at []time.Time
	for _, j := range []int64{a.ID, b.ID} {
		h := filepath.Join(e.hosts, e.hostName(j)+".host")
		e.waitFile(h)
		fi, _ := os.Stat(h)
		at = append(at, fi.ModTime())
	}
	gap := at[1].Sub(at[0])
	if gap < 0 {
		gap = -gap
	}
	if gap < 900*time.Millisecond {
		t.Fatalf("hosts made %v apart, want at least 1s", gap)
	}
	e.gl.Finish(a.ID, "success")
	e.gl.Finish(b.ID, "success")
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// The job-level keys the inner runner honours, set in the daemon's
// configuration, reach a real job on a local-docker host running
// paas-runner's own inner runner: environment, builds_dir, output_limit,
// and [runners.docker] user and extra_hosts.
func TestKeyJobLevelKeysReachTheJob(t *testing.T) {
	cli := dockerInner(t)
	jobImage := busyboxTag
	if err := localdockertest.BuildBusyboxImage(context.Background(), cli, jobImage); err != nil {
		t.Fatal(err)
	}
	tok := fmt.Sprintf("glrt-ldkeys-%d-0123456789", os.Getpid())
	extra := "name = \"keys\"\nenvironment = [\"FROM_CONFIG=configured value\"]\nbuilds_dir = \"/work-dir\"\noutput_limit = 4\n" + hostNetworkNoPull +
		"\n  user = \"1234\"\n  extra_hosts = [\"paas-keys.example:10.1.2.3\"]"
	gl, dir, cfg := localDockerConfig(t, "concurrent = 2\ncheck_interval = 0.1", ldRunner{tok, extra})
	e := &env{t: t, dir: dir, config: cfg, gl: gl}
	cleanRunner(t, cli, config.RunnerID(tok))
	p := e.start("")
	run := func(script ...string) (string, string) {
		q := gl.Enqueue(tok, map[string]any{
			"image":     map[string]any{"name": jobImage},
			"steps":     []map[string]any{{"name": "script", "script": script, "timeout": 600, "when": "on_success"}},
			"variables": []map[string]any{{"key": "GIT_STRATEGY", "value": "none", "public": true}},
		})
		gl.WaitFor(procWait, "the job to end", func(s *coordinatortest.Server) bool { return jobFinal(s.StatusOf(q.ID)) })
		got := gl.Job(q.ID)
		return got.Status, string(got.Trace)
	}
	st, tr := run("echo from config: $FROM_CONFIG in $CI_BUILDS_DIR at $(pwd)", "echo uid $(id -u)", "grep paas-keys.example /etc/hosts")
	if st != "success" {
		t.Fatalf("job %s:\n%s", st, tr)
	}
	for _, want := range []string{"from config: configured value in /work-dir at /work-dir/", "uid 1234", "10.1.2.3\tpaas-keys.example"} {
		if !strings.Contains(tr, want) {
			t.Errorf("log lacks %q:\n%s", want, tr)
		}
	}
	st, tr = run("i=0; while [ $i -lt 200 ]; do echo filler line $i padding padding padding; i=$((i+1)); done", "echo after the limit")
	if st != "success" || !strings.Contains(tr, "Job's log exceeded limit of 4096 bytes") || strings.Contains(tr, "after the limit") || strings.Contains(tr, "filler line 199") {
		t.Errorf("output_limit not applied: job %s:\n%s", st, tr)
	}
	waitNoHosts(t, cli, config.RunnerID(tok))
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// clever-docker keys no process test set, with values other than their
// defaults, seen by the fake Clever Cloud: the git push user
// (cc_auth_user), the application's zone, instance variant and flavor
// (cc_zone, cc_instance_variant_uuid, cc_default_flavor), the products'
// flavor context and name prefix (cc_flavor_context, cc_flavor_name_prefix).
func TestKeyCleverSettings(t *testing.T) {
	const variant = "0b1c2d3e-0000-4000-8000-000000000001"
	e := newCleverEnv(t, fixedOrg+"\ncc_auth_user = \"pusher\"\ncc_zone = \"rbx\"\ncc_instance_variant_uuid = \""+variant+
		"\"\ncc_default_flavor = \"S\"\ncc_flavor_context = \"ctx\"\ncc_flavor_name_prefix = \"ctx_\"")
	e.cc.GitUser = "pusher" // a push as Jenkins (the default) is refused
	var fs []cleverdockertest.Flavor
	for _, f := range cleverdockertest.HeptapodFlavors() {
		if n, ok := strings.CutPrefix(f.Name, "heptapod-runner-"); ok {
			f.Name = "ctx_" + n
			fs = append(fs, f)
		}
	}
	e.cc.SetFlavors("ctx", fs)
	apps := make(chan cleverdockertest.App, 1)
	e.cc.OnPush = func(a cleverdockertest.App, files map[string][]byte) {
		apps <- a
		simulateInner(t, e.gl.URL, files)
	}
	p := e.start("")
	id := e.gl.Enqueue(e.token, nil).ID
	if st := e.waitFinal(id); st != "success" {
		t.Fatalf("job %s:\n%s", st, e.gl.TraceOf(id))
	}
	a := <-apps
	if a.Zone != "rbx" || a.Variant != variant || a.MinFlavor != "ctx_S" || a.MaxFlavor != "ctx_S" {
		t.Fatalf("application zone %q variant %q flavors %q-%q", a.Zone, a.Variant, a.MinFlavor, a.MaxFlavor)
	}
	e.waitNoApps()
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// cc_orga_id_attribute and cc_orga_token_attribute name the group custom
// attributes of a multi-tenant runner; the default names are then not read.
func TestKeyCleverTenantAttributeNames(t *testing.T) {
	e := newCleverEnv(t, "cc_multi_tenant = true\ncc_gitlab_namespace_attributes_token_env = \"TEST_CC_ATTR_TOKEN\"\ncc_orga_id_attribute = \"clever_org\"\ncc_orga_token_attribute = \"clever_secret\"")
	e.extraEnv = []string{"TEST_CC_ATTR_TOKEN=gitlab-admin-attr-token"}
	e.front.SetGroup("acme", map[string]string{"clever_org": ccOrga, "clever_secret": ccToken})
	e.front.SetGroup("old", map[string]string{"cc_orga_id": ccOrga, "cc_orga_token": ccToken})
	p := e.start("")
	ns := func(n string) map[string]any {
		return map[string]any{"variables": []map[string]any{{"key": "CI_PROJECT_ROOT_NAMESPACE", "value": n, "public": true}}}
	}
	a := e.gl.Enqueue(e.token, ns("acme"))
	if st := e.waitFinal(a.ID); st != "success" {
		t.Fatalf("job %s: %q", st, e.gl.TraceOf(a.ID))
	}
	old := e.gl.Enqueue(e.token, ns("old"))
	if st := e.waitFinal(old.ID); st != "failed" || !e.gl.TraceContains(old.ID, "no custom attribute clever_org nor clever_secret") {
		t.Fatalf("job with the default attribute names: %s %q", st, e.gl.TraceOf(old.ID))
	}
	e.waitNoApps()
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// inner_image set to the project's own host image, as a new user makes it
// (`make image`, i.e. `paas-runner host-image`), under both its names:
// the job runs on it with paas-runner's inner runner.
func TestKeyInnerImageIsTheProjectsOwn(t *testing.T) {
	cli := dockerInner(t)
	if err := localdockertest.BuildBusyboxImage(context.Background(), cli, busyboxTag); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(binary, "host-image").Output()
	if err != nil {
		t.Fatalf("host-image: %v", err)
	}
	tag := strings.TrimSpace(string(out))
	if tag != localdocker.BaseImageTag(version.Version, binary) {
		t.Fatalf("host-image made %q", tag) // TestMain removes that tag
	}
	for i, key := range []string{"[runners.local_docker]\n  inner_image = %q", "heptapod_runner_main_image = %q\n  [runners.local_docker]"} {
		tok := fmt.Sprintf("glrt-ldown%d-%d-0123456789", i, os.Getpid())
		extra := "name = \"own\"\n" + fmt.Sprintf(key, tag) + "\n  network_mode = \"host\"\n  [runners.docker]\n  pull_policy = \"never\""
		gl, dir, cfg := localDockerConfig(t, "check_interval = 0.1", ldRunner{tok, extra})
		e := &env{t: t, dir: dir, config: cfg, gl: gl}
		cleanRunner(t, cli, config.RunnerID(tok))
		p := e.start("")
		q := gl.Enqueue(tok, map[string]any{
			"image":     map[string]any{"name": busyboxTag},
			"steps":     []map[string]any{{"name": "script", "script": []string{"echo on the own host image of the project"}, "timeout": 600, "when": "on_success"}},
			"variables": []map[string]any{{"key": "GIT_STRATEGY", "value": "none", "public": true}},
		})
		gl.WaitFor(procWait, "the job to end", func(s *coordinatortest.Server) bool { return jobFinal(s.StatusOf(q.ID)) })
		if got := gl.Job(q.ID); got.Status != "success" || !strings.Contains(string(got.Trace), "on the own host image of the project") {
			t.Fatalf("%s: job %s:\n%s", key, got.Status, got.Trace)
		}
		waitNoHosts(t, cli, config.RunnerID(tok))
		p.signal(syscall.SIGTERM)
		if code := p.wait(t); code != 0 {
			t.Fatalf("exit %d", code)
		}
	}
}

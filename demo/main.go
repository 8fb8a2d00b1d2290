// Command demo is `make demo`: paas-runner end to end on this machine, with
// no GitLab. It starts an embedded development GitLab (the runner API test
// double, plus a sample repository over git smart HTTP), queues a sample
// pipeline, runs the real daemon (bin/paas-runner) with the local-docker
// executor until every job ended, shows each transition as it happens,
// then every job's log and a summary, and removes all it created.
//
// Exit status: 0 when every job ended as the sample expects, 1 otherwise,
// 2 when something it needs is missing (it says what to do), 130 when
// interrupted (Ctrl-C, SIGTERM, SIGHUP: it stops the daemon and removes
// what it made first).
package main

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker"
	"gitlab.com/paas-runner/paas-runner/internal/gitserve"
	"gitlab.com/paas-runner/paas-runner/internal/labels"
)

// What the demo makes is named per run: demos, and their tests in other
// checkouts, may share an engine, and each removes only its own.
var (
	runID       = randomHex(4)
	runnerToken = "glrt-demo-fake-runner-" + runID // the embedded fake GitLab's, not a real token
	jobImage    = "paas-runner-demo-busybox:" + runID
)

// demoLabel marks the demo's job image; its value is the run's runID.
const demoLabel = "paas-runner.demo"

// hostImageLabel marks local-docker's host base image
// (localdocker.LabelHostImage).
const hostImageLabel = localdocker.LabelHostImage

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// sample is one job of the sample pipeline and what it must end as.
type sample struct {
	name, stage string
	script      []string
	vars        map[string]string // CI variables (PAAS_LOCK, PAAS_POOL)
	extra       map[string]any
	wantStatus  string
	wantReason  string
	wantLog     []string
	check       func(j coordinatortest.Job) error
}

func pipeline() []sample {
	return []sample{
		{name: "build", stage: "build", script: []string{"cat README", "echo built on $(uname -m)"},
			wantStatus: "success", wantLog: []string{"hello from the sample repository"}},
		{name: "test-with-service", stage: "test", script: []string{"wget -q -O - http://web:8080/index.html"},
			extra: map[string]any{"services": []map[string]any{{
				"name": jobImage, "alias": "web", "entrypoint": []string{"/bin/sh", "-c"},
				"command": []string{"mkdir -p /www && echo answered-by-the-service > /www/index.html && httpd -f -p 8080 -h /www"},
				"ports":   []map[string]any{{"number": 8080}}, "pull_policy": []string{"if-not-present"},
			}}},
			wantStatus: "success", wantLog: []string{"answered-by-the-service"}},
		{name: "package", stage: "test", script: []string{"mkdir -p out", "echo release-notes > out/notes.txt"},
			extra: map[string]any{"artifacts": []map[string]any{{"name": "package", "paths": []string{"out/"}, "when": "on_success",
				"artifact_type": "archive", "artifact_format": "zip", "expire_in": "1 day"}}},
			wantStatus: "success", check: hasArtifact("out/notes.txt")},
		{name: "lint", stage: "test", script: []string{"echo checking style", "exit 3"},
			wantStatus: "failed", wantReason: "script_failure", wantLog: []string{"exit code 3"}},
		// two deployments sharing lock production: one waits for the other
		// (no host meanwhile)
		{name: "deploy-eu", stage: "deploy", vars: map[string]string{"PAAS_LOCK": "production"},
			script: []string{"echo deploying with $PAAS_LOCKS", "sleep 4"}, wantStatus: "success", wantLog: []string{"deploying with production"}},
		{name: "deploy-us", stage: "deploy", vars: map[string]string{"PAAS_LOCK": "production"},
			script: []string{"echo deploying with $PAAS_LOCKS", "sleep 4"}, wantStatus: "success", wantLog: []string{"deploying with production"}},
		// two jobs taking a lock each of pool envs (configured with two)
		{name: "review-1", stage: "deploy", vars: map[string]string{"PAAS_POOL": "envs"},
			script: []string{"echo pool lock $PAAS_POOL_NAME: $PAAS_POOL_METADATA", "sleep 12"}, wantStatus: "success", wantLog: []string{"pool lock env-"}},
		{name: "review-2", stage: "deploy", vars: map[string]string{"PAAS_POOL": "envs"},
			script: []string{"echo pool lock $PAAS_POOL_NAME: $PAAS_POOL_METADATA", "sleep 12"}, wantStatus: "success", wantLog: []string{"pool lock env-"}},
	}
}

var (
	lockWaitRe = regexp.MustCompile(`locks acquired after ([0-9hms.]+)`)
	poolLockRe = regexp.MustCompile(`pool lock (env-[a-z]+): region=`)
)

// lockWait is how long a job waited for its locks, from its log ("" when
// it did not wait).
func lockWait(trace string) string {
	if !strings.Contains(trace, "paas-runner: waiting for ") {
		return ""
	}
	if m := lockWaitRe.FindStringSubmatch(trace); m != nil {
		return m[1]
	}
	return "?"
}

// guardProblems checks the guarded jobs together: exactly one of the two
// deployments waited for lock production, and the two pool jobs held
// different locks of pool envs.
func guardProblems(jobs []sample, got []coordinatortest.Job) []string {
	var p []string
	waited := 0
	pool := map[string]bool{}
	for i, s := range jobs {
		trace := readable(got[i].Trace)
		switch {
		case s.vars["PAAS_LOCK"] != "":
			if w := lockWait(trace); w != "" {
				waited++
				if w == "?" {
					p = append(p, fmt.Sprintf("job %s waited but its log does not say for how long", s.name))
				}
			}
		case s.vars["PAAS_POOL"] != "":
			m := poolLockRe.FindStringSubmatch(trace)
			if m == nil {
				p = append(p, fmt.Sprintf("job %s printed no pool lock", s.name))
				continue
			}
			if pool[m[1]] {
				p = append(p, fmt.Sprintf("pool lock %s given to two jobs at once", m[1]))
			}
			pool[m[1]] = true
		}
	}
	if waited != 1 {
		p = append(p, fmt.Sprintf("%d deployments waited for lock production, want 1", waited))
	}
	return p
}

func hasArtifact(name string) func(coordinatortest.Job) error {
	return func(j coordinatortest.Job) error {
		a, ok := j.Artifacts["archive"]
		if !ok {
			return errors.New("no artifact uploaded")
		}
		zr, err := zip.NewReader(bytes.NewReader(a.Data), int64(len(a.Data)))
		if err != nil {
			return fmt.Errorf("artifact: %v", err)
		}
		for _, f := range zr.File {
			if f.Name == name {
				return nil
			}
		}
		return fmt.Errorf("artifact lacks %s", name)
	}
}

func run(args []string, stdout, stderr io.Writer) int { return runDemo(args, stdout, stderr, nil) }

// runDemo is run; secrets, when not nil, receives every token the run
// used (the runner's and the jobs'), for a test to look for in the output.
func runDemo(args []string, stdout, stderr io.Writer, secrets *[]string) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	binary := fs.String("binary", "bin/paas-runner", "the paas-runner binary (statically linked: `make build`)")
	timeout := fs.Duration("timeout", 4*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	bin, err := filepath.Abs(*binary)
	if err == nil {
		_, err = os.Stat(bin)
	}
	if err != nil {
		fmt.Fprintf(stderr, "demo: %s not found: run `make build` first (or `make demo`, which does)\n", *binary)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	// Interrupted (Ctrl-C reaches the daemon too: it drains), the demo
	// stops the daemon and removes what it made before it exits.
	var interrupted atomic.Value
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	go func() {
		select {
		case s := <-sigs:
			interrupted.Store(s)
			fmt.Fprintf(stderr, "demo: %v: stopping paas-runner and removing what the demo made\n", s)
			cancel()
		case <-ctx.Done():
		}
	}()
	wasInterrupted := func() bool { return interrupted.Load() != nil }
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err == nil {
		_, err = cli.Ping(ctx)
	}
	if err != nil {
		fmt.Fprintf(stderr, "demo: no Docker engine answers (%v).\n  As root, `make docker-up` installs Debian's docker.io and starts dockerd;\n  otherwise start Docker and make its socket usable by this user.\n", err)
		return 2
	}
	defer cli.Close()

	prog := &coordinatortest.Program{}
	defer prog.Close()
	d := &demo{out: stdout, cli: cli, bin: bin, start: time.Now(), prog: prog}
	if secrets != nil {
		defer func() { *secrets = d.secrets() }()
	}
	if err := d.setup(ctx); err != nil {
		d.cleanup()
		if wasInterrupted() {
			fmt.Fprintln(stderr, "demo: interrupted; everything the demo made is removed")
			return 130
		}
		fmt.Fprintf(stderr, "demo: %v\n", err)
		return 2
	}
	ok, err := d.runPipeline(ctx)
	// A run that went wrong keeps the daemon's log (its directory goes).
	kept := ""
	if (err != nil || !ok) && !wasInterrupted() {
		kept = d.keepLog()
	}
	d.cleanup()
	if wasInterrupted() {
		fmt.Fprintln(stderr, "demo: interrupted; everything the demo made is removed")
		return 130
	}
	if kept != "" {
		defer fmt.Fprintf(stderr, "demo: the daemon's log is kept in %s\n", kept)
	}
	if err != nil {
		fmt.Fprintf(stderr, "demo: %v\n", err)
		return 1
	}
	if !ok {
		fmt.Fprintln(stdout, "\nThe sample pipeline did NOT end as expected (see above).")
		return 1
	}
	fmt.Fprintln(stdout, "\nThe sample pipeline ended as expected; everything the demo made is removed.")
	return 0
}

type demo struct {
	out   io.Writer
	cli   *client.Client
	bin   string
	start time.Time
	prog  *coordinatortest.Program
	dir   string
	gl    *coordinatortest.Server
	git   *gitserve.Server
	cfg   string
	sha   string
	// hostTag is the tag of the host base image the demo's daemon builds
	// on first use (local-docker's, named after its version and binary);
	// hostImagesBefore are the host base images there before the run: an
	// image of that tag made during the run is removed at the end.
	hostTag          string
	hostImagesBefore map[string]bool
}

func (d *demo) logf(format string, args ...any) {
	fmt.Fprintf(d.out, "%6.1fs  %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
}

func (d *demo) setup(ctx context.Context) error {
	var err error
	if d.dir, err = os.MkdirTemp("", "paas-runner-demo"); err != nil {
		return err
	}
	if d.hostImagesBefore, err = d.hostImages(ctx); err != nil {
		return err
	}
	// paas-runner VERSION (revision …)
	if out, err := exec.CommandContext(ctx, d.bin, "--version").Output(); err == nil {
		if f := strings.Fields(string(out)); len(f) > 1 {
			d.hostTag = localdocker.BaseImageTag(f[1], d.bin)
		}
	}
	d.logf("building the job image %s (FROM scratch + Debian's busybox-static)", jobImage)
	if err := buildBusybox(ctx, d.cli); err != nil {
		return err
	}
	d.gl = coordinatortest.New(d.prog)
	d.gl.AddRunner(runnerToken)
	repos := filepath.Join(d.dir, "repos")
	if d.sha, err = gitserve.MakeRepo(repos, "demo/sample.git", map[string]string{
		"README":         "hello from the sample repository\n",
		".gitlab-ci.yml": "# the sample pipeline the demo queues (build, test-with-service, package, lint)\n",
	}); err != nil {
		return err
	}
	// GitLab's job tokens clone: user gitlab-ci-token, password the token.
	d.git, err = gitserve.New(repos, func(u, p string) bool { return u == "gitlab-ci-token" && d.isJobToken(p) })
	if err != nil {
		return err
	}
	d.cfg = filepath.Join(d.dir, "config.toml")
	conf := fmt.Sprintf(`# written by the demo
concurrent = 8
check_interval = 0.5
state_file = %q

[[guards.pools]]
  name = "envs"
  [guards.pools.locks]
    env-a = "region=eu-west-1"
    env-b = "region=us-east-1"

[[runners]]
name = "demo"
url = %q
token = %q
executor = "local-docker"
  [runners.local_docker]
  network_mode = "host"
  [runners.docker]
  pull_policy = "if-not-present"
`, filepath.Join(d.dir, "state.json"), d.gl.URL, runnerToken)
	d.logf("development GitLab at %s; sample repository at %s/demo/sample.git", d.gl.URL, d.git.URL)
	return os.WriteFile(d.cfg, []byte(conf), 0o600)
}

func (d *demo) isJobToken(tok string) bool {
	for _, j := range d.gl.Jobs() {
		if j.Token == tok && j.Status == "running" {
			return true
		}
	}
	return false
}

func (d *demo) runPipeline(ctx context.Context) (bool, error) {
	jobs := pipeline()
	ids := make([]int64, len(jobs))
	for i, s := range jobs {
		// the job token is chosen here, so that the clone URL has it
		tok := jobToken()
		extra := map[string]any{
			"token":       tok,
			"image":       map[string]any{"name": jobImage, "pull_policy": []string{"if-not-present"}},
			"job_info":    map[string]any{"name": s.name, "stage": s.stage, "project_id": 1, "project_name": "sample", "project_full_path": "demo/sample"},
			"git_info":    map[string]any{"repo_url": d.git.URLWith("demo/sample.git", "gitlab-ci-token", tok), "ref": "main", "sha": d.sha, "ref_type": "branch", "depth": 1, "refspecs": []string{"+refs/heads/main:refs/remotes/origin/main"}},
			"steps":       []map[string]any{{"name": "script", "script": s.script, "timeout": 600, "when": "on_success"}},
			"runner_info": map[string]any{"timeout": 600},
			"variables": []map[string]any{
				{"key": "CI_JOB_TOKEN", "value": tok, "public": false, "masked": true},
				{"key": "CI_SERVER_URL", "value": d.gl.URL, "public": true, "masked": false},
				{"key": "CI_PROJECT_PATH", "value": "demo/sample", "public": true, "masked": false},
				{"key": "CI_JOB_NAME", "value": s.name, "public": true, "masked": false},
				{"key": "CI_PROJECT_ROOT_NAMESPACE", "value": "demo", "public": true, "masked": false},
				{"key": "CI_PIPELINE_ID", "value": "1", "public": true, "masked": false},
			},
		}
		vars := extra["variables"].([]map[string]any)
		for _, k := range slices.Sorted(maps.Keys(s.vars)) {
			vars = append(vars, map[string]any{"key": k, "value": s.vars[k], "public": true, "masked": false})
		}
		extra["variables"] = vars
		for k, v := range s.extra {
			extra[k] = v
		}
		q := d.gl.Enqueue(runnerToken, extra)
		ids[i] = q.ID
		d.logf("queued job #%d %-18s (stage %s)", q.ID, s.name, s.stage)
	}

	logPath := filepath.Join(d.dir, "paas-runner.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return false, err
	}
	defer logf.Close()
	cmd := exec.Command(d.bin, d.cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return false, err
	}
	d.logf("started paas-runner (pid %d, log %s, kept if the run goes wrong)", cmd.Process.Pid, logPath)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopDaemon := func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			return err
		case <-time.After(90 * time.Second):
			_ = cmd.Process.Kill()
			return errors.New("paas-runner did not stop within 90 s of SIGTERM")
		}
	}

	seen := map[int64]string{}
	ready := map[int64]bool{}
	waiting := map[int64]bool{}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			_ = stopDaemon()
			return false, errors.New("the pipeline did not end in time")
		case err := <-exited:
			return false, fmt.Errorf("paas-runner exited early (%v); its log:\n%s", err, tail(logPath, 20))
		case <-tick.C:
		}
		done = true
		for i, id := range ids {
			j := d.gl.Job(id)
			st := j.Status
			if st == "pending" {
				st = "" // queued, or handed out and not confirmed yet (two-phase commit)
			}
			if st != seen[id] {
				from := seen[id]
				if from == "" {
					from = "queued"
				}
				extra := ""
				if j.FailureReason != "" {
					extra = " (" + j.FailureReason + ")"
				}
				d.logf("job #%d %-18s %s → %s%s", id, jobs[i].name, from, j.Status, extra)
				seen[id] = st
			}
			if !waiting[id] {
				if w := waitingFor(string(j.Trace)); w != "" {
					waiting[id] = true
					d.logf("job #%d %-18s waiting for %s (no host meanwhile)", id, jobs[i].name, w)
				}
			}
			if !ready[id] {
				if p := provisioning(string(j.Trace)); p != "" {
					ready[id] = true
					d.logf("job #%d %-18s host ready after %s", id, jobs[i].name, p)
				}
			}
			if !final(j.Status) {
				done = false
			}
		}
	}
	d.logf("every job ended; waiting for their hosts to be removed")
	if err := d.waitNoHosts(ctx); err != nil {
		_ = stopDaemon()
		return false, err
	}
	d.logf("stopping paas-runner (SIGTERM: drain)")
	if err := stopDaemon(); err != nil {
		return false, fmt.Errorf("paas-runner: %v; its log:\n%s", err, tail(logPath, 20))
	}

	ok := true
	for i, id := range ids {
		j := d.gl.Job(id)
		fmt.Fprintf(d.out, "\n──── job #%d %s: %s ────\n%s", id, jobs[i].name, j.Status, readable(j.Trace))
	}
	// No token, the runner's or a job's, in the daemon's log or a job log,
	// whole or in part.
	daemonLog, _ := os.ReadFile(logPath)
	for _, j := range d.gl.Jobs() {
		for what, text := range map[string]string{"the daemon's log": string(daemonLog), fmt.Sprintf("job #%d's log", j.ID): string(j.Trace)} {
			if n := len(leaked(text, d.secrets())); n > 0 {
				ok = false
				fmt.Fprintf(d.out, "%d tokens appear in %s\n", n, what)
			}
		}
	}
	fmt.Fprintln(d.out)
	tw := tabwriter.NewWriter(d.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tNAME\tSTATUS\tDURATION\tPROVISIONING\tLOCK WAIT\tAS EXPECTED")
	for i, id := range ids {
		j := d.gl.Job(id)
		problems := jobs[i].verify(j)
		verdict := "yes"
		if len(problems) > 0 {
			ok = false
			verdict = "NO: " + strings.Join(problems, "; ")
		}
		status := j.Status
		if j.FailureReason != "" {
			status += " (" + j.FailureReason + ")"
		}
		dur := "-"
		if !j.AcquiredAt.IsZero() && !j.FinishedAt.IsZero() {
			dur = fmt.Sprintf("%.1fs", j.FinishedAt.Sub(j.AcquiredAt).Seconds())
		}
		prov := provisioning(string(j.Trace))
		if prov == "" {
			prov = "-"
		}
		wait := lockWait(readable(j.Trace))
		if wait == "" {
			wait = "-"
		}
		fmt.Fprintf(tw, "#%d\t%s\t%s\t%s\t%s\t%s\t%s\n", id, jobs[i].name, status, dur, prov, wait, verdict)
	}
	tw.Flush()
	var got []coordinatortest.Job
	for _, id := range ids {
		got = append(got, d.gl.Job(id))
	}
	for _, p := range guardProblems(jobs, got) {
		ok = false
		fmt.Fprintf(d.out, "NOT AS EXPECTED: %s\n", p)
	}
	for _, j := range d.gl.Jobs() {
		if j.Acquisitions > 1 {
			ok = false
			fmt.Fprintf(d.out, "job #%d was handed out %d times\n", j.ID, j.Acquisitions)
		}
	}
	return ok, nil
}

func (s sample) verify(j coordinatortest.Job) []string {
	var p []string
	if j.Status != s.wantStatus {
		p = append(p, fmt.Sprintf("status %s, want %s", j.Status, s.wantStatus))
	}
	if s.wantReason != "" && j.FailureReason != s.wantReason {
		p = append(p, fmt.Sprintf("failure reason %q, want %s", j.FailureReason, s.wantReason))
	}
	for _, w := range s.wantLog {
		if !strings.Contains(string(j.Trace), w) {
			p = append(p, fmt.Sprintf("log lacks %q", w))
		}
	}
	if s.check != nil {
		if err := s.check(j); err != nil {
			p = append(p, err.Error())
		}
	}
	return p
}

// sectionRe matches GitLab's collapsible-section markers, which a terminal
// would show raw.
var sectionRe = regexp.MustCompile(`section_(start|end):[0-9]+:[A-Za-z0-9_.-]+(\[[^\]]*\])?\r?\x1b\[0K`)

// readable is a job log for a terminal: colours kept, section markers
// dropped.
func readable(trace []byte) string { return sectionRe.ReplaceAllString(string(trace), "") }

var readyRe = regexp.MustCompile(`host ready after ([0-9.]+s)`)

func provisioning(trace string) string {
	if m := readyRe.FindStringSubmatch(trace); m != nil {
		return m[1]
	}
	return ""
}

var waitingRe = regexp.MustCompile(`paas-runner: waiting for ([^\r\n\x1b]+)`)

// waitingFor is what a job's log says it waits for ("" when it does not).
func waitingFor(trace string) string {
	if m := waitingRe.FindStringSubmatch(trace); m != nil {
		return strings.TrimSpace(m[1])
	}
	return ""
}

func final(st string) bool { return st == "success" || st == "failed" || st == "canceled" }

// runnerFilter selects what the daemon made for the demo's runner.
func runnerFilter() filters.Args {
	return filters.NewArgs(filters.Arg("label", "paas-runner.runner="+runnerID()))
}

func (d *demo) waitNoHosts(ctx context.Context) error {
	for {
		cs, err := d.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: runnerFilter()})
		if err != nil {
			return err
		}
		if len(cs) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d host containers still there", len(cs))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// cleanup removes what the demo made: containers, volumes, networks and
// images of its runner (had the daemon left any: an interrupted run
// leaves its jobs' hosts, their builds volumes and service networks), the
// job image it built, the host base image if the demo's daemon built it,
// and its temporary directory.
func (d *demo) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Hosts first: a host still running makes job containers (with the
	// engine's socket) while the others are removed; then what they made.
	for pass := 0; pass < 5; pass++ {
		cs, err := d.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: runnerFilter()})
		if err != nil || len(cs) == 0 {
			break
		}
		sort.SliceStable(cs, func(i, k int) bool {
			return cs[i].Labels[labels.LabelRole] == labels.RoleHost && cs[k].Labels[labels.LabelRole] != labels.RoleHost
		})
		for _, c := range cs {
			_ = d.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
		}
	}
	var left []string
	if nws, err := d.cli.NetworkList(ctx, network.ListOptions{Filters: runnerFilter()}); err == nil {
		for _, n := range nws {
			if err := d.cli.NetworkRemove(ctx, n.ID); err != nil && !cerrdefs.IsNotFound(err) {
				left = append(left, "network "+n.Name)
			}
		}
	}
	if vs, err := d.cli.VolumeList(ctx, volume.ListOptions{Filters: runnerFilter()}); err == nil {
		for _, v := range vs.Volumes {
			if err := d.cli.VolumeRemove(ctx, v.Name, true); err != nil && !cerrdefs.IsNotFound(err) {
				left = append(left, "volume "+v.Name)
			}
		}
	}
	imgs, _ := d.cli.ImageList(ctx, image.ListOptions{All: true})
	for _, im := range imgs {
		// the host base image, when the demo's daemon built it: its tag,
		// made during the run, and no container (another daemon's, on a
		// shared engine) uses it
		builtHere := d.hostTag != "" && slices.Contains(im.RepoTags, d.hostTag) && im.Labels[hostImageLabel] != "" &&
			d.hostImagesBefore != nil && !d.hostImagesBefore[im.ID] && !d.imageInUse(ctx, im.ID)
		if im.Labels[demoLabel] == runID || im.Labels["paas-runner.runner"] == runnerID() || builtHere {
			if _, err := d.cli.ImageRemove(ctx, im.ID, image.RemoveOptions{Force: true, PruneChildren: true}); err != nil && !cerrdefs.IsNotFound(err) {
				left = append(left, "image "+strings.Join(im.RepoTags, ","))
			}
		}
	}
	sort.Strings(left)
	if len(left) > 0 {
		fmt.Fprintf(d.out, "could not remove: %s\n", strings.Join(left, ", "))
	}
	if d.git != nil {
		d.git.Close()
	}
	d.prog.Close()
	if d.dir != "" {
		os.RemoveAll(d.dir)
	}
}

// keepLog moves the daemon's log out of the demo's directory, which
// cleanup removes, and returns where it is now ("" when there is none).
func (d *demo) keepLog() string {
	if d.dir == "" {
		return ""
	}
	kept := filepath.Join(filepath.Dir(d.dir), "paas-runner-demo-"+runID+".log")
	if err := os.Rename(filepath.Join(d.dir, "paas-runner.log"), kept); err != nil {
		return ""
	}
	return kept
}

// hostImages are the IDs of the engine's local-docker host base images.
func (d *demo) hostImages(ctx context.Context) (map[string]bool, error) {
	imgs, err := d.cli.ImageList(ctx, image.ListOptions{Filters: filters.NewArgs(filters.Arg("label", hostImageLabel))})
	if err != nil {
		return nil, err
	}
	ids := map[string]bool{}
	for _, im := range imgs {
		ids[im.ID] = true
	}
	return ids, nil
}

// imageInUse: a container of the engine was made from image id.
func (d *demo) imageInUse(ctx context.Context, id string) bool {
	cs, err := d.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("ancestor", id))})
	return err != nil || len(cs) > 0
}

func buildBusybox(ctx context.Context, cli *client.Client) error {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("the job image needs Debian's busybox-static (/bin/busybox): `make docker-up` installs it as root (%v)", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	files := map[string][]byte{
		"Dockerfile": []byte("FROM scratch\nCOPY busybox /bin/sh\nCOPY busybox /bin/busybox\nLABEL " + demoLabel + "=" + runID + "\n"),
		"busybox":    bb,
	}
	for name, data := range files {
		_ = tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(data)), Typeflag: tar.TypeReg})
		_, _ = tw.Write(data)
	}
	_ = tw.Close()
	resp, err := cli.ImageBuild(ctx, &buf, build.ImageBuildOptions{Tags: []string{jobImage}, Remove: true, ForceRemove: true})
	if err != nil {
		return fmt.Errorf("building %s: %w", jobImage, err)
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var m struct{ Error string }
		if err := dec.Decode(&m); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		} else if m.Error != "" {
			return fmt.Errorf("building %s: %s", jobImage, strings.TrimSpace(m.Error))
		}
	}
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func runnerID() string { return config.RunnerID(runnerToken) }

// jobToken is a fresh job token, random as GitLab's are.
func jobToken() string { return "glcbt-" + randomHex(12) }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// secrets are the tokens of the run: the runner's and the jobs'.
func (d *demo) secrets() []string {
	out := []string{runnerToken}
	if d.gl != nil {
		for _, j := range d.gl.Jobs() {
			out = append(out, j.Token)
		}
	}
	return out
}

// leaked returns the secrets text shows whole or by a piece of 12
// characters or more after their public prefix (a log may name a token by
// its prefix and first 8 characters, as paas-runner does, never by more).
func leaked(text string, secrets []string) []string {
	var out []string
	for _, s := range secrets {
		body := strings.TrimPrefix(strings.TrimPrefix(s, "glrt-"), "glcbt-")
		found := strings.Contains(text, s)
		for i := 0; !found && i+12 <= len(body); i++ {
			found = strings.Contains(text, body[i:i+12])
		}
		if found {
			out = append(out, s)
		}
	}
	return out
}

package main

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/pipeguard/pipeguardtest"
)

const guardToken = "glpat-cli-guard-token"

// syncBuffer is a bytes.Buffer safe to read while runGuard writes.
type syncBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{}
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.changed != nil {
		close(s.changed)
	}
	s.changed = make(chan struct{})
	return s.b.Write(p)
}

// waitCount blocks until sub occurs n times in what was written.
func (s *syncBuffer) waitCount(t *testing.T, sub string, n int) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		s.mu.Lock()
		ok := strings.Count(s.b.String(), sub) >= n
		if s.changed == nil {
			s.changed = make(chan struct{})
		}
		ch := s.changed
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("%q not written %d times", sub, n)
		}
	}
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type guardRun struct {
	code           int
	stdout, stderr string
}

type guardCase struct {
	t    *testing.T
	srv  *coordinatortest.Server
	env  map[string]string
	opts guardOptions
}

func newGuardCase(t *testing.T) *guardCase {
	srv := coordinatortest.New(t)
	srv.AddAPIToken(guardToken, "api")
	return &guardCase{t: t, srv: srv, env: map[string]string{
		"CI_API_V4_URL": srv.URL + "/api/v4", "CI_PROJECT_ID": "7", "PRIVATE_TOKEN": guardToken,
	}, opts: guardOptions{interval: func() time.Duration { return 5 * time.Millisecond }, pid: 4242}}
}

func (g *guardCase) lookup(k string) (string, bool) { v, ok := g.env[k]; return v, ok }

func (g *guardCase) start(args ...string) (<-chan guardRun, *syncBuffer) {
	out, errb := &syncBuffer{}, &syncBuffer{}
	ch := make(chan guardRun, 1)
	go func() {
		code := runGuard(context.Background(), args, g.lookup, out, errb, g.opts)
		ch <- guardRun{code, out.String(), errb.String()}
	}()
	return ch, out
}

func (g *guardCase) run(args ...string) guardRun {
	g.t.Helper()
	ch, _ := g.start(args...)
	return g.result(ch)
}

func (g *guardCase) result(ch <-chan guardRun) guardRun {
	g.t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(30 * time.Second):
		g.t.Fatal("guard did not exit")
	}
	return guardRun{}
}

var logPrefix = regexp.MustCompile(`(?m)^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|ERROR) paas-runner-guard MainProcess\[4242\]: `)

// lines strips the log prefix: "INFO msg" per line.
func lines(out string) string { return logPrefix.ReplaceAllString(out, "$1 ") }

func TestGuardNoConflictProceeds(t *testing.T) {
	g := newGuardCase(t)
	own := g.srv.AddPipeline(7, "12-mine", "running")
	g.srv.AddPipeline(7, "main", "running")     // ref does not match ^\d+\-
	g.srv.AddPipeline(7, "13-other", "pending") // status does not match running
	g.srv.AddPipeline(7, "14-done", "success")
	r := g.run("-i", fmt.Sprint(own))
	if r.code != 0 || lines(r.stdout) != "INFO No other conflicting pipelines detected, proceeding ...\n" || r.stderr != "." {
		t.Fatalf("%+v", r)
	}
	if !logPrefix.MatchString(r.stdout) {
		t.Fatalf("log line format: %q", r.stdout)
	}
}

func TestGuardWaitsThenProceeds(t *testing.T) {
	g := newGuardCase(t)
	old := g.srv.AddPipeline(7, "11-old", "running")
	own := g.srv.AddPipeline(7, "12-mine", "running")
	ch, _ := g.start("--ci-pipeline-id", fmt.Sprint(own))
	g.srv.WaitFor(20*time.Second, "three polls", func(s *coordinatortest.Server) bool {
		return s.CountOf("GET /api/v4/projects/7/pipelines") >= 3
	})
	g.srv.SetPipelineStatus(old, "success")
	r := g.result(ch)
	p := g.srv.PipelineOf(old)
	want := fmt.Sprintf("\nINFO 1 other pipelines in (running) state.\nINFO Pipeline #%d running    %s 11-old\n"+
		"\nINFO 0 other pipelines in (running) state.\nINFO No other conflicting pipelines detected, proceeding ...\n", old, p.SHA)
	if r.code != 0 || lines(r.stdout) != want {
		t.Fatalf("code %d\n%s\nwant\n%s", r.code, lines(r.stdout), want)
	}
	if !regexp.MustCompile(`^\.+$`).MatchString(r.stderr) {
		t.Fatalf("stderr %q: a dot per unchanged poll", r.stderr)
	}
}

func TestGuardNoWaitExit7(t *testing.T) {
	for _, args := range [][]string{{"-x"}, {"--no-wait"}, {"--exit"}, {"--no-w"}, {"-qx"}} {
		g := newGuardCase(t)
		old := g.srv.AddPipeline(7, "11-old", "running")
		own := g.srv.AddPipeline(7, "12-mine", "running")
		r := g.run(append(args, "-i", fmt.Sprint(own))...)
		if r.code != 7 || !strings.HasSuffix(lines(r.stdout), "ERROR 1 other pipelines in (running) state.. Exiting on request.\n") {
			t.Fatalf("%v: %+v", args, r)
		}
		quiet := args[0] == "-qx"
		if listed := strings.Contains(r.stdout, fmt.Sprintf("Pipeline #%d", old)); listed == quiet {
			t.Fatalf("%v: conflicting pipeline listed: %v", args, listed)
		}
	}
	// GUARD_NO_WAIT does the same.
	g := newGuardCase(t)
	g.srv.AddPipeline(7, "11-old", "running")
	g.env["GUARD_NO_WAIT"] = "true"
	g.env["CI_PIPELINE_ID"] = fmt.Sprint(g.srv.AddPipeline(7, "12-mine", "running"))
	if r := g.run(); r.code != 7 {
		t.Fatalf("GUARD_NO_WAIT: %+v", r)
	}
}

func TestGuardTimeoutExit11(t *testing.T) {
	g := newGuardCase(t)
	clk := pipeguardtest.NewClock()
	g.opts.clock = clk
	g.opts.interval = func() time.Duration { return 3 * time.Second }
	g.srv.AddPipeline(7, "11-old", "running")
	own := g.srv.AddPipeline(7, "12-mine", "running")
	ch, _ := g.start("-w", "7", "-i", fmt.Sprint(own))
	for range 3 {
		if !clk.WaitPending(2, 20*time.Second) {
			t.Fatal("guard not waiting")
		}
		clk.Advance(3 * time.Second)
	}
	r := g.result(ch)
	if r.code != 11 || !strings.HasSuffix(lines(r.stdout), "ERROR Timeout reached after 7 seconds, giving up ...\n") {
		t.Fatalf("%+v", r)
	}
}

func TestGuardEnvironmentBeatsFlags(t *testing.T) {
	g := newGuardCase(t)
	g.srv.AddPipeline(7, "release/1", "running")
	g.srv.AddPipeline(8, "feature/x", "running")
	own := g.srv.AddPipeline(7, "release/2", "running")
	id := fmt.Sprint(own)
	cases := []struct {
		name string
		env  map[string]string
		args []string
		code int
	}{
		{"flag alone", nil, []string{"-x", "-c", "^release/"}, 7},
		{"GUARD_REF_REGEX beats -c", map[string]string{"GUARD_REF_REGEX": "^feature/"}, []string{"-x", "-c", "^release/"}, 0},
		{"empty variable ignored", map[string]string{"GUARD_REF_REGEX": ""}, []string{"-x", "--guard-ref-regex=^release/"}, 7},
		{"GUARD_STATUS_REGEX beats -s", map[string]string{"GUARD_STATUS_REGEX": "pending"}, []string{"-x", "-c=^release/", "-s", "running"}, 0},
		{"CI_PROJECT_ID beats -p", map[string]string{"CI_PROJECT_ID": "7"}, []string{"-x", "-c^release/", "-p", "8"}, 7},
		{"-p used without CI_PROJECT_ID", map[string]string{"CI_PROJECT_ID": ""}, []string{"-x", "--check", "^feature/", "--project-id", "8"}, 7},
		{"PRIVATE_TOKEN beats -t", map[string]string{"PRIVATE_TOKEN": "glpat-wrong"}, []string{"-x", "-c", "^release/", "-t", guardToken}, 1},
		{"-t used without PRIVATE_TOKEN", map[string]string{"PRIVATE_TOKEN": ""}, []string{"-x", "-c", "^release/", "--api-token", guardToken}, 7},
		{"GUARD_PRIVATE_TOKEN beats PRIVATE_TOKEN", map[string]string{"PRIVATE_TOKEN": "glpat-wrong", "GUARD_PRIVATE_TOKEN": guardToken}, []string{"-x", "-c", "^release/"}, 7},
		{"CI_PIPELINE_ID beats -i", map[string]string{"CI_PIPELINE_ID": id}, []string{"-x", "-c", "^release/", "-i", "1"}, 7},
		{"CI_API_V4_URL beats -u", nil, []string{"-x", "-c", "^release/", "-u", "http://127.0.0.1:1/api/v4"}, 7},
		{"prefix of a long name", nil, []string{"-x", "--guard-ref", "^release/"}, 7},
		{"--guard is a name", nil, []string{"-x", "--guard", "^release/"}, 7},
		{"GUARD_ORDER=any counts newer ones", map[string]string{"GUARD_ORDER": "any", "CI_PIPELINE_ID": "1"}, []string{"-x", "-c", "^release/"}, 7},
		{"oldest_first ignores newer ones", map[string]string{"CI_PIPELINE_ID": "1"}, []string{"-x", "-c", "^release/"}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g.env = map[string]string{"CI_API_V4_URL": g.srv.URL + "/api/v4", "CI_PROJECT_ID": "7", "PRIVATE_TOKEN": guardToken, "CI_PIPELINE_ID": id}
			for k, v := range c.env {
				g.env[k] = v
			}
			if r := g.run(c.args...); r.code != c.code {
				t.Fatalf("exit %d, want %d\n%s%s", r.code, c.code, r.stdout, r.stderr)
			}
		})
	}
}

func TestGuardUsageErrors(t *testing.T) {
	g := newGuardCase(t)
	g.env = map[string]string{}
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "the following arguments are required: --ci-api-v4-url/-u/--api-url (or CI_API_V4_URL), --ci-project-id/-p/--project-id (or CI_PROJECT_ID), --ci-pipeline-id/-i/--pipeline-id (or CI_PIPELINE_ID), --private-token/-t/--access-token/--api-token (or GUARD_PRIVATE_TOKEN or PRIVATE_TOKEN)"},
		{[]string{"-u", "x", "-p", "1", "-i", "2", "-t", "t", "-w", "soon"}, `argument -w/--timeout/--guard-timeout (or GUARD_TIMEOUT): invalid int value: "soon"`},
		{[]string{"--g", "x"}, "ambiguous option: --g could match --guard, --guard-ref-regex, --guard-status-regex, --guard-timeout"},
		{[]string{"-u", "x", "-p", "1", "-i", "two", "-t", "t"}, `"two" is not a pipeline id`},
		{[]string{"-u", "x", "-p", "1", "-i", "2", "-t", "t", "-s", "runing"}, `GUARD_STATUS_REGEX: "runing" matches no pipeline status`},
		{[]string{"-c"}, "argument --guard-ref-regex/-c/--check/--guard: expected one argument"},
		{[]string{"-z"}, "unrecognized arguments: -z"},
		{[]string{"extra"}, "unrecognized arguments: extra"},
	} {
		r := g.run(c.args...)
		if r.code != 2 || !strings.Contains(r.stderr, c.want) || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%v: exit %d %q, want %q", c.args, r.code, r.stderr, c.want)
		}
	}
	// a bad GUARD_TIMEOUT (it beats -w) is named
	g.env["GUARD_TIMEOUT"] = "soon"
	if r := g.run("-u", "x", "-p", "1", "-i", "2", "-t", "t"); r.code != 2 || !strings.Contains(r.stderr, `(or GUARD_TIMEOUT): invalid int value: "soon"`) {
		t.Errorf("GUARD_TIMEOUT: %+v", r)
	}
	delete(g.env, "GUARD_TIMEOUT")
	g.env["GUARD_ORDER"] = "lifo"
	if r := g.run("-u", "x", "-p", "1", "-i", "2", "-t", "t"); r.code != 2 || !strings.Contains(r.stderr, "GUARD_ORDER") {
		t.Errorf("GUARD_ORDER: %+v", r)
	}
	if r := g.run("--help"); r.code != 0 || !strings.Contains(r.stdout, "-c, --check, --guard") {
		t.Errorf("help: %+v", r)
	}
}

func TestGuardTokenRejected(t *testing.T) {
	g := newGuardCase(t)
	g.env["PRIVATE_TOKEN"] = "glpat-nope"
	r := g.run("-i", "5")
	if r.code != 1 || !strings.HasSuffix(lines(r.stdout), "ERROR guard token rejected by GitLab (401)\n") {
		t.Fatalf("%+v", r)
	}
}

func TestGuardAPIErrorRetried(t *testing.T) {
	g := newGuardCase(t)
	clk := pipeguardtest.NewClock()
	g.opts.clock = clk
	own := g.srv.AddPipeline(7, "12-mine", "running")
	g.srv.Inject(`^GET /api/v4/projects/7/pipelines$`, 502, 2, nil)
	ch, out := g.start("-i", fmt.Sprint(own))
	for i := range 2 {
		if !clk.WaitPending(2, 20*time.Second) {
			t.Fatal("not backing off")
		}
		out.waitCount(t, "GuardApiAccessException", i+1)
		clk.Advance(clk.Next())
	}
	r := g.result(ch)
	got := lines(r.stdout)
	if r.code != 0 || strings.Count(got, "ERROR GuardApiAccessException(\"Failed to retrieve project pipeline data, GitLab answered 502") != 2 ||
		!strings.HasSuffix(got, "proceeding ...\n") {
		t.Fatalf("%+v", r)
	}
}

func TestGuardOrderAndNarrowing(t *testing.T) {
	g := newGuardCase(t)
	old := g.srv.AddPipeline(7, "11-old", "running",
		coordinatortest.PipelineJob{Name: "test", Stage: "test", Status: "running"},
		coordinatortest.PipelineJob{Name: "deploy", Stage: "deploy", Status: "created"})
	own := g.srv.AddPipeline(7, "12-mine", "running")
	newer := g.srv.AddPipeline(7, "13-new", "running")
	g.env["CI_PIPELINE_ID"] = fmt.Sprint(own)

	g.env["GUARD_ORDER"] = "newest_wins"
	r := g.run()
	if r.code != 7 || !strings.HasSuffix(lines(r.stdout), fmt.Sprintf("ERROR superseded by pipeline %d, giving way ...\n", newer)) {
		t.Fatalf("newest_wins: %+v", r)
	}
	delete(g.env, "GUARD_ORDER")
	g.env["GUARD_JOB_REGEX"] = "^deploy$"
	if r := g.run("-x"); r.code != 0 {
		t.Fatalf("old's deploy job is not running: %+v", r)
	}
	g.srv.SetPipelineJobStatus(old, "deploy", "running")
	if r := g.run("-x"); r.code != 7 {
		t.Fatalf("old's deploy job runs: %+v", r)
	}
	delete(g.env, "GUARD_JOB_REGEX")
	g.env["GUARD_STAGE_REGEX"] = "^test$"
	g.srv.SetPipelineJobStatus(old, "test", "success")
	if r := g.run("-x"); r.code != 0 {
		t.Fatalf("old's test stage is done: %+v", r)
	}
	// newest_wins + GUARD_CANCEL_OLDER: the newest cancels the older ones.
	g.env = map[string]string{"CI_API_V4_URL": g.srv.URL + "/api/v4", "CI_PROJECT_ID": "7", "PRIVATE_TOKEN": guardToken,
		"CI_PIPELINE_ID": fmt.Sprint(newer), "GUARD_ORDER": "newest_wins", "GUARD_CANCEL_OLDER": "true"}
	r = g.run("-x")
	if r.code != 0 || g.srv.PipelineOf(own).Status != "canceled" || g.srv.PipelineOf(old).Status != "canceled" {
		t.Fatalf("cancel older: %+v", r)
	}
	want := ""
	for _, id := range []int64{own, old} {
		want += fmt.Sprintf("INFO Cancelled older Pipeline #%d canceled   %s %s\n", id, g.srv.PipelineOf(id).SHA, g.srv.PipelineOf(id).Ref)
	}
	if got := lines(r.stdout); got != want+"INFO No other conflicting pipelines detected, proceeding ...\n" {
		t.Fatalf("cancel older's output:\n%s", got)
	}
}

// FuzzGuardArgs: any command line parses or is refused, never panics, and a
// parsed one only holds known option names.
func FuzzGuardArgs(f *testing.F) {
	for _, s := range []string{"-c ^x -s running", "-qx --guard-ref=a", "-c=b -w 10", "--g", "-", "--", "-- x", "-cq", "--no-wait=1"} {
		f.Add(s)
	}
	known := map[string]bool{}
	for _, fl := range guardFlags {
		known[fl.names[0]] = true
	}
	f.Fuzz(func(t *testing.T, s string) {
		vals, _, err := parseGuardArgs(strings.Fields(s), func(string) (string, bool) { return "", false })
		if err != nil {
			return
		}
		for k := range vals {
			if !known[k] {
				t.Fatalf("%q: unknown key %q", s, k)
			}
		}
	})
}

// Every name gitlab-job-guard accepts (the list, and the long names
// its env_var_as_arg derives from the variables: --guard-ref-regex,
// --ci-api-v4-url, …) sets its option; each variable beats it.
func TestGuardEveryFlagName(t *testing.T) {
	for key, c := range map[string]struct {
		env   string
		names []string
	}{
		"--guard-ref-regex":    {"GUARD_REF_REGEX", []string{"-c", "--check", "--guard", "--guard-ref-regex"}},
		"--guard-status-regex": {"GUARD_STATUS_REGEX", []string{"-s", "--status-regex", "--guard-status-regex"}},
		"--ci-api-v4-url":      {"CI_API_V4_URL", []string{"-u", "--api-url", "--ci-api-v4-url"}},
		"--ci-project-id":      {"CI_PROJECT_ID", []string{"-p", "--project-id", "--ci-project-id"}},
		"--ci-pipeline-id":     {"CI_PIPELINE_ID", []string{"-i", "--pipeline-id", "--ci-pipeline-id"}},
		"--private-token":      {"PRIVATE_TOKEN", []string{"-t", "--access-token", "--api-token", "--private-token"}},
		"--guard-timeout":      {"GUARD_TIMEOUT", []string{"-w", "--timeout", "--guard-timeout"}},
		"--no-wait":            {"", []string{"-x", "--no-wait", "--exit"}},
		"--silent":             {"", []string{"-q", "--silent", "--quiet"}},
	} {
		for _, name := range c.names {
			args := []string{name}
			if c.env != "" {
				args = append(args, "v-"+name)
			}
			none := func(string) (string, bool) { return "", false }
			vals, _, err := parseGuardArgs(args, none)
			want := "true"
			if c.env != "" {
				want = "v-" + name
			}
			if err != nil || len(vals) != 1 || vals[key] != want {
				t.Errorf("%v: %v %v, want %s=%s", args, vals, err, key, want)
			}
			if c.env == "" {
				continue
			}
			vals, _, err = parseGuardArgs(args, func(k string) (string, bool) { return "from-env", k == c.env })
			if err != nil || vals[key] != "from-env" {
				t.Errorf("%v with %s set: %v %v", args, c.env, vals, err)
			}
		}
	}
}

package main_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

// checkRefused asserts a refused start as an administrator expects it:
// exit 2, exactly the wanted lines (each naming what is wrong), no panic
// nor goroutine dump.
func checkRefused(t *testing.T, code int, stderr string, want ...string) {
	t.Helper()
	if code != 2 {
		t.Fatalf("exit %d, want 2; stderr:\n%s", code, stderr)
	}
	if strings.Contains(stderr, "panic") || strings.Contains(stderr, "goroutine ") {
		t.Fatalf("panic:\n%s", stderr)
	}
	lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
	if len(lines) != len(want) {
		t.Errorf("want %d line(s), got %d:\n%s", len(want), len(lines), stderr)
	}
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			t.Errorf("stderr does not say %q:\n%s", w, stderr)
		}
	}
}

// Bad configurations beyond TestBadInput's: each refused with one line per
// problem naming file:line and key (all problems at once), exit 2, and the
// state file never touched (it exists and must stay byte for byte).
func TestBadConfigurations(t *testing.T) {
	dir := t.TempDir()
	hosts := filepath.Join(dir, "hosts")
	os.Mkdir(hosts, 0o700)
	env := []string{"PAAS_RUNNER_TEST_EXECUTOR_DIR=" + hosts}
	state := filepath.Join(dir, "state.json")
	stateBody := `{"version": 1, "launched": [], "pending": [], "to_decommission": []}` + "\n  \n"
	head := fmt.Sprintf("state_file = %q\ncheck_interval = 0.05\n", state)
	runner := "[[runners]]\nurl = \"http://127.0.0.1:1\"\ntoken = \"glrt-bad-0123456789\"\nexecutor = \"test-dir\"\n"
	good := head + runner // lines 1-6
	os.WriteFile(filepath.Join(dir, "secret"), []byte("s3cret\n"), 0o600)
	cases := []struct {
		name, config string
		want         []string // one per line of stderr; "F" stands for the config's path
	}{
		{"empty", "", []string{"F: the configuration file is empty"}},
		{"blank", "\n\n   \n", []string{"F: the configuration file is empty"}},
		{"comments only", "# nothing yet\n", []string{"F: state_file: required"}},
		{"invalid TOML on line 7", good + "[[runners]\n", []string{"F:7: invalid TOML"}},
		{"integer overflow", "concurrent = 99999999999999999999\n" + good, []string{"F:1: invalid TOML"}},
		{"wrong types everywhere", "concurrent = \"many\"\nshutdown_timeout = \"1m\"\n" + good + "limit = \"2\"\n[runners.docker]\nprivileged = \"yes\"\n[guards]\nlease_margin = 600\n",
			[]string{"F:1: concurrent: wrong type", "F:2: shutdown_timeout: wrong type", "F:9: runners[0].limit: wrong type",
				"F:11: runners[0].docker.privileged: ", "F:13: guards.lease_margin: wrong type"}},
		{"unknown keys all at once", "colour = 1\n" + good + "tokn = \"x\"\n[runners.docker]\nprivilegd = true\n[runners.cache]\nTyp = \"s3\"\n[runners.local_docker]\nhots = \"x\"\n[guards]\nbackend = \"local\"\nbackned = 1\n",
			[]string{"F:1: colour: unknown key", "F:8: runners[0].tokn: unknown key", "F:10: runners[0].docker.privilegd: ", "F:12: runners[0].cache.Typ: unknown key",
				"F:13: runners[0].local_docker: only for executor local-docker", "F:14: runners[0].local_docker.hots: unknown key", "F:17: guards.backned: unknown key"}},
		{"zero and negative numbers", "concurrent = 0\npaas_max_concurrent_provisioning = 0\n" + good + "limit = -1\nunhealthy_requests_limit = -3\n",
			[]string{"F:1: concurrent: must be a positive", "F:2: paas_max_concurrent_provisioning: must be a positive", "F:9: runners[0].limit: must not be negative",
				"F:10: runners[0].unhealthy_requests_limit: must not be negative"}},
		{"huge numbers", "check_interval = 1e9\nshutdown_timeout = 1e12\nconcurrent = 1000000000\n" + strings.Replace(good, "check_interval = 0.05\n", "", 1) + "[guards]\nmax_waiting_jobs = 1000000000\n",
			[]string{"F:1: check_interval: 1e+09 seconds is absurd", "F:2: shutdown_timeout: 1e+12 seconds is absurd", "F:3: concurrent: 1000000000 is absurd",
				"F:10: guards.max_waiting_jobs: 1000000000 is absurd"}},
		{"nan and inf", "check_interval = nan\n" + strings.Replace(good, "check_interval = 0.05\n", "", 1) + "unhealthy_interval = -inf\n",
			[]string{"F:1: check_interval: NaN is not allowed", "F:7: runners[0].unhealthy_interval: -Inf is not allowed"}},
		{"bad durations", good + "[guards]\nlease_margin = \"10 minutes\"\n[guards.git]\nretry_delay = \"-2s\"\n",
			[]string{"F:8: guards.lease_margin: \"10 minutes\" is not a positive duration", "F:10: guards.git.retry_delay: \"-2s\" is not a positive duration"}},
		{"bad urls", "listen_address = \"9252\"\n" + strings.Replace(good, "http://127.0.0.1:1", "https://", 1) + "[guards]\nbackend = \"git\"\n[guards.git]\nurl = \"https://bot:pw@g.example/locks.git\"\n",
			[]string{"F:1: listen_address: \"9252\" is not host:port", "F:5: runners[0].url: \"https://\" is not an http:// or https:// URL",
				"F:11: guards.git.url: put the credentials in username and password"}},
		{"bad log settings", "log_level = \"loud\"\nlog_format = \"xml\"\n" + good,
			[]string{"F:1: log_level: unknown level \"loud\"", "F:2: log_format: unknown format \"xml\""}},
		{"missing secret files", good + "guard_api_token_file = \"nope.token\"\n[guards]\n[guards.git]\npassword_file = \"nope.pw\"\n",
			[]string{"F:7: runners[0].guard_api_token_file: cannot read " + filepath.Join(dir, "nope.token") + ": no such file or directory",
				"F:10: guards.git.password_file: cannot read " + filepath.Join(dir, "nope.pw") + ": no such file or directory"}},
		{"secret twice", good + "guard_api_token = \"x\"\nguard_api_token_file = \"secret\"\n", []string{"F:8: runners[0].guard_api_token_file: set only one of guard_api_token, guard_api_token_file"}},
		{"forwarded keys the inner runner could not read", good + "builds_dir = \"builds\"\nenvironment = [\"NOVALUE\"]\noutput_limit = -4\n",
			[]string{"F:7: runners[0].builds_dir: \"builds\": want an absolute directory", "F:8: runners[0].environment: entry 0: \"NOVALUE\" is not NAME=value",
				"F:9: runners[0].output_limit: must not be negative"}},
		{"cache of another kind", good + "[runners.cache]\nType = \"gcs\"\n", []string{"F:8: runners[0].cache.Type: \"gcs\" is not supported"}},
		{"duplicate runner", good + runner, []string{"F:9: runners[1].token: same token as runners[0]"}},
		{"no runners", head, []string{"F: no [[runners]] section"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			os.WriteFile(state, []byte(stateBody), 0o600)
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".toml")
			os.WriteFile(p, []byte(tc.config), 0o600)
			code, stderr := runOnce(t, env, p)
			var want []string
			for _, w := range tc.want {
				want = append(want, strings.Replace(w, "F", p, 1))
			}
			checkRefused(t, code, stderr, want...)
			if b, _ := os.ReadFile(state); string(b) != stateBody {
				t.Fatalf("state file changed:\n%s", b)
			}
		})
	}
}

// The configuration path itself: a directory, an unreadable file.
func TestBadConfigPath(t *testing.T) {
	dir := t.TempDir()
	env := []string{"PAAS_RUNNER_TEST_EXECUTOR_DIR=" + dir}
	code, stderr := runOnce(t, env, dir)
	checkRefused(t, code, stderr, "paas-runner: reading configuration: read "+dir+": is a directory")
	if os.Getuid() == 0 {
		return // root reads anything
	}
	p := filepath.Join(dir, "c.toml")
	os.WriteFile(p, []byte("concurrent = 1\n"), 0o000)
	code, stderr = runOnce(t, env, p)
	checkRefused(t, code, stderr, "paas-runner: reading configuration: open "+p+": permission denied")
}

// State file problems: refused with one line naming the file, which is
// left byte for byte as it was, journal included.
func TestBadStateFiles(t *testing.T) {
	dir := t.TempDir()
	hosts := filepath.Join(dir, "hosts")
	os.Mkdir(hosts, 0o700)
	env := []string{"PAAS_RUNNER_TEST_EXECUTOR_DIR=" + hosts}
	state := filepath.Join(dir, "state.json")
	heptapod, err := os.ReadFile("../../state/testdata/heptapod-1.0.json")
	if err != nil {
		t.Fatal(err)
	}
	cfg := func(extra string) string {
		p := filepath.Join(dir, "c.toml")
		os.WriteFile(p, []byte(fmt.Sprintf("state_file = %q\ncheck_interval = 0.05\n%s[[runners]]\nname = \"r\"\nurl = \"http://127.0.0.1:1\"\ntoken = \"glrt-bad-0123456789\"\nexecutor = \"test-dir\"\n", state, extra)), 0o600)
		return p
	}
	good := `{"version": 1, "launched": [{"runner_name": "t0000000", "job_id": 5, "token": "j"}], "pending": [], "to_decommission": []}`
	cases := []struct {
		name, state, journal, extra, want string
	}{
		{name: "truncated", state: `{"version": 1, "launched": [{"runner_name": "r", "job_`, want: state + ": corrupted state file"},
		{name: "not JSON", state: "version=1\n", want: state + ": corrupted state file"},
		{name: "newer", state: `{"version": 2, "launched": []}`, want: "state file version 2 is newer than this paas-runner understands (1); upgrade paas-runner"},
		{name: "damaged journal", state: good, journal: "{\"seq\":1,\"put\":garbage}\n{\"seq\":2,\"del\":{\"runner_name\":\"t0000000\",\"job_id\":5}}\n",
			want: state + ".journal: "},
		// refused after the state file was opened: it is not converted nor rewritten
		{name: "Heptapod file, configuration refused later", state: string(heptapod),
			extra: "[quota_computation]\nreference_runner = \"r\"\nreference_flavor = \"XXL\"\nreference_jobs_count = 2\n", want: "quota_computation.reference_flavor: runner \"r\": flavor \"XXL\" is unknown"},
		{name: "hand-written file, configuration refused later", state: "{ \"version\" : 1 ,\n  \"launched\": [] }\n",
			extra: "[quota_computation]\nreference_runner = \"r\"\nreference_flavor = \"XXL\"\nreference_jobs_count = 2\n", want: "quota_computation.reference_flavor"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(state + ".journal")
			os.WriteFile(state, []byte(tc.state), 0o600)
			if tc.journal != "" {
				os.WriteFile(state+".journal", []byte(tc.journal), 0o600)
			}
			code, stderr := runOnce(t, env, cfg(tc.extra))
			checkRefused(t, code, stderr, tc.want)
			if b, _ := os.ReadFile(state); string(b) != tc.state {
				t.Fatalf("state file changed:\n%s", b)
			}
			j, err := os.ReadFile(state + ".journal")
			if tc.journal == "" && err == nil {
				t.Fatalf("a journal was left: %q", j)
			}
			if tc.journal != "" && string(j) != tc.journal {
				t.Fatalf("journal changed: %q", j)
			}
		})
	}
	t.Run("a directory", func(t *testing.T) {
		os.Remove(state)
		os.Mkdir(state, 0o700)
		defer os.Remove(state)
		code, stderr := runOnce(t, env, cfg(""))
		checkRefused(t, code, stderr, ":1: state_file: "+state+" is a directory")
	})
	t.Run("its directory is a file", func(t *testing.T) {
		f := filepath.Join(dir, "plain")
		os.WriteFile(f, nil, 0o600)
		p := filepath.Join(dir, "c2.toml")
		os.WriteFile(p, []byte(fmt.Sprintf("state_file = %q\n[[runners]]\nurl = \"http://127.0.0.1:1\"\ntoken = \"glrt-bad-0123456789\"\nexecutor = \"test-dir\"\n", filepath.Join(f, "s.json"))), 0o600)
		code, stderr := runOnce(t, env, p)
		checkRefused(t, code, stderr, f+" is not a directory")
	})
}

// A second daemon on a state file in use: one line naming the holder, and
// the running daemon's files untouched by the attempt.
func TestStateLockedByRunningDaemon(t *testing.T) {
	e := newEnv(t, "")
	p := e.start("")
	e.gl.WaitFor(procWait, "first daemon polling", func(s *coordinatortest.Server) bool {
		return s.CountOf("POST /api/v4/jobs/request") > 0
	})
	before, _ := os.ReadFile(e.state)
	lockBefore, _ := os.ReadFile(e.state + ".lock")
	code, stderr := runOnce(t, []string{"PAAS_RUNNER_TEST_EXECUTOR_DIR=" + e.hosts}, e.config)
	checkRefused(t, code, stderr, fmt.Sprintf("state file is in use by another paas-runner (pid %d holds %s.lock)", p.cmd.Process.Pid, e.state))
	if after, _ := os.ReadFile(e.state); string(after) != string(before) {
		t.Fatalf("state file changed by the refused daemon:\n%s\n--\n%s", before, after)
	}
	if after, _ := os.ReadFile(e.state + ".lock"); string(after) != string(lockBefore) {
		t.Fatalf("lock file changed: %q → %q", lockBefore, after)
	}
	p.signal(syscall.SIGTERM)
	if c := p.wait(t); c != 0 {
		t.Fatalf("first daemon exit %d", c)
	}
}

// A state file whose jobs belong to runners this configuration does not
// have (another daemon's file, or a runner removed or whose token was
// reset) is not refused: a token reset must not stop the daemon. Each such
// job is logged as an error naming its runner, and kept in the state file
// so that the daemon it belongs to (or an administrator) finds it.
func TestStateOfAnotherRunnerSet(t *testing.T) {
	e := newEnv(t, "")
	body := `{"version": 1, "launched": [{"runner_name": "tforeign", "job_id": 77, "token": "job-token-77", "paas_resource": "host-tforeign-77"}], "pending": [], "to_decommission": []}`
	os.WriteFile(e.state, []byte(body), 0o600)
	code, stderr := runOnce(t, []string{"PAAS_RUNNER_TEST_EXECUTOR_DIR=" + e.hosts}, "--poll-cycles", "1", e.config)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, stderr)
	}
	if !strings.Contains(stderr, "the state file has a job of a runner that is not configured") || !strings.Contains(stderr, `"runner_name": "tforeign"`) {
		t.Fatalf("foreign job not reported:\n%s", stderr)
	}
	doc := e.checkStateFile()
	if len(doc["launched"]) != 1 || !strings.Contains(string(doc["launched"][0]), `"tforeign"`) || !strings.Contains(string(doc["launched"][0]), "job-token-77") {
		t.Fatalf("foreign job not kept: %v", doc)
	}
}

// Secret files: a trailing newline is trimmed (the process tests of
// clever-docker read cc_token_file with one); one every user can read is
// a warning naming the key at start, and the daemon runs.
func TestWorldReadableSecretFileWarned(t *testing.T) {
	e := newEnv(t, "[guards]\n[guards.git]\npassword_file = \"pw\"")
	pw := filepath.Join(e.dir, "pw")
	os.WriteFile(pw, []byte("pw\n"), 0o644)
	os.Chmod(pw, 0o644)
	code, stderr := runOnce(t, []string{"PAAS_RUNNER_TEST_EXECUTOR_DIR=" + e.hosts}, "--poll-cycles", "1", e.config)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, stderr)
	}
	n := 0
	for _, l := range strings.Split(stderr, "\n") {
		if strings.Contains(l, pw+" holds a secret and is readable by every user (mode 0644)") {
			n++
		}
	}
	if n != 1 || !strings.Contains(stderr, `"key": "guards.git.password_file"`) {
		t.Fatalf("%d warnings:\n%s", n, stderr)
	}
	os.Chmod(pw, 0o640)
	if _, stderr := runOnce(t, []string{"PAAS_RUNNER_TEST_EXECUTOR_DIR=" + e.hosts}, "--poll-cycles", "1", e.config); strings.Contains(stderr, "holds a secret") {
		t.Fatalf("warned about a 0640 file:\n%s", stderr)
	}
}

// --help prints the usage once (it was printed twice), with the commands,
// and exits 0.
func TestHelpOnce(t *testing.T) {
	code, stderr := runOnce(t, nil, "--help")
	if code != 0 || strings.Count(stderr, "usage: paas-runner") != 1 || !strings.Contains(stderr, "status [--json] CONFIG") {
		t.Fatalf("exit %d:\n%s", code, stderr)
	}
}

// A mistyped command is named as such, not taken for a configuration
// followed by stray arguments.
func TestCommandTypo(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "c.toml")
	os.WriteFile(p, []byte("concurrent = 1\n"), 0o600)
	code, stderr := runOnce(t, nil, "stauts", p)
	checkRefused(t, code, stderr, `paas-runner: unknown command "stauts" (commands: status, locks, pool, guard, host-image, exec-fetched-job) (see --help)`)
	code, stderr = runOnce(t, nil, p, "extra")
	checkRefused(t, code, stderr, "paas-runner: unexpected arguments after CONFIG: extra (see --help)")
}

// The commands' own bad input: --help exits 0; a mistake is one line,
// exit 2 (host-image's extra arguments were ignored silently).
func TestCommandsBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"exec-fetched-job", "--help"}, 0, "usage: paas-runner exec-fetched-job --config runner.toml job.json"},
		{[]string{"exec-fetched-job", "--bogus"}, 2, "paas-runner: exec-fetched-job: flag provided but not defined: -bogus (usage: paas-runner exec-fetched-job --config runner.toml job.json)"},
		{[]string{"exec-fetched-job", "job.json"}, 2, "usage: paas-runner exec-fetched-job --config runner.toml job.json"},
		{[]string{"host-image", "--bogus"}, 2, "paas-runner: host-image: flag provided but not defined: -bogus (see --help)"},
		{[]string{"host-image", "extra"}, 2, "paas-runner: host-image: unexpected arguments: extra (see --help)"},
	} {
		code, stderr := runOnce(t, nil, tc.args...)
		if code != tc.code || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d:\n%s", tc.args, code, stderr)
		}
	}
	code, stderr := runOnce(t, nil, "host-image", "--help")
	if code != 0 || !strings.Contains(stderr, "usage: paas-runner host-image") || !strings.Contains(stderr, "-docker-host") {
		t.Errorf("host-image --help: exit %d:\n%s", code, stderr)
	}
}

package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var execs = Options{Executors: []string{"local-docker", "clever-docker"}}

func TestLoadHeptapodConfig(t *testing.T) {
	c, err := Load("testdata/heptapod.toml", execs)
	if err != nil {
		t.Fatal(err)
	}
	if c.Concurrent != 30 || c.CheckInterval != 5 || c.JobProgressPollInterval != 20 || c.PaasMaxConcurrentProvisioning != 5 {
		t.Errorf("globals: %+v", c)
	}
	if c.PaasMinSecondsBetweenLaunches != 0.5 || c.PaasLogStatistics || !c.PaasDecommissionLaunchFailures {
		t.Errorf("paas globals: %+v", c)
	}
	if c.ShutdownTimeout != DefaultShutdownTimeout || c.PaasTrackingRequestsPerSecond != DefaultTrackingRPS {
		t.Errorf("defaults: %+v", c)
	}
	if len(c.Runners) != 2 {
		t.Fatalf("runners: %d", len(c.Runners))
	}
	cl := c.Runners[0]
	if cl.Clever.OrgaID != "orga_123" || cl.Clever.Token != "secret-cc-token" || cl.Clever.DefaultFlavor != "S" || cl.Clever.Zone != "par" {
		t.Errorf("clever: %+v", cl.Clever)
	}
	if cl.Clever.ExtraEnv["CC_ENABLE_HEPTAPOD_RUNNER"] != "true" || cl.Clever.FlavorNamePrefix != "heptapod-runner-" {
		t.Errorf("clever extras: %+v", cl.Clever)
	}
	if cl.InnerImage != "registry.example/runner:1" || cl.ID() != "Cl3vr123" {
		t.Errorf("inner image %q unique %q", cl.InnerImage, cl.ID())
	}
	docker, _ := cl.Inner["docker"].(map[string]any)
	if docker["image"] != "alpine" || cl.Inner["cache"] == nil {
		t.Errorf("inner: %#v", cl.Inner)
	}
	for k := range cl.Inner {
		if strings.HasPrefix(k, "cc_") || k == "token" || k == "host" || k == "executor" {
			t.Errorf("provisioning key %q forwarded to inner runner", k)
		}
	}
	lo := c.Runners[1]
	if lo.LocalDocker.Host != "unix:///run/docker.sock" || lo.Inner["environment"] == nil {
		t.Errorf("local: %+v", lo)
	}
}

func write(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const minimal = `state_file = "/tmp/s.json"
[[runners]]
url = "https://gitlab.example"
token = "glrt-abcdefgh"
executor = "local-docker"
`

func TestMinimalDefaults(t *testing.T) {
	c, err := Load(write(t, minimal), execs)
	if err != nil {
		t.Fatal(err)
	}
	if c.Concurrent != 50 || c.CheckInterval != 3 || c.PaasMaxConcurrentProvisioning != 10 || !c.PaasDecommissionLaunchFailures || c.PaasFinishedJobsKeepResources {
		t.Errorf("defaults: %+v", c)
	}
	if c.Runners[0].UnhealthyRequestsLimit != 3 || c.Runners[0].DisplayName() != c.Runners[0].ID() {
		t.Errorf("runner defaults: %+v", c.Runners[0])
	}
}

func TestAllErrorsAtOnceWithLines(t *testing.T) {
	body := `concurrent = -1
check_interval = "soon"
bogus = 1
[[runners]]
url = "ftp://gitlab.example"
executor = "kubernetes"
limit = -2
weird = true
cc_token = "x"
  [runners.local_docker]
  nope = 1
[[runners]]
url = "https://gitlab.example"
token = "t2"
executor = "clever-docker"
`
	p := write(t, body)
	_, err := Load(p, execs)
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("want Errors, got %T %v", err, err)
	}
	want := []string{
		p + ":1: concurrent: must be a positive number of jobs",
		p + ":2: check_interval: wrong type",
		p + ":3: bogus: unknown key",
		p + ":5: runners[0].url: \"ftp://gitlab.example\" is not an http:// or https:// URL",
		p + ":6: runners[0].executor: unknown executor \"kubernetes\"",
		p + ":7: runners[0].limit: must not be negative",
		p + ":8: runners[0].weird: unknown key",
		p + ":9: runners[0].cc_token: only for executor clever-docker",
		p + ":11: runners[0].local_docker.nope: unknown key",
		p + ": state_file: required",
		// a required key that is missing: located at its entry's header
		p + ":4: runners[0].token: required",
		p + ":12: runners[1].cc_orga_id: required unless cc_multi_tenant = true",
	}
	got := err.Error()
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("missing %q in:\n%s", w, got)
		}
	}
	for _, line := range strings.Split(got, "\n") {
		if !strings.HasPrefix(line, p) {
			t.Errorf("error line does not name the file: %q", line)
		}
	}
}

func TestBadInputs(t *testing.T) {
	cases := map[string]struct{ body, want string }{
		"malformed":       {"state_file = \n", ":1: invalid TOML"},
		"unclosed table":  {"[[runners]\n", ":1: invalid TOML"},
		"unclosed later":  {minimal + "[runners.docker\nimage = \"x\"\n", ":6: invalid TOML"},
		"no runners":      {`state_file = "s"`, "no [[runners]] section"},
		"missing token":   {strings.Replace(minimal, `token = "glrt-abcdefgh"`, "", 1), "runners[0].token: required"},
		"bad url":         {strings.Replace(minimal, "https://gitlab.example", "gitlab.example", 1), "runners[0].url"},
		"negative":        {"shutdown_timeout = -5\n" + minimal, ":1: shutdown_timeout: must not be negative"},
		"zero concurrent": {"concurrent = 0\n" + minimal, "concurrent: must be a positive"},
		"unknown exec":    {strings.Replace(minimal, "local-docker", "ssh", 1), `unknown executor "ssh"`},
		"docker host":     {minimal + "host = \"http://x\"\n", "runners[0].host: \"http://x\": only unix:// and tcp://"},
		"wrong type":      {strings.Replace(minimal, `executor = "local-docker"`, `executor = "local-docker"`+"\nlimit = \"3\"", 1), "runners[0].limit: wrong type"},
		"dup token":       {minimal + "[[runners]]\nurl = \"https://g\"\ntoken = \"glrt-abcdefgh\"\nexecutor = \"local-docker\"\n", "runners[1].token: same token as runners[0]"},
		"log format":      {"log_format = \"xml\"\n" + minimal, "log_format: unknown format"},
		"legacy prefix":   {"[[runners]]\nurl = \"https://g\"\ntoken = \"AbCdEfGh111\"\nexecutor = \"local-docker\"\n[[runners]]\nurl = \"https://g\"\ntoken = \"AbCdEfGh222\"\nexecutor = \"local-docker\"\n", "runners[1].token: runners[0]'s token starts with the same 8 characters"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Load(write(t, tc.body), execs)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want %q, got %v", tc.want, err)
			}
		})
	}
}

func TestMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.toml"), execs)
	if err == nil || !strings.Contains(err.Error(), "nope.toml") {
		t.Fatalf("got %v", err)
	}
}

func FuzzParse(f *testing.F) {
	seed, _ := os.ReadFile("testdata/heptapod.toml")
	f.Add(seed)
	f.Add([]byte(minimal))
	f.Add([]byte("[[runners]]\n[runners.local_docker]\nhost=1\n"))
	f.Add([]byte("runners = 3\nquota_computation = []\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.toml", data, execs)
		if err == nil && c == nil {
			t.Fatal("nil config without error")
		}
		if err != nil && strings.Contains(err.Error(), "\n\n") {
			t.Fatal("empty error line")
		}
	})
}

// nan, inf and absurd numbers are refused, each with its key.
func TestAbsurdNumbers(t *testing.T) {
	cases := map[string]struct{ body, want string }{
		"nan rate":          {"paas_tracking_requests_per_second = nan\n" + minimal, ":1: paas_tracking_requests_per_second: NaN is not allowed"},
		"inf rate":          {"paas_tracking_requests_per_second = inf\n" + minimal, ":1: paas_tracking_requests_per_second: +Inf is not allowed"},
		"huge rate":         {"paas_tracking_requests_per_second = 1e12\n" + minimal, "paas_tracking_requests_per_second: 1e+12 is absurd"},
		"negative rate":     {"paas_tracking_requests_per_second = -1.0\n" + minimal, "paas_tracking_requests_per_second: must be positive"},
		"nan interval":      {"check_interval = nan\n" + minimal, ":1: check_interval: NaN is not allowed"},
		"-inf shutdown":     {"shutdown_timeout = -inf\n" + minimal, ":1: shutdown_timeout: -Inf is not allowed"},
		"huge shutdown":     {"shutdown_timeout = 1e300\n" + minimal, ":1: shutdown_timeout: 1e+300 seconds is absurd"},
		"huge interval":     {"check_interval = 100000\n" + minimal, "check_interval: 100000 seconds is absurd"},
		"negative interval": {"check_interval = -1\n" + minimal, "check_interval: must not be negative"},
		"nan launches":      {"paas_min_seconds_between_launches = nan\n" + minimal, "paas_min_seconds_between_launches: NaN"},
		"huge concurrent":   {"concurrent = 100000000000\n" + minimal, ":1: concurrent: 100000000000 is absurd"},
		"huge provisioning": {"paas_max_concurrent_provisioning = 9999999\n" + minimal, "paas_max_concurrent_provisioning: 9999999 is absurd"},
		"huge limit":        {minimal + "limit = 123456789\n", "runners[0].limit: 123456789 is absurd"},
		"nan unhealthy":     {minimal + "unhealthy_interval = nan\n", "runners[0].unhealthy_interval: NaN is not allowed"},
		"huge unhealthy":    {minimal + "unhealthy_interval = 1e20\n", "runners[0].unhealthy_interval: 1e+20 seconds is absurd"},
		"nan cc timeout": {strings.Replace(minimal, `executor = "local-docker"`, `executor = "clever-docker"`+"\ncc_orga_id = \"o\"\ncc_token = \"t\"\ncc_deployment_repo_timeout = nan", 1),
			"runners[0].cc_deployment_repo_timeout: NaN is not allowed"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Load(write(t, tc.body), execs)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want %q, got %v", tc.want, err)
			}
			if strings.Count(err.Error(), "\n") > 0 && name != "nan cc timeout" {
				t.Errorf("one problem, several errors:\n%v", err)
			}
		})
	}
	// sane values still load
	if _, err := Load(write(t, "check_interval = 0.5\nshutdown_timeout = 3600\npaas_tracking_requests_per_second = 0.5\nconcurrent = 5000\n"+minimal), execs); err != nil {
		t.Fatal(err)
	}
}

func TestPermissionWarning(t *testing.T) {
	p := write(t, minimal)
	if w := PermissionWarning(p); w != "" {
		t.Fatalf("0600 file: %q", w)
	}
	// 0640 (root:<the daemon's group>, systemd's ConfigurationDirectory)
	// is fine: only a file every user can read is warned about
	for _, mode := range []os.FileMode{0o640, 0o660, 0o700} {
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if w := PermissionWarning(p); w != "" {
			t.Errorf("%04o file: %q", mode, w)
		}
	}
	for mode, who := range map[os.FileMode]string{0o604: "others", 0o644: "group and others"} {
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if w := PermissionWarning(p); !strings.Contains(w, "readable by "+who+" ") || !strings.Contains(w, "chmod 600") {
			t.Errorf("%04o: %q", mode, w)
		}
	}
}

// GitLab's runner authentication tokens share their first 8 characters
// (glrt-t1_…): runners with such tokens are told apart by the whole token,
// and the ID does not depend on the other runners. Legacy tokens keep
// Heptapod's ID (the first 8 characters).
func TestRunnerIDs(t *testing.T) {
	body := "state_file = \"s\"\n"
	for _, tok := range []string{"glrt-t1_aaaaaaaaaaaa", "glrt-t1_bbbbbbbbbbbb", "glrt-t3_cccccccccccc"} {
		body += "[[runners]]\nurl = \"https://g\"\ntoken = \"" + tok + "\"\nexecutor = \"local-docker\"\n"
	}
	c, err := Load(write(t, body), execs)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range c.Runners {
		id := r.ID()
		if seen[id] || len(id) != 8 || id[0] != 't' || strings.Contains(r.Token, id[1:]) {
			t.Errorf("runner ID %q of %q: want unique t + 7 hex digits of the token's hash", id, r.Token)
		}
		seen[id] = true
		if r.ID() != RunnerID(r.Token) {
			t.Errorf("ID not stable")
		}
	}
	if got := RunnerID("glrt-t1_aaaaaaaaaaaa"); got != "te88043d" {
		t.Errorf("ID %q: it names hosts and keys the state file, it must not change between versions", got)
	}
	if got := RunnerID("D3adNQYuXXXXXXXXXXXX"); got != "D3adNQYu" {
		t.Errorf("legacy token ID %q, want Heptapod's D3adNQYu", got)
	}
	if got := LegacyID("glrt-t1_aaaaaaaaaaaa"); got != "glrt-t1_" {
		t.Errorf("legacy ID %q", got)
	}
	// glrtr- tokens (runner tokens of runners registered with a
	// registration token) share their first 8 characters too: hashed
	a, b := RunnerID("glrtr-aaaaaaaaaaaaaaaa"), RunnerID("glrtr-aaaaaaaaaaaaaaab")
	if a == b || len(a) != 8 || a[0] != 't' || strings.HasPrefix(a, "glrtr") {
		t.Errorf("glrtr- IDs %q and %q: want distinct t + 7 hex digits", a, b)
	}
	if got := LegacyID("glrtr-aaaaaaaaaaaaaaaa"); got != "glrtr-aa" {
		t.Errorf("glrtr- legacy ID %q, want Heptapod's glrtr-aa", got)
	}
}

// Two glrtr- runners whose tokens share 8 characters are accepted: their
// IDs differ.
func TestGlrtrTokensDoNotCollide(t *testing.T) {
	body := "concurrent = 2\nstate_file = \"/tmp/state.json\"\n" +
		"[[runners]]\n  name = \"a\"\n  url = \"https://gitlab.example\"\n  token = \"glrtr-aaaaaaaaaaaaaaaa\"\n  executor = \"local-docker\"\n" +
		"[[runners]]\n  name = \"b\"\n  url = \"https://gitlab.example\"\n  token = \"glrtr-aaaaaaaaaaaaaaab\"\n  executor = \"local-docker\"\n"
	c, err := Parse("config.toml", []byte(body), execs)
	if err != nil {
		t.Fatalf("two glrtr- runners refused: %v", err)
	}
	if c.Runners[0].ID() == c.Runners[1].ID() {
		t.Errorf("same ID %q", c.Runners[0].ID())
	}
}

// [[runners]] written another way — a gitlab-runner snippet pasted without
// its [[runners]] header, [runners], runners = 5 — is one error at its
// line, in TOML's words (not Go's "map[string]any, expected slice").
func TestRunnersNotAnArrayOfTables(t *testing.T) {
	for _, c := range []struct{ body, want string }{
		{"state_file = \"/tmp/s.json\"\n\n[runners.docker]\nimage = \"x\"\n", ":3: runners: wrong type: the value is a table, expected [[runners]] entries"},
		{"state_file = \"/tmp/s.json\"\n[runners]\nurl = \"http://x\"\n", ":2: runners: wrong type: the value is a table, expected [[runners]] entries"},
		{"state_file = \"/tmp/s.json\"\nrunners = 5\n", ":2: runners: wrong type: the value is an integer, expected [[runners]] entries"},
	} {
		p := write(t, c.body)
		_, err := Load(p, execs)
		if err == nil || err.Error() != p+c.want+" (an array of tables: write [[runners]] above each runner's keys)" {
			t.Errorf("%q: got %v, want %s%s…", c.body, err, p, c.want)
		}
	}
}

// A value of the wrong type is named in TOML's words, once.
func TestWrongTypeInTOMLWords(t *testing.T) {
	p := write(t, "state_file = 5\nconcurrent = nan\ncheck_interval = \"x\"\nlisten_address = [1]\n[quota_computation]\nreference_runner = true\nreference_flavor = \"M\"\nreference_jobs_count = 1\n[[runners]]\nurl = \"http://x\"\ntoken = \"glrt-x\"\nexecutor = \"local-docker\"\nlimit = \"3\"\n")
	_, err := Load(p, execs)
	if err == nil {
		t.Fatal("loaded")
	}
	want := []string{
		p + ":1: state_file: wrong type: the value is an integer, expected string",
		p + ":2: concurrent: wrong type: the value is a float, expected integer",
		p + ":3: check_interval: wrong type: the value is a string, expected float",
		p + ":4: listen_address: wrong type: the value is an array, expected string",
		p + ":6: quota_computation.reference_runner: wrong type: the value is a boolean, expected string",
		p + ":13: runners[0].limit: wrong type: the value is a string, expected integer",
	}
	if got := err.Error(); got != strings.Join(want, "\n") {
		t.Errorf("got:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
}

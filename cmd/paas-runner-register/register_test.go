package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

type result struct {
	code           int
	stdout, stderr string
}

func runReg(stdin string, args ...string) result {
	var out, errb bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errb)
	return result{code, out.String(), errb.String()}
}

var stamp = regexp.MustCompile(`token_obtained_at = \S+`)

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	got = stamp.ReplaceAll(got, []byte("token_obtained_at = <time>"))
	p := filepath.Join("testdata", name)
	if os.Getenv("UPDATE_GOLDEN") != "" {
		os.WriteFile(p, got, 0o644)
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (UPDATE_GOLDEN=1 writes it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func setup(t *testing.T) (*coordinatortest.Server, string) {
	gl := coordinatortest.New(t)
	gl.AddRunner("glrt-good-0123456789")
	gl.AddRegistrationToken("GR1348941legacy")
	return gl, t.TempDir()
}

func TestRegisterGlrtNonInteractive(t *testing.T) {
	gl, dir := setup(t)
	cfg := filepath.Join(dir, "config.toml")
	r := runReg("", "--non-interactive", "--url", gl.URL, "--token", "glrt-good-0123456789", "--name", "one",
		"--executor", "local-docker", "--state-file", filepath.Join(dir, "state.json"), "--concurrent", "4", cfg)
	if r.code != 0 {
		t.Fatalf("%+v", r)
	}
	data, _ := os.ReadFile(cfg)
	data = bytes.ReplaceAll(data, []byte(gl.URL), []byte("http://gitlab.test"))
	golden(t, "local-docker.toml", bytes.ReplaceAll(data, []byte(dir), []byte("<dir>")))
	fi, _ := os.Stat(cfg)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
	if _, err := os.Stat(filepath.Join(dir, ".runner_system_id")); err != nil {
		t.Fatal("system id not stored next to the state file")
	}
	// the stored system id is the one GitLab recorded the runner manager
	// under: unregistering (DELETE /runners/managers with it) finds it
	if r := runReg("", "unregister", "--name", "one", cfg); r.code != 0 || strings.Contains(r.stdout, "no longer knows") {
		t.Errorf("stored system id is not the one sent to GitLab: %+v", r)
	}
}

// noSystemID fails when a failed registration left a system id file in the
// state directory.
func noSystemID(t *testing.T, dir string) {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, ".*runner_system_id*"))
	if len(m) > 0 {
		t.Errorf("failed registration created %v", m)
	}
}

func TestNetworkFailureAndRefusals(t *testing.T) {
	gl, dir := setup(t)
	cfg := filepath.Join(dir, "config.toml")
	base := []string{"--non-interactive", "--name", "x", "--executor", "local-docker", "--state-file", filepath.Join(dir, "s.json"), "--concurrent", "1"}
	closed := coordinatortest.New(t)
	closedURL := closed.URL
	closed.Close()
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--url", closedURL, "--token", "glrt-good-0123456789"}, 1, "cannot reach GitLab at " + closedURL},
		{[]string{"--url", gl.URL, "--token", "glrt-bad-000000000"}, 1, "runner token rejected by " + gl.URL + " (403)"},
		{[]string{"--url", gl.URL, "--registration-token", "nope"}, 1, "registration token rejected by " + gl.URL + " (403)"},
		{[]string{"--url", gl.URL, "--token", "GR1348941legacy"}, 2, "--token: expected a runner authentication token"},
		{[]string{"--token", "glrt-good-0123456789"}, 2, "--url is required with --non-interactive"},
		{[]string{"--url", "ftp://x", "--token", "glrt-good-0123456789"}, 2, `--url: "ftp://x" is not an http:// or https:// URL`},
		// the API's URL, as the daemon's loader refuses it (not a 404 from …/api/v4/api/v4)
		{[]string{"--url", gl.URL + "/api/v4/", "--token", "glrt-good-0123456789"}, 2, `--url: "` + gl.URL + `/api/v4/": give GitLab's own URL, without /api/v4`},
	}
	for _, c := range cases {
		r := runReg("", append(append([]string{}, base...), append(c.args, cfg)...)...)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%v: got %d %q, want %d %q", c.args, r.code, r.stderr, c.code, c.want)
		}
		if strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("not one line: %q", r.stderr)
		}
		if _, err := os.Stat(cfg); err == nil {
			t.Fatalf("%v: config written despite the failure", c.args)
		}
		noSystemID(t, dir)
	}
	for status, want := range map[int]string{422: "runner token refused by " + gl.URL + " (422)", 500: gl.URL + " is failing (500); try again later"} {
		gl.Inject("runners/verify", status, -1, nil)
		r := runReg("", append(append([]string{}, base...), "--url", gl.URL, "--token", "glrt-good-0123456789", cfg)...)
		gl.ClearInjections()
		if r.code != 1 || !strings.Contains(r.stderr, want) || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("%d: %+v", status, r)
		}
	}
	gl.RegistrationDisabled = true
	r := runReg("", append(base, "--url", gl.URL, "--registration-token", "GR1348941legacy", cfg)...)
	if r.code != 1 || !strings.Contains(r.stderr, "registration tokens are disabled") {
		t.Errorf("410: %+v", r)
	}
	noSystemID(t, dir)
}

const existing = `# my runners, hand-written
concurrent = 3   # keep this comment
state_file = "STATE"

[[runners]]
  name = "first"
  url = "https://gitlab.example"
  token = "glrt-first-0123456789"
  executor = "local-docker"
  [runners.docker]
    image = "alpine"
`

func TestAppendLegacyKeepsBytes(t *testing.T) {
	gl, dir := setup(t)
	cfg := filepath.Join(dir, "config.toml")
	before := strings.Replace(existing, "STATE", filepath.Join(dir, "state.json"), 1)
	os.WriteFile(cfg, []byte(before), 0o644)
	os.Chmod(cfg, 0o644) // whatever the umask
	r := runReg("", "--non-interactive", "--url", gl.URL, "--registration-token", "GR1348941legacy", "--name", "clever",
		"--executor", "clever-docker", "--cc-orga-id", "orga_123", "--cc-token", "cc-secret", "--tag-list", "a, b", "--locked",
		"--inner-image", "registry.example/paas-runner-host:1", cfg)
	if r.code != 0 {
		t.Fatalf("%+v", r)
	}
	// the section is complete: the daemon's configuration check passes
	if _, err := config.Load(cfg, config.Options{Executors: []string{"local-docker", "clever-docker"}}); err != nil {
		t.Fatalf("written configuration: %v", err)
	}
	data, _ := os.ReadFile(cfg)
	if !strings.HasPrefix(string(data), before) {
		t.Fatalf("existing bytes changed:\n%s", data)
	}
	added := strings.TrimPrefix(string(data), before)
	tok := regexp.MustCompile(`token = "(glrt-reg[^"]+)"`).FindStringSubmatch(added)
	if tok == nil {
		t.Fatalf("no token in %s", added)
	}
	golden(t, "clever-legacy.toml", []byte(strings.ReplaceAll(strings.ReplaceAll(added, gl.URL, "http://gitlab.test"), tok[1], "<token>")))
	sent := gl.Registered(tok[1])
	if sent["description"] != "clever" || sent["tag_list"] != "a,b" || sent["locked"] != true || sent["run_untagged"] != false {
		t.Errorf("registration sent %v", sent)
	}
	if fi, _ := os.Stat(cfg); fi.Mode().Perm() != 0o600 {
		t.Errorf("appending to a 0644 file left it %v", fi.Mode())
	}
	if !strings.Contains(r.stdout, "was mode 0644, readable by others than its owner; it is now 0600") {
		t.Errorf("the mode change is not said: %q", r.stdout)
	}
}

func TestCleverNeedsInnerImage(t *testing.T) {
	gl, dir := setup(t)
	cfg := filepath.Join(dir, "config.toml")
	os.WriteFile(cfg, []byte(strings.Replace(existing, "STATE", filepath.Join(dir, "state.json"), 1)), 0o600)
	r := runReg("", "--non-interactive", "--url", gl.URL, "--registration-token", "GR1348941legacy", "--name", "clever",
		"--executor", "clever-docker", "--cc-orga-id", "orga_123", "--cc-token", "cc-secret", cfg)
	if r.code != 2 || !strings.Contains(r.stderr, "--inner-image is required with --non-interactive") {
		t.Fatalf("%+v", r)
	}
}

func TestDuplicateRefused(t *testing.T) {
	gl, dir := setup(t)
	cfg := filepath.Join(dir, "config.toml")
	before := strings.Replace(existing, "STATE", filepath.Join(dir, "state.json"), 1)
	before = strings.Replace(before, "glrt-first-0123456789", "glrt-good-0123456789", 1)
	os.WriteFile(cfg, []byte(before), 0o600)
	for _, args := range [][]string{
		{"--name", "first", "--token", "glrt-good-0123456789"},
		{"--name", "second", "--token", "glrt-good-0123456789"},
	} {
		r := runReg("", append([]string{"--non-interactive", "--url", gl.URL, "--executor", "local-docker", cfg}, args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, "already") {
			t.Errorf("%v: %+v", args, r)
		}
		if data, _ := os.ReadFile(cfg); string(data) != before {
			t.Fatal("file touched")
		}
	}
}

func TestInteractiveThroughPipe(t *testing.T) {
	gl, dir := setup(t)
	cfg := filepath.Join(dir, "config.toml")
	answers := strings.Join([]string{
		filepath.Join(dir, "state.json"), // state file
		"zero", "0", "5",                 // concurrency: two invalid answers first
		"gitlab.example", gl.URL, // URL: invalid, then valid
		"glrt-good-0123456789", // token
		"",                     // name: default (hostname)
		"kubernetes", "",       // executor: invalid, then default local-docker
		"http://docker", "tcp://127.0.0.1:2375", // docker host: invalid, then valid
	}, "\n") + "\n"
	r := runReg(answers, cfg)
	if r.code != 0 {
		t.Fatalf("%+v", r)
	}
	if n := strings.Count(r.stdout, "Invalid answer"); n != 5 {
		t.Errorf("%d re-prompts in:\n%s", n, r.stdout)
	}
	for _, want := range []string{"This is a brand new configuration file", "Concurrency [10]:", "Executor [local-docker]:", "local-docker   one container per job"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("missing %q in:\n%s", want, r.stdout)
		}
	}
	data, _ := os.ReadFile(cfg)
	host, _ := os.Hostname()
	for _, want := range []string{"concurrent = 5", `host = "tcp://127.0.0.1:2375"`, fmt.Sprintf("name = %q", host)} {
		if !strings.Contains(string(data), want) {
			t.Errorf("missing %q in:\n%s", want, data)
		}
	}
	// answers ending early: a usage error naming what is missing
	r = runReg(filepath.Join(dir, "s2.json")+"\n", filepath.Join(dir, "other.toml"))
	if r.code != 2 || !strings.Contains(r.stderr, "standard input ended before an answer for --concurrent") {
		t.Errorf("short input: %+v", r)
	}
}

func TestVerifyAndUnregister(t *testing.T) {
	gl, dir := setup(t)
	gl.AddRunner("glrt-second-0123456789")
	cfg := filepath.Join(dir, "config.toml")
	body := strings.Replace(existing, "STATE", filepath.Join(dir, "state.json"), 1)
	body = strings.Replace(body, "https://gitlab.example", gl.URL, 1)
	body += fmt.Sprintf("\n[[runners]]\n  name = \"second\"\n  url = %q\n  token = \"glrt-second-0123456789\"\n  executor = \"local-docker\"\n\n# trailing comment kept\n", gl.URL)
	os.WriteFile(cfg, []byte(body), 0o600)
	r := runReg("", "verify", cfg)
	if r.code != 1 || !strings.Contains(r.stdout, `runner "first": INVALID`) || !strings.Contains(r.stdout, `runner "second": valid`) {
		t.Fatalf("verify: %+v", r)
	}
	r = runReg("", "unregister", "--name", "second", cfg)
	if r.code != 0 {
		t.Fatalf("unregister: %+v", r)
	}
	data, _ := os.ReadFile(cfg)
	want := strings.Replace(existing, "STATE", filepath.Join(dir, "state.json"), 1)
	want = strings.Replace(want, "https://gitlab.example", gl.URL, 1) + "\n# trailing comment kept\n"
	if string(data) != want {
		t.Fatalf("after unregister:\n%s\nwant:\n%s", data, want)
	}
	// the first runner's token is unknown to GitLab: removed anyway, with a note
	r = runReg("", "unregister", "--name", "first", cfg)
	if r.code != 0 || !strings.Contains(r.stdout, "no longer knows") {
		t.Fatalf("unregister unknown: %+v", r)
	}
	if r := runReg("", "unregister", "--name", "nobody", cfg); r.code != 2 {
		t.Fatalf("unknown name: %+v", r)
	}
}

// The written file runs: paas-runner starts on it at once.
func TestDaemonRunsRegisteredConfig(t *testing.T) {
	gl, dir := setup(t)
	cfg := filepath.Join(dir, "config.toml")
	r := runReg("", "--non-interactive", "--url", gl.URL, "--token", "glrt-good-0123456789", "--name", "one",
		"--executor", "local-docker", "--state-file", filepath.Join(dir, "state.json"), cfg)
	if r.code != 0 {
		t.Fatalf("%+v", r)
	}
	bin := filepath.Join(dir, "paas-runner")
	if out, err := exec.Command("go", "build", "-o", bin, "../paas-runner").CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	out, err := exec.Command(bin, "--poll-cycles", "2", cfg).CombinedOutput()
	if err != nil {
		t.Fatalf("paas-runner on the registered config: %v\n%s", err, out)
	}
	if gl.Count("POST /api/v4/jobs/request") < 2 {
		t.Fatalf("the daemon did not poll GitLab:\n%s", out)
	}
}

// GitLab's runner authentication tokens share their first 8 characters
// (glrt-t1_…): two project runners registered in one file are told apart,
// and the daemon runs both.
func TestTwoRunnersWithSharedTokenPrefix(t *testing.T) {
	gl, dir := setup(t)
	toks := []string{"glrt-t1_aaaaaaaaaaaaaaaa", "glrt-t1_bbbbbbbbbbbbbbbb"}
	cfg := filepath.Join(dir, "config.toml")
	for i, tok := range toks {
		gl.AddRunner(tok)
		r := runReg("", "--non-interactive", "--url", gl.URL, "--token", tok, "--name", fmt.Sprintf("project-%d", i),
			"--executor", "local-docker", "--state-file", filepath.Join(dir, "state.json"), cfg)
		if r.code != 0 {
			t.Fatalf("registering %d: %+v", i, r)
		}
	}
	bin := filepath.Join(dir, "paas-runner")
	if out, err := exec.Command("go", "build", "-o", bin, "../paas-runner").CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	out, err := exec.Command(bin, "--poll-cycles", "2", cfg).CombinedOutput()
	if err != nil {
		t.Fatalf("paas-runner on two runners whose tokens share 8 characters: %v\n%s", err, out)
	}
	if n := gl.Count("POST /api/v4/jobs/request"); n < 4 {
		t.Fatalf("%d job requests, want both runners polling:\n%s", n, out)
	}
}

// A glrtr- token (the runner token of a runner registered with a
// registration token) is unregistered like a legacy one, as gitlab-runner
// does: DELETE /runners removes the runner, not just this manager.
func TestUnregisterGlrtrDeletesRunner(t *testing.T) {
	gl, dir := setup(t)
	tok := "glrtr-legacy-0123456789"
	gl.AddRunner(tok)
	cfg := filepath.Join(dir, "config.toml")
	body := strings.Replace(existing, "STATE", filepath.Join(dir, "state.json"), 1)
	body = strings.Replace(body, "https://gitlab.example", gl.URL, 1)
	body += fmt.Sprintf("\n[[runners]]\n  name = \"old\"\n  url = %q\n  token = %q\n  executor = \"local-docker\"\n", gl.URL, tok)
	os.WriteFile(cfg, []byte(body), 0o600)
	r := runReg("", "unregister", "--name", "old", cfg)
	if r.code != 0 || strings.Contains(r.stdout, "no longer knows") {
		t.Fatalf("unregister: %+v", r)
	}
	if n, m := gl.Count("DELETE /api/v4/runners"), gl.Count("DELETE /api/v4/runners/managers"); n != 1 || m != 0 {
		t.Errorf("DELETE /runners %d times, /runners/managers %d times; want 1 and 0", n, m)
	}
}

// A configuration readable by its group only (0640 root:<the daemon's
// group>, systemd's ConfigurationDirectory setup) keeps its mode and group
// when a runner is appended: made 0600 (and the registering user's group),
// the daemon could no longer read it.
func TestAppendKeepsGroupReadableMode(t *testing.T) {
	gl, dir := setup(t)
	cfg := filepath.Join(dir, "config.toml")
	os.WriteFile(cfg, []byte(strings.Replace(existing, "STATE", filepath.Join(dir, "state.json"), 1)), 0o600)
	gid := os.Getegid()
	if os.Geteuid() == 0 {
		gid = 4242 // root may give any group: the daemon's
	} else if gs, _ := os.Getgroups(); len(gs) > 0 {
		for _, g := range gs {
			if g != gid {
				gid = g // a group other than the default one, when there is one
				break
			}
		}
	}
	if err := os.Chown(cfg, -1, gid); err != nil {
		t.Fatal(err)
	}
	os.Chmod(cfg, 0o640)
	r := runReg("", "--non-interactive", "--url", gl.URL, "--token", "glrt-good-0123456789", "--name", "two", "--executor", "local-docker", cfg)
	if r.code != 0 || strings.Contains(r.stdout, "was mode") {
		t.Fatalf("%+v", r)
	}
	fi, _ := os.Stat(cfg)
	if fi.Mode().Perm() != 0o640 || int(fi.Sys().(*syscall.Stat_t).Gid) != gid {
		t.Errorf("mode %v gid %d, want 0640 and gid %d", fi.Mode(), fi.Sys().(*syscall.Stat_t).Gid, gid)
	}
}

// Run as root (sudo, under systemd), registration leaves the file to the
// daemon's user: an existing file keeps its owner and group, a new one
// gets its directory's (/etc/paas-runner, the tmpfiles.d snippet's). A
// file made root's, mode 0600, is one the daemon (User=paas-runner) can no
// longer read: its reload fails, and so does its next start.
func TestRegisterAsRootKeepsTheDaemonsOwnership(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("giving a file to another user needs root")
	}
	const uid, gid = 4243, 4244 // the daemon's user and group
	owner := func(p string) (int, int, os.FileMode) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		return int(st.Uid), int(st.Gid), fi.Mode().Perm()
	}
	gl, dir := setup(t)
	gl.AddRunner("glrt-other-0123456789")
	cfg := filepath.Join(dir, "config.toml")
	os.WriteFile(cfg, []byte(strings.Replace(existing, "STATE", filepath.Join(dir, "state.json"), 1)), 0o600)
	if err := os.Chown(cfg, uid, gid); err != nil {
		t.Fatal(err)
	}
	r := runReg("", "--non-interactive", "--url", gl.URL, "--token", "glrt-good-0123456789", "--name", "two", "--executor", "local-docker", cfg)
	if r.code != 0 {
		t.Fatalf("%+v", r)
	}
	if u, g, m := owner(cfg); u != uid || g != gid || m != 0o600 {
		t.Errorf("appended: owner %d:%d mode %04o, want %d:%d 0600", u, g, m, uid, gid)
	}
	if r := runReg("", "unregister", "--name", "two", cfg); r.code != 0 {
		t.Fatalf("%+v", r)
	}
	if u, g, _ := owner(cfg); u != uid || g != gid {
		t.Errorf("unregistered: owner %d:%d, want %d:%d", u, g, uid, gid)
	}

	// /etc/paas-runner and /var/lib/paas-runner as tmpfiles.d makes them
	etc, lib := filepath.Join(dir, "etc-paas-runner"), filepath.Join(dir, "var-lib-paas-runner")
	for _, d := range []string{etc, lib} {
		os.Mkdir(d, 0o700)
		if err := os.Chown(d, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	fresh := filepath.Join(etc, "config.toml")
	r = runReg("", "--non-interactive", "--url", gl.URL, "--token", "glrt-other-0123456789", "--name", "one", "--executor", "local-docker",
		"--state-file", filepath.Join(lib, "state.json"), fresh)
	if r.code != 0 || strings.Contains(r.stdout, "could not be stored") {
		t.Fatalf("%+v", r)
	}
	if u, g, m := owner(fresh); u != uid || g != gid || m != 0o600 {
		t.Errorf("new file: owner %d:%d mode %04o, want its directory's %d:%d, 0600", u, g, m, uid, gid)
	}
	// the system id files in the state directory are the daemon's too (it
	// exits 2 when it cannot open them)
	ents, _ := os.ReadDir(lib)
	if len(ents) == 0 {
		t.Fatal("no system id stored")
	}
	for _, e := range ents {
		if u, g, _ := owner(filepath.Join(lib, e.Name())); u != uid || g != gid {
			t.Errorf("%s: owner %d:%d, want %d:%d", e.Name(), u, g, uid, gid)
		}
	}
	// in a directory of root's, a new file stays root's
	own := filepath.Join(dir, "own.toml")
	gl.AddRunner("glrt-third-0123456789")
	if r := runReg("", "--non-interactive", "--url", gl.URL, "--token", "glrt-third-0123456789", "--name", "three", "--executor", "local-docker",
		"--state-file", filepath.Join(dir, "state3.json"), own); r.code != 0 {
		t.Fatalf("%+v", r)
	}
	if u, _, _ := owner(own); u != 0 {
		t.Errorf("new file in root's directory: owner %d, want root", u)
	}
}

package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The section exactly as issue 12 shows it (with a readable password file).
const guardsExample = `
[guards]
backend = "local"               # "local": this daemon's state file; "git": a shared lock repository
default_process_mode = "oldest_first"
max_waiting_jobs = 200          # acquired jobs held waiting; they take no concurrent/limit/provisioning slot
lease_margin = "10m"            # a hold expires at job timeout + margin, whatever happens to its daemon
  [guards.git]                  # backend = "git", Concourse pool-resource layout
  url = "https://gitlab.example.com/ops/locks.git"
  branch = "main"
  username = "locks-bot"
  password_file = "PASSWORD_FILE"   # or password; never logged
  retry_delay = "2s"
[[guards.pools]]                # local backend; with git the pools are the repository's directories
  name = "aws"
  namespaces = ["acme"]         # top-level namespaces allowed; empty = every namespace
  process_mode = "oldest_first"
  [guards.pools.locks]
    env-1 = "region=eu-west-1"  # lock name = metadata handed to the job
    env-2 = "region=eu-central-1"
`

func TestGuardsExample(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "locks.token")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(write(t, minimal+strings.Replace(guardsExample, "PASSWORD_FILE", pw, 1)), execs)
	if err != nil {
		t.Fatal(err)
	}
	g := c.Guards
	if g.Backend != "local" || g.DefaultProcessMode != "oldest_first" || g.MaxWaitingJobs != 200 || g.LeaseMargin != 10*time.Minute {
		t.Errorf("guards: %+v", g)
	}
	if g.Git.URL != "https://gitlab.example.com/ops/locks.git" || g.Git.Password != "s3cret" || g.Git.RetryDelay != 2*time.Second || g.Git.Username != "locks-bot" {
		t.Errorf("git: %+v", g.Git)
	}
	if len(g.Pools) != 1 || g.Pools[0].Name != "aws" || g.Pools[0].Namespaces[0] != "acme" || g.Pools[0].Locks["env-2"] != "region=eu-central-1" {
		t.Errorf("pools: %+v", g.Pools)
	}
}

func TestGuardsDefaults(t *testing.T) {
	c, err := Load(write(t, minimal), execs)
	if err != nil {
		t.Fatal(err)
	}
	g := c.Guards
	if g.Backend != "local" || g.DefaultProcessMode != "oldest_first" || g.MaxWaitingJobs != 200 || g.LeaseMargin != 10*time.Minute ||
		g.Git.RetryDelay != 2*time.Second || g.Git.Branch != "main" || g.LockEnvironments {
		t.Errorf("defaults: %+v", g)
	}
	c, err = Load(write(t, minimal+"[guards]\nbackend = \"git\"\n[guards.git]\nurl = \"https://h/locks.git\"\n[[guards.pools]]\nname = \"aws\"\nnamespaces = [\"acme\"]\n"), execs)
	if err != nil {
		t.Fatal(err)
	}
	if c.Guards.Git.RetryDelay != 2*time.Second || c.Guards.Pools[0].Locks != nil {
		t.Errorf("git defaults: %+v", c.Guards)
	}
}

func TestGuardsErrors(t *testing.T) {
	body := minimal + `[guards]
backend = "redis"
default_process_mode = "fifo"
max_waiting_jobs = 0
lease_margin = "ten minutes"
colour = "blue"
[guards.git]
url = "ftp://x"
password = "a"
password_file = "/nonexistent/locks.token"
retry_delay = "-2s"
[[guards.pools]]
name = "aws/1"
process_mode = "oldest-first"
namespaces = ["acme/sub"]
[guards.pools.locks]
"bad lock" = "x"
[[guards.pools]]
name = "gcp"
`
	_, err := Load(write(t, body), execs)
	if err == nil {
		t.Fatal("accepted")
	}
	msg := err.Error()
	for _, want := range []string{
		`:7: guards.backend: unknown backend "redis" (want local or git)`,
		`:8: guards.default_process_mode: unknown process mode "fifo"`,
		`:9: guards.max_waiting_jobs: must be a positive number of jobs`,
		`:10: guards.lease_margin: "ten minutes" is not a positive duration such as "10m" or "2s"`,
		`:11: guards.colour: unknown key`,
		`:15: guards.git.password_file: set password or password_file, not both`,
		`:15: guards.git.password_file: cannot read /nonexistent/locks.token: no such file or directory`,
		`:16: guards.git.retry_delay: "-2s" is not a positive duration`,
		`:18: guards.pools[0].name: "aws/1" has the character '/'`,
		`:19: guards.pools[0].process_mode: unknown process mode "oldest-first"`,
		`:20: guards.pools[0].namespaces[0]: "acme/sub" is not a top-level namespace`,
		`:22: guards.pools[0].locks.bad lock: "bad lock" has the character ' '`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("errors lack %q:\n%s", want, msg)
		}
	}
	// git backend: url required, no locks tables
	_, err = Load(write(t, minimal+"[guards]\nbackend = \"git\"\n[[guards.pools]]\nname = \"aws\"\n[guards.pools.locks]\nenv-1 = \"\"\n"), execs)
	if err == nil || !strings.Contains(err.Error(), "guards.git.url: required with backend = \"git\"") ||
		!strings.Contains(err.Error(), "guards.pools[0].locks: with backend = \"git\" the locks are the repository's files") {
		t.Fatalf("%v", err)
	}
	// local backend: a pool needs its locks
	_, err = Load(write(t, minimal+"[[guards.pools]]\nname = \"aws\"\n"), execs)
	if err == nil || !strings.Contains(err.Error(), ":7: guards.pools[0].locks: required with the local backend") {
		t.Fatalf("%v", err)
	}
	// [guards.git] is checked with the local backend too
	for _, u := range []string{"https://bot:pw@h/locks.git", "ssh://git@h/locks.git"} {
		_, err = Load(write(t, minimal+"[guards.git]\nurl = \""+u+"\"\n"), execs)
		if err == nil || !strings.Contains(err.Error(), ":7: guards.git.url: ") || strings.Contains(err.Error(), "pw@") {
			t.Errorf("%s with the local backend: %v", u, err)
		}
	}
	_, err = Load(write(t, minimal+"[guards]\nbackend = \"git\"\n[guards.git]\nurl = \"https://bot:pw@h/locks.git\"\n"), execs)
	if err == nil || !strings.Contains(err.Error(), "guards.git.url: put the credentials in username and password") || strings.Contains(err.Error(), "pw@") {
		t.Fatalf("%v", err)
	}
}

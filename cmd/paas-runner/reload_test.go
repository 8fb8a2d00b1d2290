package main

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/guard"
	"gitlab.com/paas-runner/paas-runner/internal/testca"
)

// The keys a reload cannot apply are named; the live ones are not.
func TestReloadRestartKeys(t *testing.T) {
	old := &config.Config{StateFile: "/a", ListenAddress: ":1", Concurrent: 1, CheckInterval: 3, LogLevel: "info"}
	cfg := *old
	cfg.Concurrent, cfg.CheckInterval, cfg.LogLevel, cfg.PaasTrackingRequestsPerSecond = 5, 1, "debug", 7
	if k := topRestartKeys(old, &cfg); len(k) != 0 {
		t.Fatalf("live keys reported as needing a restart: %v", k)
	}
	cfg.StateFile, cfg.ListenAddress = "/b", ":2"
	if k := topRestartKeys(old, &cfg); !reflect.DeepEqual(k, []string{"state_file", "listen_address"}) {
		t.Fatalf("restart keys %v", k)
	}
	cfg.StateFile, cfg.ListenAddress = old.StateFile, old.ListenAddress
	cfg.QuotaComputation = &config.QuotaComputation{ReferenceRunner: "r", ReferenceFlavor: "M", ReferenceJobsCount: 2}
	if k := topRestartKeys(old, &cfg); !reflect.DeepEqual(k, []string{"quota_computation"}) {
		t.Fatalf("restart keys with a quota added: %v", k)
	}
	moved := *cfg.QuotaComputation
	moved.RunnerIndex = 3 // runners reordered: the same quota
	old.QuotaComputation = &moved
	if k := topRestartKeys(old, &cfg); len(k) != 0 {
		t.Fatalf("the same quota reported: %v", k)
	}

	g := config.Guards{Backend: "local", DefaultProcessMode: "oldest_first", MaxWaitingJobs: 10,
		Pools: []config.GuardPool{{Name: "p", Locks: map[string]string{"a": ""}, Namespaces: []string{"x"}}}}
	g2 := g
	g2.DefaultProcessMode, g2.MaxWaitingJobs, g2.LockEnvironments = "newest_first", 3, true
	g2.Pools = []config.GuardPool{{Name: "p", Locks: map[string]string{"a": ""}, Namespaces: []string{"y"}, Supersede: true}}
	if k := guardRestartKeys(g, g2); len(k) != 0 {
		t.Fatalf("live guard keys reported: %v", k)
	}
	g2.Pools = []config.GuardPool{{Name: "p", Locks: map[string]string{"a": "", "b": ""}}, {Name: "q"}}
	if k := guardRestartKeys(g, g2); len(k) != 0 {
		t.Fatalf("pools and their locks are live, reported: %v", k)
	}
	g2.LeaseMargin = time.Minute
	if k := guardRestartKeys(g, g2); !reflect.DeepEqual(k, []string{"guards.lease_margin"}) {
		t.Fatalf("guard restart keys %v", k)
	}

	r := config.Runner{Name: "r", URL: "https://a", Token: "glrt-x", Executor: "local-docker", Limit: 1}
	r2 := r
	r2.Limit = 4
	if k := runnerRestartKeys(r, r2); len(k) != 0 {
		t.Fatalf("limit reported as needing a restart: %v", k)
	}
	r2.URL, r2.Executor = "https://b", "clever-docker"
	r2.Inner = map[string]any{"docker": map[string]any{"privileged": true}}
	if k := runnerRestartKeys(r, r2); !reflect.DeepEqual(k, []string{`runners["r"].url`, `runners["r"].executor`, `runners["r"].docker`}) {
		t.Fatalf("runner restart keys %v", k)
	}
}

// The pipeline guard's tokens follow a reload: an added runner's
// guard_api_token is used, a removed runner's is forgotten.
func TestReloadPipelineGuardTokens(t *testing.T) {
	a := config.Runner{Token: "glrt-a-0123456789", GuardAPIToken: "tok-a"}
	b := config.Runner{Token: "glrt-b-0123456789", GuardAPIToken: "tok-b"}
	p, tokens := buildPipelineGuardTokens(&config.Config{Runners: []config.Runner{a}}, nil, "r_000000000000", guard.NewCore(), zap.NewNop())
	if p.Token(a.ID()) != "tok-a" || p.Token(b.ID()) != "" {
		t.Fatal("tokens at start")
	}
	tokens.set(&config.Config{Runners: []config.Runner{b}})
	if p.Token(a.ID()) != "" || p.Token(b.ID()) != "tok-b" {
		t.Fatal("tokens after the reload")
	}
}

// A reload names the keys that need a restart as the user writes them in
// the file (tls-ca-file, not tls_ca_file; docker, environment, not a
// description): every name reported for two files that differ in each
// restart key is a key of the second file.
func TestReloadRestartKeysAsWritten(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) *config.Config {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		ca, err := testca.New()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ca.WriteFile(dir, "ca-"+name); err != nil {
			t.Fatal(err)
		}
		c, err := config.Load(p, config.Options{Executors: []string{"local-docker", "clever-docker"}})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	file := func(n int) string {
		return fmt.Sprintf(`state_file = "/tmp/s%[1]d.json"
listen_address = "127.0.0.1:%[1]d"
log_format = "%[2]s"
shutdown_timeout = %[1]d
job_progress_poll_interval = %[1]d
paas_finished_jobs_keep_resources = %[3]t
paas_decommission_launch_failures = %[3]t
paas_min_seconds_between_launches = %[1]d
paas_log_statistics = %[3]t

[[runners]]
name = "r"
url = "https://gitlab%[1]d.example"
token = "glrt-0123456789"
executor = "local-docker"
tls-ca-file = %[4]q
unhealthy_requests_limit = %[1]d
unhealthy_interval = %[1]d
inner_image = "inner:%[1]d"
environment = ["A=%[1]d"]
output_limit = %[1]d
[runners.local_docker]
network_mode = "n%[1]d"
[runners.docker]
privileged = %[3]t
[runners.cache]
Path = "p%[1]d"
Shared = %[3]t
`, n, map[int]string{1: "text", 2: "json"}[n], n == 2, filepath.Join(dir, fmt.Sprintf("ca-%d.toml", n)))
	}
	c1, c2 := write("1.toml", file(1)), write("2.toml", file(2))
	text := file(2)
	keys := append(topRestartKeys(c1, c2), runnerRestartKeys(c1.Runners[0], c2.Runners[0])...)
	if len(keys) < 15 {
		t.Fatalf("only %d keys reported: %v", len(keys), keys)
	}
	for _, k := range keys {
		k = strings.TrimPrefix(k, `runners["r"].`)
		if !regexp.MustCompile(`(?m)^(` + regexp.QuoteMeta(k) + ` = |\[runners\.` + regexp.QuoteMeta(k) + `\])`).MatchString(text) {
			t.Errorf("a reload reports %q, which is not a key as the file writes it", k)
		}
	}
}

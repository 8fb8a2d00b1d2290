package main

import (
	"reflect"
	"testing"
	"time"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/guard"
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
	if k := runnerRestartKeys(r, r2); !reflect.DeepEqual(k, []string{`runners["r"].url`, `runners["r"].executor`, `runners["r"].docker, cache and job keys`}) {
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

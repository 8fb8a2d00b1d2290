package main

import (
	"testing"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/guard"
	"gitlab.com/paas-runner/paas-runner/job"
)

// [guards] reaches the guard: default mode, lock_environments, pools with
// their namespaces, modes and supersede.
func TestGuardPolicyFromConfig(t *testing.T) {
	p := guardPolicy(config.Guards{DefaultProcessMode: "newest_first", LockEnvironments: true,
		Pools: []config.GuardPool{{Name: "aws", Namespaces: []string{"acme"}, ProcessMode: "unordered", Supersede: true}}})
	if p.DefaultMode != guard.NewestFirst || !p.LockEnvironments {
		t.Fatalf("%+v", p)
	}
	if pp := p.Pools["aws"]; pp.Mode != guard.Unordered || !pp.Supersede || pp.Namespaces[0] != "acme" {
		t.Fatalf("%+v", pp)
	}
	pl := &job.Payload{Variables: job.Variables{{Key: "CI_PROJECT_PATH", Value: "acme/web"}, {Key: "CI_ENVIRONMENT_NAME", Value: "production"}}}
	r, err := guard.ParseRequest(pl, p, guard.JobRef{}, nil)
	if err != nil || r == nil || len(r.Demands) != 1 {
		t.Fatalf("lock_environments: %+v %v", r, err)
	}
}

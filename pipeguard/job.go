package pipeguard

import (
	"errors"
	"fmt"
	"strconv"
)

// JobGuard is what the daemon needs to guard one job, read from its CI
// variables.
type JobGuard struct {
	Request
	// TokenVariable names the variable the token came from ("" = the
	// runner's configured token): persist this, never the token, and read
	// the token again from the job's payload after a restart.
	TokenVariable string
}

// ErrNoToken: a job asks for a pipeline guard but no token is available.
var ErrNoToken = errors.New("pipeline guard: no API token: set GUARD_PRIVATE_TOKEN or PRIVATE_TOKEN (read_api scope) in the job's variables, or guard_api_token in the runner's configuration")

// FromJobVariables reads a job's pipeline guard. active is false when the
// job asks for none (then the rest is zero). configuredToken is the
// runner's guard_api_token, used when the job has no token variable.
// Errors name the variable at fault; the job should fail with them.
func FromJobVariables(l Lookup, configuredToken string) (g JobGuard, active bool, err error) {
	active, err = Active(l)
	if err != nil || !active {
		return JobGuard{}, active, err
	}
	spec, err := SpecFromVariables(l, Spec{})
	if err != nil {
		return JobGuard{}, true, err
	}
	rule, err := NewRule(spec)
	if err != nil {
		return JobGuard{}, true, err
	}
	g.Rule = rule
	var ok bool
	if g.APIURL, ok = get(l, "CI_API_V4_URL"); !ok {
		return JobGuard{}, true, fmt.Errorf("pipeline guard: CI_API_V4_URL is not set")
	}
	if g.Project, ok = get(l, "CI_PROJECT_ID"); !ok {
		return JobGuard{}, true, fmt.Errorf("pipeline guard: CI_PROJECT_ID is not set")
	}
	pid, _ := get(l, "CI_PIPELINE_ID")
	if g.PipelineID, err = strconv.ParseInt(pid, 10, 64); err != nil {
		return JobGuard{}, true, fmt.Errorf("pipeline guard: CI_PIPELINE_ID %q is not a pipeline id", pid)
	}
	g.TokenVariable = TokenVariable(l)
	if g.TokenVariable != "" {
		g.Token, _ = get(l, g.TokenVariable)
	} else {
		g.Token = configuredToken
	}
	if g.Token == "" {
		return JobGuard{}, true, ErrNoToken
	}
	return g, true, nil
}

// Name is the guard's name in metrics and /debug/locks: pipelines:<project>.
func (r Request) Name() string { return "pipelines:" + r.Project }

package guard

import (
	"errors"
	"strings"
	"testing"

	"gitlab.com/paas-runner/paas-runner/job"
)

func payload(vars map[string]string) *job.Payload {
	p := &job.Payload{ID: 10}
	p.JobInfo.PipelineID = 230
	p.GitInfo.Ref = "main"
	base := map[string]string{"CI_PROJECT_PATH": "acme/web", "CI_PROJECT_ROOT_NAMESPACE": "acme"}
	for k, v := range base {
		if _, ok := vars[k]; !ok {
			p.Variables = append(p.Variables, job.Variable{Key: k, Value: v})
		}
	}
	for _, k := range sortedKeys(vars) {
		p.Variables = append(p.Variables, job.Variable{Key: k, Value: vars[k]})
	}
	return p
}

var testPolicy = &Policy{Pools: map[string]PoolPolicy{
	"aws":    {Namespaces: []string{"acme"}},
	"shared": {},
}}

func exists(p string) bool { return p == "aws" || p == "shared" }

func TestParseRequestDemands(t *testing.T) {
	r, err := ParseRequest(payload(map[string]string{
		VarLock: "production, group:deploy", VarPool: "aws,shared/one", VarMode: "newest_first",
		VarTimeout: "90", VarNoWait: "true", VarSupersede: "false",
	}), testPolicy, JobRef{Daemon: "d", Runner: "r", JobID: 10}, exists)
	if err != nil {
		t.Fatal(err)
	}
	want := []Demand{{projectPool("acme/web", "production"), MutexLock}, {groupPool("acme", "deploy"), MutexLock}, {"aws", ""}, {"shared", "one"}}
	if len(r.Demands) != len(want) {
		t.Fatalf("demands %+v", r.Demands)
	}
	for i := range want {
		if r.Demands[i] != want[i] {
			t.Errorf("demand %d = %+v, want %+v", i, r.Demands[i], want[i])
		}
	}
	if r.Mode != NewestFirst || r.Timeout.Seconds() != 90 || !r.NoWait || r.Supersede {
		t.Errorf("request %+v", r)
	}
	if r.Job.PipelineID != 230 || r.Job.Ref != "main" || r.Job.Project != "acme/web" {
		t.Errorf("job ref %+v", r.Job)
	}
	// project scope: the same name in another project is another lock
	r2, err := ParseRequest(payload(map[string]string{VarLock: "production", "CI_PROJECT_PATH": "acme/api"}), testPolicy, JobRef{}, exists)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Demands[0] == r.Demands[0] {
		t.Error("project locks of two projects are the same lock")
	}
	// group scope: shared across the namespace's projects
	r3, _ := ParseRequest(payload(map[string]string{VarLock: "group:deploy", "CI_PROJECT_PATH": "acme/api"}), testPolicy, JobRef{}, exists)
	if r3.Demands[0] != r.Demands[1] {
		t.Error("group locks differ between projects of one namespace")
	}
}

func TestParseRequestNone(t *testing.T) {
	r, err := ParseRequest(payload(nil), testPolicy, JobRef{}, exists)
	if r != nil || err != nil {
		t.Fatalf("%v %v", r, err)
	}
	// lock_environments: an environment is a project lock
	pol := &Policy{LockEnvironments: true}
	r, err = ParseRequest(payload(map[string]string{"CI_ENVIRONMENT_NAME": "review/feature-1"}), pol, JobRef{}, exists)
	if err != nil || r == nil || r.Demands[0].Pool != projectPool("acme/web", "environment:review/feature-1") {
		t.Fatalf("%+v %v", r, err)
	}
	if r, _ := ParseRequest(payload(map[string]string{"CI_ENVIRONMENT_NAME": "prod"}), testPolicy, JobRef{}, exists); r != nil {
		t.Fatal("environment locked without lock_environments")
	}
}

func TestParseRequestErrors(t *testing.T) {
	many := strings.Repeat("a,", 99) + "a"
	for _, c := range []struct {
		vars map[string]string
		want string
	}{
		{map[string]string{VarLock: "a,,b"}, "PAAS_LOCK: name 2 of \"a,,b\" is empty"},
		{map[string]string{VarLock: ","}, "is empty"},
		{map[string]string{VarLock: "prod uction"}, "has the character ' '"},
		{map[string]string{VarLock: "a/b"}, "has the character '/'"},
		{map[string]string{VarLock: ".hidden"}, "starts with '.'"},
		{map[string]string{VarLock: strings.Repeat("x", 101)}, "longer than 100"},
		{map[string]string{VarLock: many}, "PAAS_LOCK names 100 locks: at most 16"},
		{map[string]string{VarLock: "a,a"}, "\"a\" is named twice"},
		{map[string]string{VarLock: "group:"}, "empty name"},
		{map[string]string{VarPool: "gcp"}, "pool \"gcp\" does not exist"},
		{map[string]string{VarPool: "aws", "CI_PROJECT_ROOT_NAMESPACE": "evil", "CI_PROJECT_PATH": "evil/x"}, "pool \"aws\" is not open to namespace \"evil\" (allowed: acme)"},
		{map[string]string{VarPool: "aws/"}, "lock: empty name"},
		{map[string]string{VarLock: "a", VarMode: "oldest-first"}, "PAAS_PROCESS_MODE: unknown process mode \"oldest-first\""},
		{map[string]string{VarLock: "a", VarTimeout: "soon"}, "PAAS_LOCK_TIMEOUT: \"soon\" is not a number of seconds"},
		{map[string]string{VarLock: "a", VarTimeout: "0"}, "PAAS_LOCK_TIMEOUT"},
		{map[string]string{VarLock: "a", VarNoWait: "maybe"}, "PAAS_LOCK_NO_WAIT: \"maybe\" is not true or false"},
	} {
		_, err := ParseRequest(payload(c.vars), testPolicy, JobRef{}, exists)
		var de *DeclarationError
		if !errors.As(err, &de) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want it to contain %q", c.vars, err, c.want)
		}
	}
}

func TestVariables(t *testing.T) {
	r, err := ParseRequest(payload(map[string]string{VarLock: "production", VarPool: "aws"}), testPolicy, JobRef{}, exists)
	if err != nil {
		t.Fatal(err)
	}
	vs := job.Variables(r.Variables([]Claim{{r.Demands[0].Pool, MutexLock}, {"aws", "env-1"}}, func(c Claim) string { return "region=eu-west-1" }))
	for k, want := range map[string]string{"PAAS_LOCKS": "production,aws/env-1", "PAAS_POOL_AWS_NAME": "env-1",
		"PAAS_POOL_AWS_METADATA": "region=eu-west-1", "PAAS_POOL_NAME": "env-1", "PAAS_POOL_METADATA": "region=eu-west-1"} {
		if got := vs.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	r, _ = ParseRequest(payload(map[string]string{VarPool: "aws,shared"}), testPolicy, JobRef{}, exists)
	vs = r.Variables([]Claim{{"aws", "e1"}, {"shared", "s-1"}}, func(c Claim) string { return c.Lock })
	if _, ok := vs.Lookup("PAAS_POOL_NAME"); ok {
		t.Error("PAAS_POOL_NAME set with two pool locks")
	}
	if vs.Get("PAAS_POOL_SHARED_NAME") != "s-1" || envName("my-pool.x") != "MY_POOL_X" {
		t.Errorf("%+v", vs)
	}
}

// A job cannot choose its scope: GitLab sends a job's own variable of a
// predefined name after the predefined one (predefined variables have the
// lowest precedence), and the scope is the predefined value. A job of
// namespace evil naming itself acme/web gets neither acme's pool nor
// acme/web's project lock, nor a place before acme/web's pipelines.
func TestParseRequestScopeIsGitLabs(t *testing.T) {
	p := &job.Payload{ID: 10}
	p.Variables = job.Variables{
		{Key: "CI_PROJECT_PATH", Value: "evil/x"}, {Key: "CI_PROJECT_ROOT_NAMESPACE", Value: "evil"}, {Key: "CI_PIPELINE_ID", Value: "7"},
		{Key: "CI_PROJECT_PATH", Value: "acme/web"}, {Key: "CI_PROJECT_ROOT_NAMESPACE", Value: "acme"}, {Key: "CI_PIPELINE_ID", Value: "1"},
		{Key: VarPool, Value: "aws"},
	}
	_, err := ParseRequest(p, testPolicy, JobRef{}, exists)
	if err == nil || !strings.Contains(err.Error(), `pool "aws" is not open to namespace "evil"`) {
		t.Fatalf("a job of namespace evil overriding its CI_PROJECT_* variables: %v", err)
	}
	p.Variables[len(p.Variables)-1] = job.Variable{Key: VarLock, Value: "production,group:deploy"}
	r, err := ParseRequest(p, testPolicy, JobRef{}, exists)
	if err != nil {
		t.Fatal(err)
	}
	if r.Demands[0].Pool != projectPool("evil/x", "production") || r.Demands[1].Pool != groupPool("evil", "deploy") ||
		r.Job.Project != "evil/x" || r.Job.PipelineID != 7 {
		t.Fatalf("scope taken from the job's own variables: %+v %+v", r.Demands, r.Job)
	}
}

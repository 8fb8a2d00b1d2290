package jobrunner

import (
	"fmt"
	"runtime"
	"strconv"
	"strings"

	"gitlab.com/paas-runner/paas-runner/job"
)

// Variables a job gets, and the environment of its containers.

// projectDir is where the sources go: <builds_dir>/<project full path>.
func (r *runner) projectDir() string {
	p := r.p.JobInfo.ProjectFullPath
	if p == "" {
		p = fmt.Sprintf("project-%d", r.p.JobInfo.ProjectID)
	}
	return strings.TrimRight(r.o.Config.BuildsDir, "/") + "/" + p
}

// variables: the payload's, the runner's environment, and the predefined
// ones a runner adds.
func (r *runner) variables() job.Variables {
	c := r.o.Config
	vs := job.Variables{
		{Key: "CI_PROJECT_DIR", Value: r.projectDir(), Public: true},
		{Key: "CI_BUILDS_DIR", Value: c.BuildsDir, Public: true},
		{Key: "CI_SERVER", Value: "yes", Public: true},
		{Key: "CI_RUNNER_SHORT_TOKEN", Value: "", Public: true},
		{Key: "CI_RUNNER_EXECUTABLE_ARCH", Value: runtime.GOOS + "/" + runtime.GOARCH, Public: true},
		{Key: "CI_RUNNER_VERSION", Value: r.o.Info.Version, Public: true},
		{Key: "CI_RUNNER_REVISION", Value: r.o.Info.Revision, Public: true},
		{Key: "CI_JOB_TIMEOUT", Value: strconv.Itoa(r.p.RunnerInfo.Timeout), Public: true},
		{Key: "CI_DISPOSABLE_ENVIRONMENT", Value: "true", Public: true},
		{Key: "CI", Value: "true", Public: true},
		{Key: "GITLAB_CI", Value: "true", Public: true},
	}
	if len(c.TLSCA) > 0 {
		// as gitlab-runner: the job's own git, curl… can trust GitLab
		vs = append(vs, job.Variable{Key: "CI_SERVER_TLS_CA_FILE", Value: string(c.TLSCA), File: true})
	}
	for _, e := range c.Environment {
		if k, v, ok := strings.Cut(e, "="); ok {
			vs = append(vs, job.Variable{Key: k, Value: v})
		}
	}
	return append(vs, r.p.Variables...)
}

// env renders variables for a container: each expanded once unless raw
// (job.Variables.Expanded); file variables point at files written under
// dir.
func (r *runner) env(extra ...job.Variable) ([]string, map[string][]byte) {
	vs := append(append(job.Variables{}, r.vars...), extra...).Expanded()
	files := map[string][]byte{}
	seen := map[string]int{}
	var out []string
	for _, v := range vs {
		val := v.Value
		if v.File {
			p := r.projectDir() + ".tmp/" + v.Key
			files[p] = []byte(val)
			val = p
		}
		if i, ok := seen[v.Key]; ok {
			out[i] = v.Key + "=" + val
			continue
		}
		seen[v.Key] = len(out)
		out = append(out, v.Key+"="+val)
	}
	return out, files
}

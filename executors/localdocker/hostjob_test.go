package localdocker

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
)

// busyboxImage builds a job image (FROM scratch + busybox), removed after
// the test.
func busyboxImage(t *testing.T) string {
	t.Helper()
	cli, err := localdockertest.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	tag := fmt.Sprintf("paas-runner-test-busybox:hj%d", time.Now().UnixNano())
	if err := localdockertest.BuildBusyboxImage(ctxT(t), cli, tag); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { localdockertest.RemoveImage(cli, tag) })
	return tag
}

// hostJob is a job running in a fake GitLab, as if the daemon had acquired
// it, for an executor whose inner runner reports there.
type hostJob struct {
	gl  *coordinatortest.Server
	q   *coordinatortest.Job
	e   *Executor
	job executors.Job
	h   executors.Handle
}

// newHostJob makes the fake GitLab, the executor (hosts on the machine's
// network, [runners.docker] as docker, pull_policy never unless set), and
// a job running script in image, with no sources unless edit (given the
// payload) says otherwise.
func newHostJob(t *testing.T, docker map[string]any, image string, script []string, edit func(p map[string]any, q *coordinatortest.Job)) *hostJob {
	t.Helper()
	gl := coordinatortest.New(t)
	runnerToken := "glrt-hj-" + testID(t, 8)
	gl.AddRunner(runnerToken)
	d := map[string]any{"pull_policy": "never"}
	for k, v := range docker {
		d[k] = v
	}
	e := newExec(t, func(o *Options) {
		o.NetworkMode, o.RunnerURL = "host", gl.URL
		o.Inner = map[string]any{"docker": d}
	})
	q := gl.AddRunning(runnerToken)
	p := map[string]any{}
	for k, v := range q.Payload {
		p[k] = v
	}
	p["image"] = map[string]any{"name": image}
	p["git_info"] = map[string]any{"repo_url": "", "ref": "main", "sha": "", "depth": 0}
	p["variables"] = append(q.Payload["variables"].([]map[string]any), map[string]any{"key": "GIT_STRATEGY", "value": "none", "public": true})
	p["steps"] = []map[string]any{{"name": "script", "script": script, "timeout": 600, "when": "on_success"}}
	if edit != nil {
		edit(p, q)
	}
	raw, _ := json.Marshal(p)
	return &hostJob{gl: gl, q: q, e: e, job: executors.Job{RunnerID: e.opts.RunnerID, ID: q.ID, Token: q.Token, Payload: raw}}
}

// provision plans and provisions the job's host (decommissioned after the
// test).
func (hj *hostJob) provision(t *testing.T) {
	t.Helper()
	ctx := ctxT(t)
	hj.h, _ = hj.e.Plan(ctx, hj.job)
	if _, err := hj.e.Provision(ctx, hj.h, hj.job); err != nil {
		t.Fatal(err)
	}
	h := hj.h
	t.Cleanup(func() { hj.e.Decommission(context.Background(), h) })
}

// run launches the provisioned host, waits for it to end, and returns the
// job as GitLab has it.
func (hj *hostJob) run(t *testing.T) coordinatortest.Job {
	t.Helper()
	if _, err := hj.e.Launch(ctxT(t), hj.h, hj.job); err != nil {
		t.Fatal(err)
	}
	waitExited(t, hj.e, hj.h)
	return hj.gl.Job(hj.q.ID)
}

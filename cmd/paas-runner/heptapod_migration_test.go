package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
)

// heptapodRun makes a job's host the way Heptapod PAAS Runner's
// local-docker does: `docker build -t hpd-job-<prefix>-<id>` FROM its
// inner image with runner.toml and job.json, then `docker run --rm -t -v
// <socket>:/var/run/docker.sock <tag>` (when run). It returns the tag.
func heptapodRun(t *testing.T, cli *client.Client, runnerID, url string, j *coordinatortest.Job, run bool) string {
	t.Helper()
	ctx := context.Background()
	tag := fmt.Sprintf("hpd-job-%s-%d", strings.ToLower(runnerID), j.ID)
	payload, _ := json.Marshal(j.Payload)
	err := localdockertest.BuildImage(ctx, cli, tag, map[string][]byte{
		"Dockerfile": []byte("FROM " + innerTag + `
COPY runner.toml /etc/heptapod-runner/runner.toml
COPY job.json /etc/heptapod-runner/job.json
ENV DEBUG="true"
ENTRYPOINT ["/usr/bin/gitlab-runner", "exec-fetched-job", "--config", "/etc/heptapod-runner/runner.toml","/etc/heptapod-runner/job.json"]
`),
		"runner.toml": []byte(fmt.Sprintf("[[runners]]\nexecutor = \"docker\"\nurl = %q\n", url)),
		"job.json":    payload,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { localdockertest.RemoveImage(cli, tag) })
	if !run {
		return tag
	}
	sock := strings.TrimPrefix(cli.DaemonHost(), "unix://")
	c, err := cli.ContainerCreate(ctx, &container.Config{Image: tag, Tty: true},
		&container.HostConfig{AutoRemove: true, NetworkMode: "host", Binds: []string{sock + ":/var/run/docker.sock"}}, nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true}) })
	if err := cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	return tag
}

// Migrating from a running Heptapod PAAS Runner (local-docker): it was
// stopped while jobs ran, their hosts still running, recorded under
// pending (its launch blocks until the job ends) and launched. paas-runner
// started on its state file adopts the jobs whose host runs and tracks
// them to their end (host removed with its image when GitLab says the job
// ended; job failed if the host dies first); only the job whose host is
// gone is failed.
func TestLocalDockerHeptapodMigration(t *testing.T) {
	cli := dockerInner(t)
	if !strings.HasPrefix(cli.DaemonHost(), "unix://") {
		t.Skip("the engine is not on a unix socket")
	}
	tok := fmt.Sprintf("Hm%06d-legacy-token", os.Getpid()%1000000) // a legacy token: Heptapod's 8 characters
	runnerID := config.RunnerID(tok)
	gl, dir, cfg := localDockerConfig(t, "concurrent = 4\ncheck_interval = 0.1",
		ldRunner{tok, fmt.Sprintf("inner_image = %q\n  [runners.local_docker]\n  network_mode = \"host\"", innerTag)})
	idle := map[string]any{"variables": []map[string]any{{"key": "TEST_INNER", "value": "idle", "public": true, "masked": false}}}
	pendingAlive, launchedAlive, gone := gl.AddRunning(tok), gl.AddRunning(tok), gl.AddRunning(tok)
	for _, j := range []*coordinatortest.Job{pendingAlive, launchedAlive, gone} {
		gl.Each(func(sj *coordinatortest.Job) {
			if sj.ID == j.ID {
				sj.Payload["variables"] = idle["variables"]
				j.Payload = sj.Payload
			}
		})
	}
	tags := map[int64]string{}
	for _, j := range []*coordinatortest.Job{pendingAlive, launchedAlive, gone} {
		tags[j.ID] = heptapodRun(t, cli, runnerID, gl.URL, j, j != gone)
	}
	h := func(j *coordinatortest.Job) map[string]any {
		return map[string]any{"runner_name": runnerID, "job_id": j.ID, "token": j.Token, "trace_offset": 0, "expected_weight": 1, "paas_resource": tags[j.ID]}
	}
	state, _ := json.Marshal(map[string]any{
		"launched": []any{h(launchedAlive)},
		"pending":  []any{[]any{h(pendingAlive), pendingAlive.Payload}, []any{h(gone), gone.Payload}},
	})
	if err := os.WriteFile(filepath.Join(dir, "state.json"), state, 0o600); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: dir, config: cfg, gl: gl}
	p := e.start("")

	gl.WaitFor(procWait, "the job whose host is gone to fail", func(s *coordinatortest.Server) bool { return jobFinal(s.StatusOf(gone.ID)) })
	if g := gl.Job(gone.ID); g.Status != "failed" || g.FailureReason != "runner_system_failure" {
		t.Fatalf("job whose host is gone: %s %s\n%s", g.Status, g.FailureReason, g.Trace)
	}
	// Adopted: either the dispatcher's resume inspection finds the host
	// running the job and only tracks it, or the executor's Launch adopts
	// the running container.
	adopted := func() bool {
		for _, line := range strings.Split(p.log(), "\n") {
			if strings.Contains(line, fmt.Sprintf(`"job_id": %d`, pendingAlive.ID)) &&
				(strings.Contains(line, "the job's host already runs it") || strings.Contains(line, "adopted a host Heptapod PAAS Runner launched")) {
				return true
			}
		}
		return false
	}
	deadline := time.Now().Add(procWait)
	for !adopted() {
		if time.Now().After(deadline) {
			t.Fatal("the pending job's host was not adopted")
		}
		time.Sleep(20 * time.Millisecond) // the daemon is another process
	}
	for _, j := range []*coordinatortest.Job{pendingAlive, launchedAlive} {
		if st := gl.StatusOf(j.ID); st != "running" {
			t.Fatalf("job %d with a running host: %s\n%s", j.ID, st, gl.Job(j.ID).Trace)
		}
	}
	// GitLab ends the pending one: its host and image go
	gl.Finish(pendingAlive.ID, "success")
	// the launched one's host dies before reporting: the job fails
	hostOf := func(tag string) string {
		cs, _ := cli.ContainerList(context.Background(), container.ListOptions{})
		for _, c := range cs {
			if c.Image == tag {
				return c.ID
			}
		}
		return ""
	}
	if c := hostOf(tags[launchedAlive.ID]); c == "" {
		t.Fatal("the launched job's Heptapod host is not running")
	} else if err := cli.ContainerKill(context.Background(), c, "KILL"); err != nil {
		t.Fatal(err)
	}
	gl.WaitFor(procWait, "the launched job to fail", func(s *coordinatortest.Server) bool { return jobFinal(s.StatusOf(launchedAlive.ID)) })
	if l := gl.Job(launchedAlive.ID); l.Status != "failed" || l.FailureReason != "runner_system_failure" {
		t.Fatalf("launched job whose host died: %s %s\n%s", l.Status, l.FailureReason, l.Trace)
	}
	for deadline := time.Now().Add(procWait); ; time.Sleep(50 * time.Millisecond) { // the daemon removes them
		left := []string{}
		for _, tag := range tags {
			if _, err := cli.ImageInspect(context.Background(), tag); !cerrdefs.IsNotFound(err) {
				left = append(left, tag)
			}
		}
		if len(left) == 0 && hostOf(tags[pendingAlive.ID]) == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Heptapod hosts or images left: %v", left)
		}
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

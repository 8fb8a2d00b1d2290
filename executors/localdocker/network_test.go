package localdocker

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
)

// A job's script container joins its host container's network namespace
// unless [runners.docker] network_mode says otherwise. Docker gives a
// container joining another's namespace that container's hostname, so
// with hosts on the machine's network the script's `hostname` is the
// machine's; with network_mode = "bridge" it is its own container's.
func TestJobSharesTheHostNetwork(t *testing.T) {
	needDocker(t)
	ctx := ctxT(t)
	cli, err := localdockertest.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	machine, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	jobImage := fmt.Sprintf("paas-runner-test-busybox:net%d", time.Now().UnixNano())
	if err := localdockertest.BuildBusyboxImage(ctx, cli, jobImage); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { localdockertest.RemoveImage(cli, jobImage) })
	for _, tc := range []struct {
		name   string
		docker map[string]any
		shared bool
	}{
		{"default: the host's network", map[string]any{"pull_policy": "never"}, true},
		{"network_mode = bridge", map[string]any{"pull_policy": "never", "network_mode": "bridge"}, false},
		{"extra_hosts: Docker refuses it in a shared namespace", map[string]any{"pull_policy": "never", "extra_hosts": []string{"db.example:10.0.0.1"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gl := coordinatortest.New(t)
			runnerToken := "glrt-net-" + testID(t, 8)
			gl.AddRunner(runnerToken)
			e := newExec(t, func(o *Options) {
				o.NetworkMode = "host"
				o.RunnerURL = gl.URL
				o.Inner = map[string]any{"docker": tc.docker}
			})
			q := gl.AddRunning(runnerToken)
			payload := map[string]any{}
			for k, v := range q.Payload {
				payload[k] = v
			}
			payload["image"] = map[string]any{"name": jobImage}
			payload["git_info"] = map[string]any{"repo_url": "", "ref": "main", "sha": "", "depth": 0}
			payload["variables"] = append(q.Payload["variables"].([]map[string]any), map[string]any{"key": "GIT_STRATEGY", "value": "none", "public": true})
			payload["steps"] = []map[string]any{{"name": "script", "script": []string{`echo "hostname=$(hostname)"`}, "timeout": 600, "when": "on_success"}}
			p, _ := json.Marshal(payload)
			job := executors.Job{RunnerID: e.opts.RunnerID, ID: q.ID, Token: q.Token, Payload: p}
			h, _ := e.Plan(ctx, job)
			if _, err := e.Provision(ctx, h, job); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { e.Decommission(context.Background(), h) })
			if _, err := e.Launch(ctx, h, job); err != nil {
				t.Fatal(err)
			}
			waitExited(t, e, h)
			got := gl.Job(q.ID)
			if got.Status != "success" {
				t.Fatalf("job %s:\n%s", got.Status, got.Trace)
			}
			shared := strings.Contains(string(got.Trace), "hostname="+machine+"\n")
			if shared != tc.shared || !strings.Contains(string(got.Trace), "hostname=") {
				t.Fatalf("shares the host's network: %v, want %v (machine %q):\n%s", shared, tc.shared, machine, got.Trace)
			}
		})
	}
}

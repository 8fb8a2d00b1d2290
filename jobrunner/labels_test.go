package jobrunner

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/internal/labels"
)

func TestLoadJobIdentity(t *testing.T) {
	dir := t.TempDir()
	write := func(name, pr string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(`{"id":5,"token":"tok-5","paas_runner":{`+pr+`}}`), 0o600)
		return p
	}
	j, err := LoadJob(write("ours.json", `"trace_offset":3,"system_id":"r_abcdefabcdef","runner_id":"t1234567"`))
	if err != nil || j.SystemID != "r_abcdefabcdef" || j.RunnerID != "t1234567" || j.TraceOffset != 3 {
		t.Fatalf("%+v %v", j, err)
	}
	// a Heptapod-made job.json says neither
	j, err = LoadJob(write("heptapod.json", `"trace_offset":3`))
	if err != nil || j.SystemID != "" || j.RunnerID != "" {
		t.Fatalf("%+v %v", j, err)
	}
}

// Every container (job, service, cache), network and volume the inner
// runner makes for a job carries the daemon's identity, the runner's, the
// job id and role=job, so that the daemon can find and remove them.
func TestJobResourcesLabelled(t *testing.T) {
	var mu sync.Mutex
	var problems []string
	var seen int
	check := func(kind, name string, l map[string]string, id int64) {
		mu.Lock()
		defer mu.Unlock()
		seen++
		want := map[string]string{labels.LabelSystemID: testSystemID, labels.LabelRunner: testRunnerID,
			labels.LabelJobID: fmt.Sprint(id), labels.LabelRole: labels.RoleJob}
		for k, v := range want {
			if l[k] != v {
				problems = append(problems, fmt.Sprintf("%s %s: label %s=%q, want %q", kind, name, k, l[k], v))
			}
		}
	}
	key := fmt.Sprintf("labels-%d", time.Now().UnixNano())
	j := runJob(t, jobSpec{
		script: []string{"echo started", "sleep 120"},
		setup: func(gl *coordinatortest.Server, q *coordinatortest.Job) {
			q.Payload["services"] = []map[string]any{{"name": jobImage, "alias": "svc", "entrypoint": []string{"/bin/sh", "-c"},
				"command": []string{"sleep 300"}, "pull_policy": []string{"if-not-present"}}}
			q.Payload["cache"] = []map[string]any{{"key": key, "paths": []string{"vendor/"}, "policy": "pull-push", "when": "always"}}
		},
		during: func(gl *coordinatortest.Server, id int64) {
			defer gl.ForceCancel(id)
			gl.WaitFor(time.Minute, "the script to start", func(s *coordinatortest.Server) bool { return s.TraceContains(id, "started\n") })
			ctx := context.Background()
			f := filters.NewArgs(filters.Arg("label", fmt.Sprintf("%s=%d", labels.LabelJobID, id)))
			cs, _ := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
			for _, c := range cs {
				check("container", strings.Join(c.Names, ","), c.Labels, id)
			}
			vs, _ := cli.VolumeList(ctx, volume.ListOptions{Filters: f})
			for _, v := range vs.Volumes {
				check("volume", v.Name, v.Labels, id)
			}
			ns, _ := cli.NetworkList(ctx, network.ListOptions{Filters: f})
			for _, n := range ns {
				check("network", n.Name, n.Labels, id)
			}
		},
	})
	if j.Status != "canceled" {
		t.Fatalf("status %s\n%s", j.Status, j.Trace)
	}
	mu.Lock()
	defer mu.Unlock()
	// the job container, the service container, the builds volume, the network
	if seen < 4 {
		t.Errorf("found only %d labelled resources", seen)
	}
	for _, p := range problems {
		t.Error(p)
	}
}

package localdocker

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
)

// inner_image may name the project's own host image (what `paas-runner
// host-image` builds), used as is or under Heptapod's entry point (an
// image without the host-image label, e.g. one a Heptapod PAAS Runner
// would use as heptapod_runner_main_image): both run the job, through
// paas-runner's inner runner, against a fake GitLab.
func TestInnerImageIsTheHostImage(t *testing.T) {
	needDocker(t)
	ctx := ctxT(t)
	cli, err := localdockertest.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	hostTag, err := BuildBaseImage(ctx, "", testVersion, staticBin, nil) // paas-runner host-image
	if err != nil {
		t.Fatal(err)
	}
	heptapodShaped := fmt.Sprintf("paas-runner-test-heptapod-shaped:%d", time.Now().UnixNano())
	if err := localdockertest.BuildImage(ctx, cli, heptapodShaped, map[string][]byte{
		"Dockerfile": []byte("FROM " + hostTag + "\nLABEL " + LabelHostImage + "=\"\"\n"),
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { localdockertest.RemoveImage(cli, heptapodShaped) })
	jobImage := fmt.Sprintf("paas-runner-test-busybox:ld%d", time.Now().UnixNano())
	if err := localdockertest.BuildBusyboxImage(ctx, cli, jobImage); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { localdockertest.RemoveImage(cli, jobImage) })

	for _, tc := range []struct{ name, image, shape string }{
		{"host image", hostTag, "paas-runner"},
		{"host image under Heptapod's entry point", heptapodShaped, "heptapod"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gl := coordinatortest.New(t)
			runnerToken := "glrt-shape-" + testID(t, 8)
			gl.AddRunner(runnerToken)
			e := newExec(t, func(o *Options) {
				o.InnerImage = tc.image
				o.NetworkMode = "host"
				o.RunnerURL = gl.URL
				o.Inner = map[string]any{"docker": map[string]any{"network_mode": "host", "pull_policy": "never"}}
			})
			ref, err := e.hostImage(ctx)
			if err != nil || ref.Shape.Name != tc.shape {
				t.Fatalf("shape %q %v, want %s", ref.Shape.Name, err, tc.shape)
			}
			// a job running in GitLab, as if the daemon had acquired it
			q := gl.AddRunning(runnerToken)
			repo, sha := localdockertest.GitServer(t, q.Token)
			payload := map[string]any{}
			for k, v := range q.Payload {
				payload[k] = v
			}
			payload["image"] = map[string]any{"name": jobImage}
			payload["git_info"] = map[string]any{"repo_url": repo, "ref": "main", "sha": sha, "ref_type": "branch", "depth": 1,
				"refspecs": []string{"+refs/heads/main:refs/remotes/origin/main"}}
			payload["steps"] = []map[string]any{{"name": "script", "script": []string{"cat README"}, "timeout": 600, "when": "on_success"}}
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
			st, _ := e.Inspect(ctx, h)
			if got.Status != "success" || !strings.Contains(string(got.Trace), "hello from the repository") {
				t.Fatalf("job %s (host: %+v):\n%s", got.Status, st, got.Trace)
			}
			hd, _ := decodeHandle(h)
			info, _ := e.cli.ContainerInspect(ctx, hd.Container)
			if info.Config.Entrypoint[0] != map[string]string{"paas-runner": binaryInImage, "heptapod": heptapodEntry}[tc.shape] {
				t.Fatalf("entry point %v", info.Config.Entrypoint)
			}
		})
	}
}

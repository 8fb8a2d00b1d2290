package jobrunner

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/build"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
)

// errexit and pipefail, like GitLab Runner: a failing command piped into
// another fails the job.
func TestPipefail(t *testing.T) {
	j := runJob(t, jobSpec{script: []string{"false | cat", "echo never"}})
	if j.Status != "failed" || j.FailureReason != "script_failure" || strings.Contains(string(j.Trace), "\nnever\n") {
		t.Fatalf("%s %s\n%s", j.Status, j.FailureReason, j.Trace)
	}
}

const bashImage = "paas-runner-test-busybox-bash:1"

// buildBashImage is the busybox image with a "bash" that says it ran (and
// is busybox's sh): the job's script must run in it.
func buildBashImage(t *testing.T) {
	var ctxTar bytes.Buffer
	tw := tar.NewWriter(&ctxTar)
	files := map[string]string{
		"Dockerfile": "FROM " + jobImage + "\nCOPY bash /usr/bin/bash\n",
		"bash":       "#!/bin/busybox sh\necho \"the job runs in bash\"\nexec /bin/busybox sh \"$@\"\n",
	}
	for name, data := range files {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(data)), Typeflag: tar.TypeReg})
		tw.Write([]byte(data))
	}
	tw.Close()
	resp, err := cli.ImageBuild(context.Background(), &ctxTar, build.ImageBuildOptions{Tags: []string{bashImage}, Remove: true, ForceRemove: true})
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if bytes.Contains(out, []byte(`"error"`)) {
		t.Fatalf("building %s: %s", bashImage, out)
	}
	t.Cleanup(func() { localdockertest.RemoveImage(cli, bashImage) })
}

// The script runs in bash when the image has bash, else in sh.
func TestBashPreferred(t *testing.T) {
	if cli == nil {
		t.Skip("no Docker engine")
	}
	buildBashImage(t)
	j := runJob(t, jobSpec{
		script: []string{"echo hello"},
		setup: func(gl *coordinatortest.Server, q *coordinatortest.Job) {
			q.Payload["image"] = map[string]any{"name": bashImage, "pull_policy": []string{"if-not-present"}}
		},
	})
	if j.Status != "success" || !strings.Contains(string(j.Trace), "the job runs in bash\n") {
		t.Fatalf("%s\n%s", j.Status, j.Trace)
	}
	// without bash: sh
	j = runJob(t, jobSpec{script: []string{"echo hello"}})
	if j.Status != "success" || strings.Contains(string(j.Trace), "runs in bash") {
		t.Fatalf("%s\n%s", j.Status, j.Trace)
	}
}

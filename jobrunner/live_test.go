package jobrunner

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/internal/labels"
)

// A held-back beginning of a secret that nothing completes reaches GitLab
// at the interval; completed later, the secret is still masked.
func TestTraceReleasesHeldOutput(t *testing.T) {
	tr, gl, id := traceFor(t, []string{"s3cr3t-value"}, 0)
	tr.interval = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tr.Run(ctx); close(done) }()
	tr.Write([]byte("line\nabc s3cr"))
	gl.WaitFor(time.Minute, "the held output", func(s *coordinatortest.Server) bool { return s.TraceContains(id, "abc s3cr") })
	tr.Write([]byte("3t-value end\n"))
	cancel()
	<-done
	if _, _, err := tr.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if log := string(gl.Job(id).Trace); log != "daemon\nline\nabc s3cr[MASKED] end\n" {
		t.Fatalf("log %q", log)
	}
}

// Output written within one interval goes in one PATCH, not one per line.
func TestTraceBatchesByInterval(t *testing.T) {
	tr, gl, id := traceFor(t, []string{"s3cr3t-value"}, 0)
	tr.interval = 20 * time.Millisecond
	for i := 0; i < 200; i++ {
		fmt.Fprintf(tr, "line %d\n", i)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tr.Run(ctx); close(done) }()
	gl.WaitFor(time.Minute, "the lines", func(s *coordinatortest.Server) bool { return s.TraceContains(id, "line 199\n") })
	cancel()
	<-done
	if n := gl.Count(fmt.Sprintf("PATCH /api/v4/jobs/%d/trace", id)); n != 1 {
		t.Fatalf("%d PATCHes for 200 lines written at once", n)
	}
}

// The live log: a line the script prints is in GitLab while the script
// still runs (here, waits for the test), not at the next command or the
// end of the job.
func TestLiveLog(t *testing.T) {
	j := runJob(t, jobSpec{
		timeout: 120,
		script:  []string{"echo A-line; while [ ! -e /builds/go ]; do sleep 0.1; done; echo B-line"},
		during: func(gl *coordinatortest.Server, id int64) {
			gl.WaitFor(time.Minute, "the first line in GitLab", func(s *coordinatortest.Server) bool { return s.TraceContains(id, "\nA-line\n") })
			if strings.Contains(string(gl.Job(id).Trace), "\nB-line\n") {
				t.Error("the script went on before the test let it")
			}
			// let the script go on: create /builds/go in the job container
			ctx := context.Background()
			f := filters.NewArgs(filters.Arg("label", fmt.Sprintf("%s=%d", labels.LabelJobID, id)), filters.Arg("status", "running"))
			cs, err := cli.ContainerList(ctx, container.ListOptions{Filters: f})
			if err != nil || len(cs) != 1 {
				t.Errorf("job containers: %v %v", cs, err)
				gl.ForceCancel(id)
				return
			}
			var b bytes.Buffer
			tw := tar.NewWriter(&b)
			tw.WriteHeader(&tar.Header{Name: "go", Mode: 0o644, Typeflag: tar.TypeReg})
			tw.Close()
			if err := cli.CopyToContainer(ctx, cs[0].ID, "/builds", &b, container.CopyToContainerOptions{}); err != nil {
				t.Errorf("copying: %v", err)
				gl.ForceCancel(id)
			}
		},
	})
	if j.Status != "success" || !strings.Contains(string(j.Trace), "\nB-line\n") {
		t.Fatalf("%s\n%s", j.Status, j.Trace)
	}
}

package localdocker

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/docker/docker/api/types/container"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/jobrunner"
)

// The daemon's last lines reach the inner runner through job.json, as
// they are, with the offset and checksum of the log before them; only
// hosts of paas-runner's own image take them.
func TestTraceLeadInJobJSON(t *testing.T) {
	e := &Executor{opts: Options{RunnerID: "tabc1234", SystemID: "r_0123456789ab", RunnerLabel: "r", RunnerURL: "https://gitlab.example"}}
	if !e.TakesTraceLead() {
		t.Fatal("hosts of the base image run paas-runner's inner runner: they take the lead")
	}
	if (&Executor{opts: Options{InnerImage: "registry.example/heptapod-runner:1"}}).TakesTraceLead() {
		t.Fatal("an inner_image may run Heptapod Runner, which does not send the lead")
	}
	crc := uint32(1234)
	lead := "paas-runner: provisioning a local-docker host for this job…\npaas-runner: host ready after 0.0s; starting the job on it\n"
	f, err := e.Files(executors.Job{ID: 7, Token: "jt", Payload: json.RawMessage(`{"id":7,"token":"jt"}`), TraceOffset: 40, TraceCRC: &crc, TraceLead: []byte(lead)})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "job.json")
	if err := os.WriteFile(path, f.JobJSON, 0o600); err != nil {
		t.Fatal(err)
	}
	j, err := jobrunner.LoadJob(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(j.TraceLead) != lead || j.TraceOffset != 40 || j.TraceCRC == nil || *j.TraceCRC != crc {
		t.Fatalf("job.json gave lead %q at %d (crc %v)", j.TraceLead, j.TraceOffset, j.TraceCRC)
	}
	// no lead: no key (job.json as before)
	f, err = e.Files(executors.Job{ID: 7, Token: "jt", Payload: json.RawMessage(`{"id":7,"token":"jt"}`)})
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		PR map[string]any `json:"paas_runner"`
	}
	if err := json.Unmarshal(f.JobJSON, &doc); err != nil {
		t.Fatal(err)
	}
	if _, ok := doc.PR["trace_lead"]; ok {
		t.Fatalf("job.json without a lead has one: %s", f.JobJSON)
	}
}

// Only an exit 0 of paas-runner's inner runner says GitLab has the job's
// end: not another inner runner's, not a non-zero exit, not an OOM kill.
func TestReportedEnd(t *testing.T) {
	paas := map[string]string{LabelInnerRunner: "paas-runner"}
	for _, tc := range []struct {
		attrs map[string]string
		code  int
		oom   bool
		want  bool
	}{
		{paas, 0, false, true},
		{paas, 1, false, false},
		{paas, 137, false, false},
		{paas, 0, true, false},
		{map[string]string{}, 0, false, false},
		{map[string]string{LabelInnerRunner: "heptapod"}, 0, false, false},
	} {
		if got := reportedEnd(tc.attrs, tc.code, tc.oom); got != tc.want {
			t.Errorf("reportedEnd(%v, %d, oom %v) = %v", tc.attrs, tc.code, tc.oom, got)
		}
	}
}

// Hosts made from paas-runner's image carry LabelInnerRunner, hosts of a
// Heptapod-shaped image do not.
func TestInnerRunnerLabel(t *testing.T) {
	needDocker(t)
	for _, tc := range []struct {
		name  string
		inner string
		want  string
	}{{"base-image", "", "paas-runner"}, {"heptapod-image", innerImage, ""}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newExec(t, func(o *Options) { o.InnerImage = tc.inner; o.NetworkMode = "host" })
			hd := e.names(51)
			if _, err := e.create(ctxT(t), hd, executors.Job{ID: 51}); err != nil {
				t.Fatal(err)
			}
			info, err := e.cli.ContainerInspect(ctxT(t), hd.Container)
			if err != nil {
				t.Fatal(err)
			}
			if got := info.Config.Labels[LabelInnerRunner]; got != tc.want {
				t.Fatalf("label %s = %q, want %q", LabelInnerRunner, got, tc.want)
			}
			_ = e.cli.ContainerRemove(ctxT(t), info.ID, container.RemoveOptions{Force: true})
		})
	}
}

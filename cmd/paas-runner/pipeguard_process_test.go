package main_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

// A job with a pipeline guard waits, without a host, for an older running
// pipeline; /debug/locks and the metrics show it; the daemon is killed
// (SIGKILL) and restarted: the job waits again, is provisioned once when the
// pipeline finishes, and the runner's guard_api_token is in no state file.
func TestPipelineGuardSurvivesSIGKILL(t *testing.T) {
	const apiToken = "glpat-proc-guard-0123456789"
	e := newEnv(t, "listen_address = \"127.0.0.1:0\"")
	f, err := os.OpenFile(e.config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "guard_api_token = %q\n", apiToken)
	f.Close()
	e.gl.AddAPIToken(apiToken, "read_api")
	e.extraEnv = append(e.extraEnv, "PAAS_RUNNER_PIPEGUARD_INTERVAL=50ms")
	older := e.gl.AddPipeline(1, "main", "running")
	own := e.gl.AddPipeline(1, "main", "running")
	p := e.start("", "--log-format", "json")
	j := e.gl.Enqueue("", map[string]any{
		"job_info": map[string]any{"name": "deploy", "project_id": 1, "pipeline_id": own, "project_full_path": "acme/web"},
		"variables": []map[string]any{
			{"key": "CI_API_V4_URL", "value": e.gl.URL + "/api/v4", "public": true},
			{"key": "CI_PROJECT_ID", "value": "1", "public": true},
			{"key": "CI_PIPELINE_ID", "value": strconv.FormatInt(own, 10), "public": true},
			{"key": "GUARD_REF_REGEX", "value": "^main$", "public": true},
		}})
	want := fmt.Sprintf("pipeline #%d running", older)
	e.gl.WaitFor(procWait, "waiting", func(s *coordinatortest.Server) bool { return s.TraceContains(j.ID, want) })
	addr := regexp.MustCompile(`"listen_address":"([^"]+)"`).FindStringSubmatch(p.log())
	if addr == nil {
		t.Fatalf("no metrics address:\n%s", p.log())
	}
	var rep struct {
		Pipelines []struct {
			Guard string `json:"guard"`
			Job   struct {
				JobID int64 `json:"job_id"`
			} `json:"job"`
			Blocking []string `json:"blocking"`
		} `json:"pipelines"`
		Holders []json.RawMessage `json:"holders"`
	}
	body := httpGet(t, "http://"+addr[1]+"/debug/locks")
	if err := json.Unmarshal([]byte(body), &rep); err != nil || len(rep.Pipelines) != 1 || rep.Pipelines[0].Guard != "pipelines:1" ||
		rep.Pipelines[0].Job.JobID != j.ID || rep.Holders == nil {
		t.Fatalf("/debug/locks: %v\n%s", err, body)
	}
	if strings.Contains(body, apiToken) {
		t.Fatal("the guard token in /debug/locks")
	}
	if m := httpGet(t, "http://"+addr[1]+"/metrics"); !strings.Contains(m, `paas_runner_guard_waiting_jobs{guard="pipelines:1"} 1`) {
		t.Fatalf("metrics lack the pipeline guard:\n%s", m)
	}
	p.signal(syscall.SIGKILL)
	p.wait(t)
	if _, err := os.Stat(filepath.Join(e.hosts, e.hostName(j.ID)+".host")); err == nil {
		t.Fatal("a host was made for the waiting job")
	}
	p2 := e.start("")
	e.gl.WaitFor(procWait, "waiting again", func(s *coordinatortest.Server) bool {
		return strings.Count(s.TraceOf(j.ID), want) >= 2
	})
	if _, err := os.Stat(filepath.Join(e.hosts, e.hostName(j.ID)+".host")); err == nil {
		t.Fatal("a host was made for the waiting job after the restart")
	}
	e.gl.SetPipelineStatus(older, "success")
	e.waitFile(filepath.Join(e.hosts, e.hostName(j.ID)+".launched"))
	for _, name := range []string{e.state, e.state + ".guards"} {
		if b, _ := os.ReadFile(name); strings.Contains(string(b), apiToken) {
			t.Fatalf("the guard token in %s", name)
		}
	}
	if strings.Contains(p2.log()+p.log(), apiToken) || strings.Contains(e.gl.TraceOf(j.ID), apiToken) {
		t.Fatal("the guard token in a log")
	}
	e.gl.Finish(j.ID, "success")
	p2.signal(syscall.SIGTERM)
	if code := p2.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for k, n := range e.launches() {
		if n != 1 {
			t.Fatalf("%s launched %d times", k, n)
		}
	}
}

package main_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

// What the state files hold for waiting pipeline-guarded jobs: the runner's
// guard_api_token nowhere (it is read from the configuration at each
// start); a job's own token variable only inside its payload (GitLab's, as
// the daemon keeps it for every job), in no handle, journal record header
// or guard record. Checked while the jobs wait, and after a drain left
// them waiting.
func TestPipelineGuardTokensInStateFiles(t *testing.T) {
	const cfgToken, jobToken = "glpat-cfg-guard-state-0123456789", "glpat-job-guard-state-0123456789"
	e := newEnv(t, "")
	f, err := os.OpenFile(e.config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "guard_api_token = %q\n", cfgToken)
	f.Close()
	e.gl.AddAPIToken(cfgToken, "read_api")
	e.gl.AddAPIToken(jobToken, "read_api")
	e.extraEnv = append(e.extraEnv, "PAAS_RUNNER_PIPEGUARD_INTERVAL=50ms")
	older := e.gl.AddPipeline(1, "main", "running")
	own := e.gl.AddPipeline(1, "main", "running")
	p := e.start("")
	vars := func(extra ...map[string]any) []map[string]any {
		return append([]map[string]any{
			{"key": "CI_API_V4_URL", "value": e.gl.URL + "/api/v4", "public": true},
			{"key": "CI_PROJECT_ID", "value": "1", "public": true},
			{"key": "CI_PIPELINE_ID", "value": strconv.FormatInt(own, 10), "public": true},
			{"key": "GUARD_REF_REGEX", "value": "^main$", "public": true},
		}, extra...)
	}
	withVar := e.gl.Enqueue("", map[string]any{"variables": vars(map[string]any{"key": "GUARD_PRIVATE_TOKEN", "value": jobToken, "public": false, "masked": true})})
	withCfg := e.gl.Enqueue("", map[string]any{"variables": vars()})
	want := fmt.Sprintf("pipeline #%d running", older)
	e.gl.WaitFor(procWait, "both jobs waiting", func(s *coordinatortest.Server) bool {
		return s.TraceContains(withVar.ID, want) && s.TraceContains(withCfg.ID, want)
	})
	checkStateTokens(t, e, cfgToken, jobToken, withVar.ID)
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	checkStateTokens(t, e, cfgToken, jobToken, withVar.ID)
}

// checkStateTokens: cfgToken in no state file; jobToken somewhere (the
// payload of job jobID) but only in payloads.
func checkStateTokens(t *testing.T, e *env, cfgToken, jobToken string, jobID int64) {
	t.Helper()
	files, _ := filepath.Glob(e.state + "*")
	inPayload := false
	for _, name := range files {
		raw, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(raw, []byte(cfgToken)) {
			t.Errorf("guard_api_token in %s:\n%s", name, raw)
		}
		var rest []byte
		switch {
		case name == e.state:
			var doc map[string]json.RawMessage
			if err := json.Unmarshal(raw, &doc); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			var pending [][]json.RawMessage
			if err := json.Unmarshal(doc["pending"], &pending); err != nil {
				t.Fatalf("%s: pending: %v", name, err)
			}
			delete(doc, "pending")
			rest, _ = json.Marshal(doc)
			for _, pair := range pending {
				if len(pair) != 2 {
					t.Fatalf("%s: pending entry %s", name, pair)
				}
				rest = append(rest, pair[0]...) // the handle
				inPayload = inPayload || (bytes.Contains(pair[1], []byte(jobToken)) && bytes.Contains(pair[0], []byte(strconv.FormatInt(jobID, 10))))
			}
		case strings.HasSuffix(name, ".journal"):
			sc := bufio.NewScanner(bytes.NewReader(raw))
			sc.Buffer(nil, 16<<20)
			for sc.Scan() {
				var rec map[string]json.RawMessage
				if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
					t.Fatalf("%s: %v: %s", name, err, sc.Bytes())
				}
				inPayload = inPayload || bytes.Contains(rec["payload"], []byte(jobToken))
				delete(rec, "payload")
				line, _ := json.Marshal(rec)
				rest = append(rest, line...)
			}
		default:
			rest = raw
		}
		if bytes.Contains(rest, []byte(jobToken)) {
			t.Errorf("the job's token outside its payload in %s:\n%s", name, rest)
		}
	}
	if !inPayload {
		t.Errorf("the job's payload (with its token variable) is in no state file of %v", files)
	}
}

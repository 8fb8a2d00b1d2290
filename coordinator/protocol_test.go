package coordinator_test

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"gitlab.com/paas-runner/paas-runner/coordinator"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/job"
)

// An older GitLab does not know runner_configuration_error: FailJob sends
// what gitlab-runner sends there (script_failure), read from the enum the
// job payloads list, instead of a value GitLab would store as
// unknown_failure (or refuse, for a stricter server).
func TestFailJobMapsReasonsToThisGitLab(t *testing.T) {
	gl := coordinatortest.New(t)
	gl.FailureReasons = []string{"unknown_failure", "script_failure", "api_failure", "stuck_or_timeout_failure",
		"runner_system_failure", "missing_dependency_failure", "job_execution_timeout"}
	gl.StrictFailureReasons = true
	gl.AddRunner(runnerToken)
	c := newClient(t, gl)
	q := gl.Enqueue("", nil)
	if _, err := c.RequestJob(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := c.FailJob(ctx(t), q.ID, q.Token, job.ConfigurationError); err != nil {
		t.Fatalf("FailJob: %v", err)
	}
	if got := gl.Job(q.ID); got.Status != "failed" || got.FailureReason != job.ScriptFailure {
		t.Fatalf("job %s %s", got.Status, got.FailureReason)
	}

	// a current GitLab knows it: it goes as it is
	gl2 := coordinatortest.New(t)
	gl2.StrictFailureReasons = true
	gl2.AddRunner(runnerToken)
	c2 := newClient(t, gl2)
	q2 := gl2.Enqueue("", nil)
	if _, err := c2.RequestJob(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := c2.FailJob(ctx(t), q2.ID, q2.Token, job.ConfigurationError); err != nil {
		t.Fatalf("FailJob: %v", err)
	}
	if got := gl2.Job(q2.ID); got.FailureReason != job.ConfigurationError {
		t.Fatalf("job %s %s", got.Status, got.FailureReason)
	}
}

// Without a system id, verify sends none (GitLab then uses its legacy
// runner manager) rather than a manager named "".
func TestVerifyRunnerWithoutSystemID(t *testing.T) {
	var got map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewDecoder(r.Body).Decode(&got)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":3,"token":"`+runnerToken+`","token_expires_at":null}`)
	}))
	defer srv.Close()
	c, err := coordinator.New(coordinator.Config{URL: srv.URL, Token: runnerToken, Info: coordinator.Info{Name: "paas-runner"}})
	if err != nil {
		t.Fatal(err)
	}
	creds, err := c.VerifyRunner(ctx(t))
	if err != nil || creds.ID != 3 || creds.TokenExpiresAt != nil {
		t.Fatalf("verify: %+v %v", creds, err)
	}
	info, _ := got["info"].(map[string]any)
	if _, isObject := info["features"].(map[string]any); !isObject {
		t.Fatalf("info.features is not an object: %v", got)
	}
	if _, has := got["system_id"]; has || got["token"] != runnerToken {
		t.Fatalf("verify body %v", got)
	}
}

// The fake is as strict as GitLab where our client could go wrong.
func TestFakeGitLabJobUpdateRules(t *testing.T) {
	gl := coordinatortest.New(t)
	gl.AddRunner(runnerToken)
	c := newClient(t, gl)
	q := gl.Enqueue("", nil)
	if _, err := c.RequestJob(ctx(t)); err != nil {
		t.Fatal(err)
	}
	put := func(body string, hdr http.Header) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPut, gl.URL+"/api/v4/jobs/"+itoa(q.ID), strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		for k, v := range hdr {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	tok := `"token":"` + q.Token + `"`
	// the token must be in the body (Grape's requires :token)
	if resp, body := put(`{"state":"running"}`, http.Header{"Job-Token": {q.Token}}); resp.StatusCode != 400 || !strings.Contains(body, "token is missing") {
		t.Fatalf("no token: %d %s", resp.StatusCode, body)
	}
	if resp, _ := put(`{`+tok+`,"state":"bogus"}`, nil); resp.StatusCode != 400 {
		t.Fatalf("unknown state: %d", resp.StatusCode)
	}
	if resp, _ := put(`{`+tok+`,"state":"failed","exit_code":"one"}`, nil); resp.StatusCode != 400 {
		t.Fatalf("exit_code not an integer: %d", resp.StatusCode)
	}
	if resp, _ := put(`{`+tok+`,"state":"failed","output":{"bytesize":1.5}}`, nil); resp.StatusCode != 400 {
		t.Fatalf("bytesize not an integer: %d", resp.StatusCode)
	}
	if resp, _ := put(`{"token":"wrong","state":"running"}`, nil); resp.StatusCode != 403 || resp.Header.Get("Job-Status") != "" {
		t.Fatalf("wrong token: %d %q", resp.StatusCode, resp.Header.Get("Job-Status"))
	}
	// an unknown reason is stored as unknown_failure, like GitLab does
	if resp, _ := put(`{`+tok+`,"state":"failed","failure_reason":"image_pull_failure","exit_code":3}`, nil); resp.StatusCode != 200 || resp.Header.Get("Job-Status") != "failed" {
		t.Fatalf("final update: %d %q", resp.StatusCode, resp.Header.Get("Job-Status"))
	}
	if got := gl.Job(q.ID); got.FailureReason != "unknown_failure" || got.ExitCode != 3 {
		t.Fatalf("stored %q %d", got.FailureReason, got.ExitCode)
	}
	// finished: 403 with the status, for PUT and PATCH alike
	if resp, body := put(`{`+tok+`,"state":"running"}`, nil); resp.StatusCode != 403 || resp.Header.Get("Job-Status") != "failed" || !strings.Contains(body, "Job is not processing on runner") {
		t.Fatalf("after the end: %d %q %s", resp.StatusCode, resp.Header.Get("Job-Status"), body)
	}
	if _, err := c.PatchTrace(ctx(t), q.ID, q.Token, 0, []byte("late")); !errorsIsNotRunning(err) {
		t.Fatalf("PATCH after the end: %v", err)
	}

	// strict mode: a reason outside the enum is refused
	gl.StrictFailureReasons = true
	q2 := gl.AddRunning(runnerToken)
	resp, body := put2(t, gl, q2, `{"token":"`+q2.Token+`","state":"failed","failure_reason":"image_pull_failure"}`)
	if resp.StatusCode != 400 || !strings.Contains(body, "image_pull_failure") {
		t.Fatalf("strict: %d %s", resp.StatusCode, body)
	}
}

func put2(t *testing.T, gl *coordinatortest.Server, j *coordinatortest.Job, body string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, gl.URL+"/api/v4/jobs/"+itoa(j.ID), strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func errorsIsNotRunning(err error) bool { return errors.Is(err, coordinator.ErrJobNotRunning) }

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestFakeGitLabTraceRules(t *testing.T) {
	gl := coordinatortest.New(t)
	gl.AddRunner(runnerToken)
	j := gl.AddRunning(runnerToken)
	patch := func(cr, body string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPatch, gl.URL+"/api/v4/jobs/"+itoa(j.ID)+"/trace", strings.NewReader(body))
		req.Header.Set("Job-Token", j.Token)
		if cr != "" {
			req.Header.Set("Content-Range", cr)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if r := patch("", "abc"); r.StatusCode != 400 {
		t.Fatalf("no Content-Range: %d", r.StatusCode)
	}
	if r := patch("0-3", "abc"); r.StatusCode != 400 {
		t.Fatalf("an end past the body: %d", r.StatusCode)
	}
	if r := patch("0-2", "abc"); r.StatusCode != 202 || r.Header.Get("Range") != "0-3" || r.Header.Get("Job-Status") != "running" {
		t.Fatalf("append: %d %q %q", r.StatusCode, r.Header.Get("Range"), r.Header.Get("Job-Status"))
	}
	if r := patch("1-3", "bcd"); r.StatusCode != 416 || r.Header.Get("Range") != "0-3" || r.Header.Get("Job-Status") != "" {
		t.Fatalf("behind the end: %d %q", r.StatusCode, r.Header.Get("Range"))
	}
	if r := patch("7-8", "xy"); r.StatusCode != 416 || r.Header.Get("Range") != "0-3" {
		t.Fatalf("past the end: %d %q", r.StatusCode, r.Header.Get("Range"))
	}
	if r := patch("3-4/5", "de"); r.StatusCode != 202 || r.Header.Get("Range") != "0-5" {
		t.Fatalf("with a total: %d %q", r.StatusCode, r.Header.Get("Range"))
	}
	gl.Finish(j.ID, "success")
	if r := patch("5-5", "f"); r.StatusCode != 403 || r.Header.Get("Job-Status") != "success" {
		t.Fatalf("finished: %d %q", r.StatusCode, r.Header.Get("Job-Status"))
	}
	if got := gl.Job(j.ID); string(got.Trace) != "abcde" {
		t.Fatalf("log %q", got.Trace)
	}
}

// Grape reads JSON parameters only from a JSON body, and a required token
// that is missing is a 400, before any authentication.
func TestFakeGitLabNeedsJSONAndToken(t *testing.T) {
	gl := coordinatortest.New(t)
	gl.AddRunner(runnerToken)
	for _, c := range []struct{ method, path, ctype, body string }{
		{http.MethodPost, "/api/v4/jobs/request", "text/plain", `{"token":"` + runnerToken + `"}`},
		{http.MethodPost, "/api/v4/jobs/request", "application/json", `{}`},
		{http.MethodPost, "/api/v4/runners/verify", "", `{"token":"` + runnerToken + `"}`},
		{http.MethodDelete, "/api/v4/runners", "application/json", `{}`},
		{http.MethodPost, "/api/v4/runners", "application/json", `{"description":"x"}`},
	} {
		req, _ := http.NewRequest(c.method, gl.URL+c.path, strings.NewReader(c.body))
		if c.ctype != "" {
			req.Header.Set("Content-Type", c.ctype)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.Contains(string(b), "token is missing") {
			t.Errorf("%s %s (%s): %d %s", c.method, c.path, c.ctype, resp.StatusCode, b)
		}
	}
}

package coordinatortest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

func get(t *testing.T, s *Server, path string, header ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.URL+path, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestPipelinesListPagination(t *testing.T) {
	s := New(t)
	s.AddAPIToken("pat", "read_api")
	var all []int64
	for i := range 45 {
		all = append(all, s.AddPipeline(3, fmt.Sprintf("r%d", i%3), "running"))
	}
	resp, body := get(t, s, "/api/v4/projects/3/pipelines", "PRIVATE-TOKEN", "pat")
	var got []map[string]any
	json.Unmarshal([]byte(body), &got)
	h := resp.Header
	if resp.StatusCode != 200 || len(got) != 20 || h.Get("X-Total") != "45" || h.Get("X-Total-Pages") != "3" ||
		h.Get("X-Next-Page") != "2" || h.Get("X-Page") != "1" || h.Get("X-Per-Page") != "20" ||
		!strings.Contains(h.Get("Link"), `rel="next"`) {
		t.Fatalf("%d %d %v", resp.StatusCode, len(got), h)
	}
	if int64(got[0]["id"].(float64)) != all[44] {
		t.Fatal("default order is id desc")
	}
	resp, body = get(t, s, "/api/v4/projects/3/pipelines?per_page=500&page=1&sort=asc&private_token=pat")
	json.Unmarshal([]byte(body), &got)
	if len(got) != 45 || resp.Header.Get("X-Per-Page") != "100" || resp.Header.Get("X-Next-Page") != "" ||
		int64(got[0]["id"].(float64)) != all[0] {
		t.Fatalf("per_page capped at 100, asc: %d %v", len(got), resp.Header)
	}
	_, body = get(t, s, "/api/v4/projects/3/pipelines?ref=r1&order_by=ref&per_page=100", "PRIVATE-TOKEN", "pat")
	json.Unmarshal([]byte(body), &got)
	if len(got) != 15 {
		t.Fatalf("ref filter: %d", len(got))
	}
	for _, q := range []string{"status=runing", "order_by=created_at", "sort=up", "scope=old"} {
		resp, body = get(t, s, "/api/v4/projects/3/pipelines?"+q, "PRIVATE-TOKEN", "pat")
		if resp.StatusCode != 400 || !strings.Contains(body, "does not have a valid value") {
			t.Errorf("%s: %d %s", q, resp.StatusCode, body)
		}
	}
}

func TestPipelinesAuth(t *testing.T) {
	s := New(t)
	s.AddAPIToken("pat", "read_api")
	s.AddRunner("glrt-r")
	job := s.AddRunning("glrt-r") // project_id 1
	pid := s.AddPipeline(1, "main", "running", PipelineJob{Name: "build", Stage: "build", Status: "running"})
	cases := []struct {
		path   string
		header []string
		status int
	}{
		{"/api/v4/projects/1/pipelines", nil, 404},
		{"/api/v4/projects/1/pipelines", []string{"PRIVATE-TOKEN", "nope"}, 401},
		{"/api/v4/projects/1/pipelines", []string{"Authorization", "Bearer pat"}, 200},
		// CI_JOB_TOKEN: not on the pipelines list, yes on a pipeline's jobs.
		{"/api/v4/projects/1/pipelines", []string{"JOB-TOKEN", job.Token}, 404},
		{fmt.Sprintf("/api/v4/projects/1/pipelines/%d/jobs", pid), []string{"JOB-TOKEN", job.Token}, 200},
		{fmt.Sprintf("/api/v4/projects/1/pipelines/%d/jobs?job_token=%s", pid, job.Token), nil, 200},
		{fmt.Sprintf("/api/v4/projects/2/pipelines/%d/jobs", pid), []string{"JOB-TOKEN", job.Token}, 404},
		{fmt.Sprintf("/api/v4/projects/1/pipelines/%d/jobs?scope[]=bogus", pid), []string{"PRIVATE-TOKEN", "pat"}, 400},
	}
	for _, c := range cases {
		if resp, body := get(t, s, c.path, c.header...); resp.StatusCode != c.status {
			t.Errorf("%s %v: %d %s, want %d", c.path, c.header, resp.StatusCode, body, c.status)
		}
	}
	// A finished job's token no longer works.
	s.Finish(job.ID, "success")
	if resp, _ := get(t, s, fmt.Sprintf("/api/v4/projects/1/pipelines/%d/jobs", pid), "JOB-TOKEN", job.Token); resp.StatusCode != 401 {
		t.Errorf("finished job token: %d", resp.StatusCode)
	}
	// Cancel needs the api scope.
	req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("%s/api/v4/projects/1/pipelines/%d/cancel", s.URL, pid), nil)
	req.Header.Set("PRIVATE-TOKEN", "pat")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 || !strings.Contains(string(b), `"error":"insufficient_scope"`) || !strings.Contains(string(b), `"scope":"api"`) {
		t.Fatalf("cancel with read_api: %d %s", resp.StatusCode, b)
	}
	if s.PipelineOf(pid).Status != "running" {
		t.Fatal("cancelled anyway")
	}
}

package main

import "testing"

func TestEndpointNames(t *testing.T) {
	for _, c := range []struct{ method, path, want string }{
		{"POST", "/api/v4/jobs/request", "request_job"},
		{"PUT", "/api/v4/jobs/42", "update_job"},
		{"PATCH", "/api/v4/jobs/42/trace", "patch_trace"},
		{"POST", "/api/v4/jobs/42/artifacts", "upload_artifacts"},
		{"GET", "/api/v4/jobs/42/artifacts", "download_artifacts"},
		{"POST", "/gitlab/api/v4/runners/verify", "verify_runner"},
		{"POST", "/api/v4/runners", "register_runner"},
		{"DELETE", "/api/v4/runners", "unregister_runner"},
		{"GET", "/api/v4/job", "job_status"},
		{"GET", "/gitlab/api/v4/job", "job_status"},
		{"GET", "/api/v4/projects/1/pipelines", "other"},
	} {
		if got := endpointOf(c.method, c.path); got != c.want {
			t.Errorf("%s %s: %s, want %s", c.method, c.path, got, c.want)
		}
	}
}

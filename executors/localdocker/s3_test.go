package localdocker

import (
	"encoding/json"
	"strings"
	"testing"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/s3cache"
)

// With an S3 [runners.cache] the host's job.json has presigned URLs and
// its runner.toml no storage credentials. (No engine needed.)
func TestS3CacheContext(t *testing.T) {
	const secret = "v0tdpjgpsDRqaSvIndvHAXFmjbpEd958gbZuO7yv"
	inner := map[string]any{"cache": map[string]any{"Type": "s3", "s3": map[string]any{
		"ServerAddress": "127.0.0.1:9", "AccessKey": "AKID", "SecretKey": secret, "BucketName": "ci-cache", "Insecure": true}}}
	c, err := s3cache.FromInner(inner)
	if err != nil {
		t.Fatal(err)
	}
	p, err := s3cache.New(*c)
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(Options{RunnerID: "t7654321", RunnerURL: "http://127.0.0.1:1", Inner: inner, Cache: p, Binary: "/bin/true", SystemID: "r_s3test000000"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	payload := `{"id": 5, "token": "t", "job_info": {"project_id": 3}, "cache": [{"key": "k", "policy": "pull-push", "paths": ["v/"]}]}`
	bc, err := e.Files(executors.Job{RunnerID: "t7654321", ID: 5, Payload: json.RawMessage(payload)})
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		PaasRunner struct {
			Cache map[string]s3cache.URLs `json:"cache"`
		} `json:"paas_runner"`
	}
	json.Unmarshal(bc.JobJSON, &doc)
	if u := doc.PaasRunner.Cache["k"]; !strings.Contains(u.Put, "/ci-cache/runner/t7654321/project/3/k") || u.Get == "" {
		t.Fatalf("job.json %s", bc.JobJSON)
	}
	if strings.Contains(string(bc.RunnerTOML)+string(bc.JobJSON), secret) || strings.Contains(string(bc.RunnerTOML), "AKID") {
		t.Fatalf("credentials reach the host:\n%s", bc.RunnerTOML)
	}
}

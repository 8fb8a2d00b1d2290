package cleverdocker

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"gitlab.com/paas-runner/paas-runner/executors/s3cache"
)

const s3Secret = "v0tdpjgpsDRqaSvIndvHAXFmjbpEd958gbZuO7yv"

// TestS3CacheURLsPushedNotKeys: with an S3 [runners.cache] the pushed
// job.json carries presigned URLs of the job's cache keys, and no file,
// commit or request carries the S3 secret key or the access key.
func TestS3CacheURLsPushedNotKeys(t *testing.T) {
	be := s3mem.New()
	srv := httptest.NewServer(gofakes3.New(be).Server())
	t.Cleanup(srv.Close)
	be.CreateBucket("ci-cache")
	inner := map[string]any{"cache": map[string]any{"Type": "s3", "Shared": false, "max_age": int64(86400), "s3": map[string]any{
		"ServerAddress": strings.TrimPrefix(srv.URL, "http://"), "AccessKey": "dEA7gjmYM98gobVi6Y1x", "SecretKey": s3Secret,
		"BucketName": "ci-cache", "Insecure": true}}}
	cfg, err := s3cache.FromInner(inner)
	if err != nil {
		t.Fatal(err)
	}
	p, err := s3cache.New(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, func(o *Options) { o.Inner, o.Cache = inner, p })
	j := testJob(31)
	var doc map[string]any
	json.Unmarshal(j.Payload, &doc)
	doc["cache"] = []map[string]any{{"key": "deps", "paths": []string{"vendor/"}, "policy": "pull-push"}}
	doc["job_info"] = map[string]any{"project_id": 42}
	j.Payload, _ = json.Marshal(doc)
	hd, h := provision(t, f, j)
	if _, err := f.e.Launch(ctx(t), h, j); err != nil {
		t.Fatal(err)
	}
	files, _, _, err := f.s.Pushed(hd.ID)
	if err != nil {
		t.Fatal(err)
	}
	var pushed struct {
		PaasRunner struct {
			Cache map[string]s3cache.URLs `json:"cache"`
		} `json:"paas_runner"`
	}
	if err := json.Unmarshal(files["job.json"], &pushed); err != nil {
		t.Fatal(err)
	}
	u := pushed.PaasRunner.Cache["deps"]
	if u.Get == "" || u.Put == "" || !strings.Contains(u.Put, "/ci-cache/runner/t1a2b3c4/project/42/deps") {
		t.Fatalf("cache URLs %+v", pushed.PaasRunner.Cache)
	}
	// the URL works: a host can store its cache
	req, _ := http.NewRequest(http.MethodPut, u.Put, strings.NewReader("archive"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("put: %v %v", err, resp)
	}
	resp.Body.Close()
	resp, _ = http.Get(u.Get)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "archive" {
		t.Fatalf("get: %q", b)
	}
	toml := string(files["runner.toml"])
	if strings.Contains(toml, "SecretKey") || strings.Contains(toml, "AccessKey") || !strings.Contains(toml, "max_age = 86400") {
		t.Fatalf("runner.toml:\n%s", toml)
	}
	checkNoSecret(t, f.s, s3Secret, ccToken)
}

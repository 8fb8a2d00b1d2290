package s3cache

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

const secret = "v0tdpjgpsDRqaSvIndvHAXFmjbpEd958gbZuO7yv"

// fakeS3 is a real S3 protocol server (gofakes3) with a bucket.
func fakeS3(t *testing.T) (Config, *s3mem.Backend) {
	be := s3mem.New()
	srv := httptest.NewServer(gofakes3.New(be).Server())
	t.Cleanup(srv.Close)
	if err := be.CreateBucket("ci-cache"); err != nil {
		t.Fatal(err)
	}
	return Config{ServerAddress: strings.TrimPrefix(srv.URL, "http://"), AccessKey: "AKIDTEST", SecretKey: secret, BucketName: "ci-cache", Insecure: true}, be
}

func payload(project int64, cache string) json.RawMessage {
	return json.RawMessage(`{"id": 7, "token": "t", "job_info": {"project_id": ` + fmt.Sprint(project) + `},
	  "runner_info": {"timeout": 3600},
	  "variables": [{"key": "CI_COMMIT_REF_SLUG", "value": "main"}],
	  "cache": ` + cache + `}`)
}

func httpDo(t *testing.T, method, u string, body []byte) (int, []byte) {
	req, _ := http.NewRequest(method, u, bytes.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func TestPresignedURLsWork(t *testing.T) {
	cfg, _ := fakeS3(t)
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	caches := `[{"key": "deps-$CI_COMMIT_REF_SLUG", "policy": "pull-push", "paths": ["x"], "fallback_keys": ["deps-default"]},
	            {"key": "ro", "policy": "pull", "paths": ["y"]}, {"key": "../escape", "paths": ["z"]}]`
	urls, err := p.ForJob(context.Background(), "t1234567", payload(1, caches))
	if err != nil {
		t.Fatal(err)
	}
	if len(urls) != 3 || urls["deps-main"].Put == "" || urls["deps-default"].Put != "" || urls["ro"].Put != "" || urls["ro"].Get == "" {
		t.Fatalf("urls %+v", urls)
	}
	for k, u := range urls {
		if strings.Contains(u.Get+u.Put, secret) {
			t.Fatalf("secret key in the URLs of %s", k)
		}
	}
	if st, _ := httpDo(t, "GET", urls["deps-main"].Get, nil); st != 404 {
		t.Fatalf("missing object: %d", st)
	}
	if st, b := httpDo(t, "PUT", urls["deps-main"].Put, []byte("tarball")); st != 200 {
		t.Fatalf("put: %d %s", st, b)
	}
	if st, b := httpDo(t, "GET", urls["deps-main"].Get, nil); st != 200 || string(b) != "tarball" {
		t.Fatalf("get: %d %s", st, b)
	}
	// another project, same key: another object
	other, _ := p.ForJob(context.Background(), "t1234567", payload(2, caches))
	if st, _ := httpDo(t, "GET", other["deps-main"].Get, nil); st != 404 {
		t.Fatalf("another project reads the cache: %d", st)
	}
	if n, _ := p.ObjectName("t1234567", 1, "deps-main"); n != "runner/t1234567/project/1/deps-main" {
		t.Fatalf("object name %s", n)
	}
	shared, _ := New(Config{ServerAddress: cfg.ServerAddress, AccessKey: "a", SecretKey: "b", BucketName: "ci-cache", Path: "pre", Shared: true, Insecure: true})
	if n, _ := shared.ObjectName("t1234567", 1, "k"); n != "pre/project/1/k" {
		t.Fatalf("shared object name %s", n)
	}
	if none, err := p.ForJob(context.Background(), "r", payload(1, `[]`)); err != nil || none != nil {
		t.Fatalf("no cache: %v %v", none, err)
	}
}

func TestFromInner(t *testing.T) {
	if c, err := FromInner(map[string]any{"cache": map[string]any{"Type": "local"}}); c != nil || err != nil {
		t.Fatalf("local: %v %v", c, err)
	}
	if c, err := FromInner(map[string]any{}); c != nil || err != nil {
		t.Fatalf("none: %v %v", c, err)
	}
	_, err := FromInner(map[string]any{"cache": map[string]any{"Type": "s3", "s3": map[string]any{"ServerAddress": "x"}}})
	if err == nil || !strings.Contains(err.Error(), "AccessKey, SecretKey, BucketName") {
		t.Fatalf("incomplete: %v", err)
	}
	c, err := FromInner(map[string]any{"cache": map[string]any{"Type": "s3", "Shared": true, "Path": "p",
		"s3": map[string]any{"ServerAddress": "cellar-c2.services.clever-cloud.com", "AccessKey": "a", "SecretKey": "s", "BucketName": "b", "Insecure": true}}})
	if err != nil || !c.Shared || c.Path != "p" || c.BucketName != "b" || !c.Insecure {
		t.Fatalf("%+v %v", c, err)
	}
}

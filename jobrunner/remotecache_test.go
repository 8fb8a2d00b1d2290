package jobrunner

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors/s3cache"
)

// TestRemoteCacheThroughPresignedURLs: with presigned URLs in job.json the
// cache goes to S3 (a real S3 protocol server), not to a local volume, and
// a second job (another host, as on Clever Cloud) restores it.
func TestRemoteCacheThroughPresignedURLs(t *testing.T) {
	be := s3mem.New()
	srv := httptest.NewServer(gofakes3.New(be).Server())
	t.Cleanup(srv.Close)
	be.CreateBucket("ci-cache")
	p, err := s3cache.New(s3cache.Config{ServerAddress: strings.TrimPrefix(srv.URL, "http://"), AccessKey: "AK", SecretKey: "SK-secret", BucketName: "ci-cache", Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	presign := func(raw json.RawMessage) any {
		urls, err := p.ForJob(context.Background(), "t1234567", raw)
		if err != nil {
			t.Fatal(err)
		}
		return urls
	}
	key := fmt.Sprintf("remote-%d", time.Now().UnixNano())
	cache := func(policy string) func(*coordinatortest.Server, *coordinatortest.Job) {
		return func(gl *coordinatortest.Server, q *coordinatortest.Job) {
			q.Payload["cache"] = []map[string]any{{"key": key, "paths": []string{"vendor/"}, "policy": policy, "when": "on_success"}}
		}
	}
	first := runJob(t, jobSpec{script: []string{"mkdir -p vendor", "echo remote-content > vendor/lib.txt"}, setup: cache("pull-push"), remoteCache: presign})
	if first.Status != "success" || !strings.Contains(string(first.Trace), "Created cache") {
		t.Fatalf("%s\n%s", first.Status, first.Trace)
	}
	if cli != nil {
		if _, err := cli.VolumeInspect(context.Background(), cacheVolume(testRunnerID, 1, key)); err == nil {
			t.Fatal("the cache went to a local volume")
		}
	}
	objs, err := be.ListBucket("ci-cache", nil, gofakes3.ListBucketPage{})
	if err != nil || len(objs.Contents) != 1 || !strings.HasSuffix(objs.Contents[0].Key, "/"+key) {
		t.Fatalf("bucket: %+v %v", objs, err)
	}
	second := runJob(t, jobSpec{script: []string{"cat vendor/lib.txt"}, setup: cache("pull"), remoteCache: presign})
	if second.Status != "success" || !strings.Contains(string(second.Trace), "remote-content") || !strings.Contains(string(second.Trace), "Successfully extracted cache") {
		t.Fatalf("%s\n%s", second.Status, second.Trace)
	}
	if strings.Contains(string(first.Trace)+string(second.Trace), "X-Amz-Signature") {
		t.Fatal("a presigned URL in the job log")
	}
}

package main_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/volume"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
)

// TestLocalDockerS3CacheAcrossHosts: with an S3 [runners.cache], a job's
// cache goes to S3 (a real S3 protocol server) through the URLs the daemon
// presigned, and the next job's fresh host restores it; no local cache
// volume is made and the S3 secret key stays in the daemon.
func TestLocalDockerS3CacheAcrossHosts(t *testing.T) {
	cli := dockerInner(t)
	if err := localdockertest.BuildBusyboxImage(context.Background(), cli, busyboxTag); err != nil {
		t.Fatal(err)
	}
	const secret = "v0tdpjgpsDRqaSvIndvHAXFmjbpEd958gbZuO7yv"
	be := s3mem.New()
	srv := httptest.NewServer(gofakes3.New(be).Server())
	t.Cleanup(srv.Close)
	be.CreateBucket("paas-ci")
	tok := fmt.Sprintf("glrt-lds3-%d-0123456789", os.Getpid()) // per process: runs in other checkouts share the engine
	s3 := fmt.Sprintf("\n  [runners.cache]\n  Type = \"s3\"\n  [runners.cache.s3]\n  ServerAddress = %q\n  AccessKey = \"AKIDLOCAL\"\n  SecretKey = %q\n  BucketName = \"paas-ci\"\n  Insecure = true",
		strings.TrimPrefix(srv.URL, "http://"), secret)
	gl, dir, cfg := localDockerConfig(t, "concurrent = 2\ncheck_interval = 0.1", ldRunner{tok, "name = \"s3\"\n" + hostNetworkNoPull + s3})
	e := &env{t: t, dir: dir, config: cfg, gl: gl}
	cleanRunner(t, cli, config.RunnerID(tok))
	p := e.start("")
	key := fmt.Sprintf("s3deps-%d", time.Now().UnixNano())
	run := func(n int, policy string, script ...string) coordinatortest.Job {
		jobToken := fmt.Sprintf("glcbt-s3-job-token-%d-%d", n, time.Now().UnixNano())
		repo, sha := localdockertest.GitServer(t, jobToken)
		q := gl.Enqueue(tok, map[string]any{
			"token": jobToken,
			"image": map[string]any{"name": busyboxTag},
			"git_info": map[string]any{"repo_url": repo, "ref": "main", "sha": sha, "ref_type": "branch", "depth": 1,
				"refspecs": []string{"+refs/heads/main:refs/remotes/origin/main"}},
			"steps":     []map[string]any{{"name": "script", "script": script, "timeout": 600, "when": "on_success"}},
			"variables": []map[string]any{{"key": "CI_JOB_TOKEN", "value": jobToken, "public": false, "masked": true}},
			"cache":     []map[string]any{{"key": key, "paths": []string{"vendor/"}, "policy": policy, "when": "on_success"}},
		})
		gl.WaitFor(procWait, "the job to end", func(s *coordinatortest.Server) bool { return jobFinal(s.StatusOf(q.ID)) })
		return gl.Job(q.ID)
	}
	first := run(1, "pull-push", "mkdir -p vendor", "echo from-s3 > vendor/lib.txt")
	if first.Status != "success" || !strings.Contains(string(first.Trace), "Created cache") {
		t.Fatalf("first job %s:\n%s", first.Status, first.Trace)
	}
	objs, err := be.ListBucket("paas-ci", nil, gofakes3.ListBucketPage{})
	if err != nil || len(objs.Contents) != 1 || !strings.HasSuffix(objs.Contents[0].Key, "/"+key) {
		t.Fatalf("bucket: %+v %v", objs, err)
	}
	second := run(2, "pull", "cat vendor/lib.txt")
	if second.Status != "success" || !strings.Contains(string(second.Trace), "from-s3") {
		t.Fatalf("second job %s:\n%s", second.Status, second.Trace)
	}
	vs, _ := cli.VolumeList(context.Background(), volume.ListOptions{Filters: filters.NewArgs(filters.Arg("label", "paas-runner.cache-key="+key))})
	if len(vs.Volumes) != 0 {
		t.Fatalf("a local cache volume was made: %v", vs.Volumes[0].Name)
	}
	waitNoHosts(t, cli, config.RunnerID(tok))
	p.signal(syscall.SIGTERM)
	p.wait(t)
	if strings.Contains(p.log()+string(first.Trace)+string(second.Trace), secret) {
		t.Fatal("the S3 secret key in a log")
	}
}

package jobrunner

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/volume"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/internal/labels"
)

func cacheSetup(projectID int64, key, policy string) func(*coordinatortest.Server, *coordinatortest.Job) {
	return func(gl *coordinatortest.Server, q *coordinatortest.Job) {
		q.Payload["job_info"].(map[string]any)["project_id"] = projectID
		q.Payload["cache"] = []map[string]any{{"key": key, "paths": []string{"vendor/"}, "policy": policy, "when": "on_success"}}
	}
}

// Project B's job never sees what project A's job saved under the same key.
func TestCacheIsolatedPerProject(t *testing.T) {
	a, b := time.Now().UnixNano()%1e9+1e9, time.Now().UnixNano()%1e9+2e9
	t.Cleanup(func() {
		if cli != nil {
			for _, p := range []int64{a, b} {
				cli.VolumeRemove(context.Background(), cacheVolume(testRunnerID, p, "default"), true)
			}
		}
	})
	first := runJob(t, jobSpec{script: []string{"mkdir -p vendor", "echo poisoned-by-a > vendor/lib.txt"}, setup: cacheSetup(a, "default", "pull-push")})
	if first.Status != "success" || !strings.Contains(string(first.Trace), "Created cache") {
		t.Fatalf("%s\n%s", first.Status, first.Trace)
	}
	second := runJob(t, jobSpec{script: []string{"test ! -e vendor/lib.txt"}, setup: cacheSetup(b, "default", "pull")})
	if second.Status != "success" {
		t.Fatalf("project B read project A's cache: %s\n%s", second.Status, second.Trace)
	}
	// and project A still gets its own
	third := runJob(t, jobSpec{script: []string{"cat vendor/lib.txt"}, setup: cacheSetup(a, "default", "pull")})
	if third.Status != "success" || !strings.Contains(string(third.Trace), "poisoned-by-a") {
		t.Fatalf("%s\n%s", third.Status, third.Trace)
	}
}

// A cache volume of this runner not saved for max_age is removed when a
// job starts; a fresh one, and other runners' old ones, stay.
func TestStaleCacheVolumesRemoved(t *testing.T) {
	if cli == nil {
		t.Skip("no Docker engine")
	}
	ctx := context.Background()
	now := time.Now()
	suffix := strconv.FormatInt(now.UnixNano(), 36)
	mk := func(name, runner string, savedAt time.Time) string {
		name += "-" + suffix
		l := map[string]string{labels.LabelRole: labels.RoleCache, labels.LabelRunner: runner, labelCacheKey: "k",
			labelCacheSavedAt: strconv.FormatInt(savedAt.Unix(), 10)}
		if _, err := cli.VolumeCreate(ctx, volume.CreateOptions{Name: name, Labels: l}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.VolumeRemove(context.Background(), name, true) })
		return name
	}
	stale := mk("paas-runner-test-stale", testRunnerID, now.Add(-3*time.Hour))
	fresh := mk("paas-runner-test-fresh", testRunnerID, now.Add(-time.Minute))
	other := mk("paas-runner-test-other", "tother01", now.Add(-30*24*time.Hour))
	j := runJob(t, jobSpec{script: []string{"true"}, config: func(rc *RunnerConfig) { rc.Cache.MaxAge = time.Hour }})
	if j.Status != "success" {
		t.Fatalf("%s\n%s", j.Status, j.Trace)
	}
	exists := func(name string) bool { _, err := cli.VolumeInspect(ctx, name); return err == nil }
	if exists(stale) {
		t.Error("the stale cache volume is still there")
	}
	if !exists(fresh) || !exists(other) {
		t.Errorf("a cache volume that is not stale or not ours was removed: fresh %v, other runner's %v", exists(fresh), exists(other))
	}
}

func TestCacheMaxAgeConfig(t *testing.T) {
	dir := t.TempDir()
	load := func(cache string) (*RunnerConfig, error) {
		p := filepath.Join(dir, "runner.toml")
		os.WriteFile(p, []byte("[[runners]]\nurl = \"https://gitlab.example\"\n[runners.cache]\n"+cache+"\n"), 0o600)
		return LoadConfig(p)
	}
	for in, want := range map[string]time.Duration{"": DefaultCacheMaxAge, "max_age = 3600": time.Hour, "max_age = 1.5": 1500 * time.Millisecond} {
		rc, err := load(in)
		if err != nil || rc.Cache.MaxAge != want {
			t.Errorf("%q: %v %v, want %v", in, rc, err, want)
		}
	}
	for _, in := range []string{"max_age = 0", "max_age = -5", "max_age = nan", "max_age = inf", `max_age = "1h"`} {
		if _, err := load(in); err == nil || !strings.Contains(err.Error(), "runners.cache.max_age") {
			t.Errorf("%q: %v", in, err)
		}
	}
}

func TestCacheVolumeName(t *testing.T) {
	names := map[string]bool{}
	for _, c := range []struct {
		runner string
		proj   int64
		key    string
	}{{"t1", 1, "default"}, {"t1", 2, "default"}, {"t2", 1, "default"}, {"", 1, "default"}, {"t1", 1, "other"}} {
		n := cacheVolume(c.runner, c.proj, c.key)
		if names[n] {
			t.Fatalf("%v: name %s used twice", c, n)
		}
		names[n] = true
		if !strings.Contains(n, fmt.Sprintf("-p%d-", c.proj)) {
			t.Errorf("%s does not name its project", n)
		}
	}
}

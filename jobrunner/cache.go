package jobrunner

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/volume"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/internal/labels"
	"gitlab.com/paas-runner/paas-runner/job"
)

// Caches live in local Docker volumes kept across jobs on the same engine
// (they are not removed with the job): one per runner, project and cache
// key, so that a project never reads nor writes another project's cache.
// A volume is rewritten whole when its cache is saved; one not saved for
// [runners.cache] max_age is removed at the start of a job. For the keys
// the daemon presigned S3 URLs for (job.json paas_runner.cache), the same
// tar archive is downloaded from and uploaded to S3 instead: job hosts
// that never see a second job (Clever Cloud) keep their caches, and never
// hold the S3 keys.

var volumeUnsafe = regexp.MustCompile(`[^a-zA-Z0-9_.-]+`)

// Labels of cache volumes (with labels.LabelRole = labels.RoleCache and
// labels.LabelRunner).
const (
	labelCacheKey     = "paas-runner.cache-key"
	labelCacheProject = "paas-runner.project-id"
	labelCacheSavedAt = "paas-runner.cache-saved-at" // Unix seconds
)

// cacheVolume names the volume of a cache key of a project on a runner.
func cacheVolume(runnerID string, projectID int64, key string) string {
	sum := sha256.Sum256([]byte(runnerID + "\x00" + strconv.FormatInt(projectID, 10) + "\x00" + key))
	safe := volumeUnsafe.ReplaceAllString(key, "_")
	if len(safe) > 40 {
		safe = safe[:40]
	}
	prefix := "paas-runner-cache-"
	if runnerID != "" {
		prefix += volumeUnsafe.ReplaceAllString(runnerID, "_") + "-"
	}
	return prefix + "p" + strconv.FormatInt(projectID, 10) + "-" + safe + "-" + hex.EncodeToString(sum[:4])
}

// projectID is the job's project, from the payload or CI_PROJECT_ID.
func (r *runner) projectID() int64 {
	if id := r.p.JobInfo.ProjectID; id != 0 {
		return id
	}
	id, _ := strconv.ParseInt(r.p.Variables.Get("CI_PROJECT_ID"), 10, 64)
	return id
}

func (r *runner) cacheVolume(key string) string {
	return cacheVolume(r.o.Job.RunnerID, r.projectID(), key)
}

// removeStaleCaches removes this runner's cache volumes not saved for
// longer than maxAge. A volume in use by a running job stays (Docker
// refuses); other runners' caches are theirs to bound.
func (r *runner) removeStaleCaches(ctx context.Context, maxAge time.Duration, now time.Time) {
	f := filters.NewArgs(filters.Arg("label", labels.LabelRole+"="+labels.RoleCache))
	if r.o.Job.RunnerID != "" {
		f.Add("label", labels.LabelRunner+"="+r.o.Job.RunnerID)
	}
	vs, err := r.docker.VolumeList(ctx, volume.ListOptions{Filters: f})
	if err != nil {
		r.log.Warn("listing cache volumes failed", zap.Error(err))
		return
	}
	for _, v := range vs.Volumes {
		if r.o.Job.RunnerID == "" && v.Labels[labels.LabelRunner] != "" {
			continue
		}
		saved, err := strconv.ParseInt(v.Labels[labelCacheSavedAt], 10, 64)
		if err != nil {
			continue // not one of ours
		}
		if now.Sub(time.Unix(saved, 0)) <= maxAge {
			continue
		}
		if err := r.docker.VolumeRemove(ctx, v.Name, false); err != nil {
			if !cerrdefs.IsNotFound(err) && !cerrdefs.IsConflict(err) {
				r.log.Warn("removing a stale cache volume failed", zap.String("volume", v.Name), zap.Error(err))
			}
			continue
		}
		r.log.Info("removed a stale cache volume", zap.String("volume", v.Name), zap.String("cache_key", v.Labels[labelCacheKey]))
	}
}

func (r *runner) cacheKey(c job.Cache) string {
	k := r.expanded.Expand(c.Key)
	if k == "" {
		k = "default"
	}
	return k
}

// cacheContainer creates (never starts) a container of img with vol at
// /cache, to move files in and out through the Docker API.
func (r *runner) cacheContainer(ctx context.Context, img, vol string) (string, error) {
	c, err := r.docker.ContainerCreate(ctx, &container.Config{Image: img, Cmd: []string{"true"}, Entrypoint: []string{},
		Labels: r.labels()},
		&container.HostConfig{Mounts: []mount.Mount{{Type: mount.TypeVolume, Source: vol, Target: "/cache"}}}, nil, nil, "")
	if err != nil {
		return "", err
	}
	r.track(c.ID)
	return c.ID, nil
}

// restoreCaches unpacks the caches the job pulls into dir (the sources),
// from the volume of their key or of the first fallback key that exists.
func (r *runner) restoreCaches(ctx context.Context, img, dir string) {
	for _, c := range r.p.Cache {
		if c.Policy == "push" {
			continue
		}
		keys := append([]string{r.cacheKey(c)}, c.FallbackKeys...)
		for i, k := range keys {
			if i > 0 {
				k = r.expanded.Expand(k)
			}
			var err error
			if u, remote := r.o.Job.RemoteCache[k]; remote {
				var found bool
				if found, err = r.download(ctx, u.Get, dir); err == nil && !found {
					continue
				}
			} else {
				vol := r.cacheVolume(k)
				if _, err := r.docker.VolumeInspect(ctx, vol); err != nil {
					continue
				}
				var id string
				id, err = r.cacheContainer(ctx, img, vol)
				if err == nil {
					err = r.copyOut(ctx, id, "/cache", dir)
				}
			}
			if err != nil {
				r.printf("%sWARNING: restoring cache %q: %v%s\n", ansiBoldRed, k, err, ansiReset)
			} else {
				r.printf("Successfully extracted cache %q\n", k)
			}
			break
		}
	}
}

// download restores a cache archive from a presigned URL; a missing
// object (404, or 403 as S3 answers without list rights) is not found.
func (r *runner) download(ctx context.Context, u, dir string) (bool, error) {
	if u == "" {
		return false, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return false, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, fmt.Errorf("downloading the cache: %w", stripURLError(err))
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusForbidden:
		return false, nil
	case resp.StatusCode != http.StatusOK:
		return false, fmt.Errorf("downloading the cache: HTTP %d", resp.StatusCode)
	}
	warnings, err := extractTar(resp.Body, dir, true)
	for _, w := range warnings {
		r.printf("%sWARNING: %s%s\n", ansiBoldRed, w, ansiReset)
	}
	return true, err
}

// upload stores a cache archive at a presigned URL.
func (r *runner) upload(ctx context.Context, u string, data []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u, bytes.NewReader(data))
	if err != nil {
		return err
	}
	req.ContentLength = int64(len(data))
	req.Header.Set("Content-Type", "application/x-tar")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("uploading the cache: %w", stripURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("uploading the cache: HTTP %d", resp.StatusCode)
	}
	return nil
}

// stripURLError drops the URL (it holds a signature) from a client error.
func stripURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// copyOut extracts the content of path in container id into dir, never
// outside it (see extractor).
func (r *runner) copyOut(ctx context.Context, id, src, dir string) error {
	rc, _, err := r.docker.CopyFromContainer(ctx, id, src)
	if err != nil {
		return err
	}
	defer rc.Close()
	warnings, err := extractTar(rc, dir, true)
	for _, w := range warnings {
		r.printf("%sWARNING: %s%s\n", ansiBoldRed, w, ansiReset)
	}
	return err
}

// saveCaches stores the cached paths of the project directory of container
// id in the volume of each cache's key, replacing what it held.
func (r *runner) saveCaches(ctx context.Context, img, id string, jobOK bool, srcDir string) {
	tracked := trackedFiles(srcDir)
	for _, c := range r.p.Cache {
		if c.Policy == "pull" || !whenApplies(c.When, jobOK) || (len(c.Paths) == 0 && !c.Untracked) {
			continue
		}
		key := r.cacheKey(c)
		if err := r.saveCache(ctx, img, id, key, c, tracked); err != nil {
			r.printf("%sWARNING: saving cache %q: %v%s\n", ansiBoldRed, key, err, ansiReset)
			continue
		}
		r.printf("Created cache %q\n", key)
	}
}

func (r *runner) saveCache(ctx context.Context, img, id, key string, c job.Cache, tracked map[string]bool) error {
	inc := newMatcher(c.Paths, r.expanded)
	rc, _, err := r.docker.CopyFromContainer(ctx, id, r.projectDir())
	if err != nil {
		return err
	}
	defer rc.Close()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "cache/", Typeflag: tar.TypeDir, Mode: 0o777})
	tr := tar.NewReader(rc)
	n := 0
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		_, rel, ok := strings.Cut(hdr.Name, "/")
		rel = strings.TrimSuffix(rel, "/")
		if !ok || rel == "" || rel == ".git" || strings.HasPrefix(rel, ".git/") {
			continue
		}
		if !inc.match(rel) && !(c.Untracked && hdr.Typeflag != tar.TypeDir && !tracked[rel]) {
			continue
		}
		h := *hdr
		h.Name = "cache/" + rel
		if hdr.Typeflag == tar.TypeDir {
			h.Name += "/"
		}
		if err := tw.WriteHeader(&h); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := io.Copy(tw, tr); err != nil {
				return err
			}
			n++
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	r.printf("%s: found %d matching files for the cache\n", key, n)
	if u, remote := r.o.Job.RemoteCache[key]; remote {
		if u.Put == "" {
			return errors.New("no upload URL for this key")
		}
		return r.upload(ctx, u.Put, buf.Bytes())
	}
	vol := r.cacheVolume(key)
	if err := r.docker.VolumeRemove(ctx, vol, true); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("replacing the cache volume: %w", err)
	}
	vl := map[string]string{labels.LabelRole: labels.RoleCache, labelCacheKey: key,
		labelCacheProject: strconv.FormatInt(r.projectID(), 10), labelCacheSavedAt: strconv.FormatInt(time.Now().Unix(), 10)}
	if r.o.Job.RunnerID != "" {
		vl[labels.LabelRunner] = r.o.Job.RunnerID
	}
	if _, err := r.docker.VolumeCreate(ctx, volume.CreateOptions{Name: vol, Labels: vl}); err != nil {
		return err
	}
	cid, err := r.cacheContainer(ctx, img, vol)
	if err != nil {
		return err
	}
	// the container must be gone before the volume can be replaced later
	defer r.docker.ContainerRemove(context.WithoutCancel(ctx), cid, container.RemoveOptions{Force: true})
	return r.docker.CopyToContainer(ctx, cid, "/", &buf, container.CopyToContainerOptions{})
}

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
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/volume"

	"gitlab.com/paas-runner/paas-runner/job"
)

// Caches live in local Docker volumes, one per cache key, kept across jobs
// on the same engine (they are not removed with the job), or, for the keys
// the daemon presigned S3 URLs for (job.json paas_runner.cache), in S3:
// the same tar archive is downloaded and uploaded with those URLs.

var volumeUnsafe = regexp.MustCompile(`[^a-zA-Z0-9_.-]+`)

func cacheVolume(key string) string {
	sum := sha256.Sum256([]byte(key))
	safe := volumeUnsafe.ReplaceAllString(key, "_")
	if len(safe) > 40 {
		safe = safe[:40]
	}
	return "paas-runner-cache-" + safe + "-" + hex.EncodeToString(sum[:4])
}

func (r *runner) cacheKey(c job.Cache) string {
	k := r.vars.Expand(c.Key)
	if k == "" {
		k = "default"
	}
	return k
}

// cacheContainer creates (never starts) a container of img with vol at
// /cache, to move files in and out through the Docker API.
func (r *runner) cacheContainer(ctx context.Context, img, vol string) (string, error) {
	c, err := r.docker.ContainerCreate(ctx, &container.Config{Image: img, Cmd: []string{"true"}, Entrypoint: []string{},
		Labels: map[string]string{"paas-runner.job-id": fmt.Sprint(r.p.ID)}},
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
				k = r.vars.Expand(k)
			}
			var err error
			if u, remote := r.o.Job.RemoteCache[k]; remote {
				var found bool
				if found, err = r.download(ctx, u.Get, dir); err == nil && !found {
					continue
				}
			} else {
				vol := cacheVolume(k)
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
	return true, extractTar(resp.Body, dir)
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

// copyOut extracts the content of path in container id into dir.
func (r *runner) copyOut(ctx context.Context, id, src, dir string) error {
	rc, _, err := r.docker.CopyFromContainer(ctx, id, src)
	if err != nil {
		return err
	}
	defer rc.Close()
	return extractTar(rc, dir)
}

// extractTar extracts a cache archive (entries under cache/) into dir.
func extractTar(rd io.Reader, dir string) error {
	tr := tar.NewReader(rd)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		_, rel, _ := strings.Cut(hdr.Name, "/") // strip "cache/"
		rel = path.Clean("/" + rel)[1:]
		if rel == "" {
			continue
		}
		p := filepath.Join(dir, filepath.FromSlash(rel))
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			os.MkdirAll(filepath.Dir(p), 0o755)
			f, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, os.FileMode(hdr.Mode).Perm()|0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			f.Close()
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			os.MkdirAll(filepath.Dir(p), 0o755)
			os.Remove(p)
			if err := os.Symlink(hdr.Linkname, p); err != nil {
				return err
			}
		}
	}
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
	inc := newMatcher(c.Paths, r.vars)
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
	vol := cacheVolume(key)
	if err := r.docker.VolumeRemove(ctx, vol, true); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("replacing the cache volume: %w", err)
	}
	if _, err := r.docker.VolumeCreate(ctx, volume.CreateOptions{Name: vol, Labels: map[string]string{"paas-runner.cache-key": key}}); err != nil {
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

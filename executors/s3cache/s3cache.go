// Package s3cache lets job hosts use an S3 cache ([runners.cache] with
// Type = "s3") without its keys: the daemon presigns, per job, a GET URL
// for each cache key the job may restore and a PUT URL for each key it may
// save, and hands only those URLs to the host (job.json, paas_runner.cache).
// Object names follow gitlab-runner's: <Path>/runner/<runner id>/project/
// <project id>/<key> (without the runner part when Shared), so that cache
// keys are isolated per project.
package s3cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"gitlab.com/paas-runner/paas-runner/job"
)

// Config is [runners.cache] (Type, Path, Shared) and [runners.cache.s3].
type Config struct {
	Path, ServerAddress, AccessKey, SecretKey, BucketName, BucketLocation string
	Shared, Insecure                                                      bool
}

// FromInner reads the cache table forwarded to the inner runner; nil (no
// error) when it is not an S3 cache.
func FromInner(inner map[string]any) (*Config, error) {
	cache, _ := inner["cache"].(map[string]any)
	if cache == nil {
		return nil, nil
	}
	if t, _ := cache["Type"].(string); !strings.EqualFold(t, "s3") {
		return nil, nil
	}
	s3, _ := cache["s3"].(map[string]any)
	str := func(m map[string]any, k string) string { v, _ := m[k].(string); return v }
	boolean := func(m map[string]any, k string) bool { v, _ := m[k].(bool); return v }
	c := &Config{Path: str(cache, "Path"), Shared: boolean(cache, "Shared"),
		ServerAddress: str(s3, "ServerAddress"), AccessKey: str(s3, "AccessKey"), SecretKey: str(s3, "SecretKey"),
		BucketName: str(s3, "BucketName"), BucketLocation: str(s3, "BucketLocation"), Insecure: boolean(s3, "Insecure")}
	var missing []string
	for _, f := range []struct{ k, v string }{{"ServerAddress", c.ServerAddress}, {"AccessKey", c.AccessKey}, {"SecretKey", c.SecretKey}, {"BucketName", c.BucketName}} {
		if f.v == "" {
			missing = append(missing, f.k)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("[runners.cache] Type = \"s3\" needs [runners.cache.s3] %s", strings.Join(missing, ", "))
	}
	return c, nil
}

// URLs of one cache key; Put is empty for a key the job only restores.
type URLs struct {
	Get string `json:"get_url"`
	Put string `json:"put_url,omitempty"`
}

// Presigner presigns cache URLs; it makes no network call.
type Presigner struct {
	cfg Config
	cli *minio.Client
}

// New checks the configuration.
func New(c Config) (*Presigner, error) {
	region := c.BucketLocation
	if region == "" {
		region = "us-east-1" // no location lookup: presigning stays offline
	}
	cli, err := minio.New(c.ServerAddress, &minio.Options{Creds: credentials.NewStaticV4(c.AccessKey, c.SecretKey, ""), Secure: !c.Insecure, Region: region})
	if err != nil {
		return nil, fmt.Errorf("S3 cache at %s: %w", c.ServerAddress, err)
	}
	return &Presigner{cfg: c, cli: cli}, nil
}

// ObjectName is where a project's cache key is stored.
func (p *Presigner) ObjectName(runnerID string, projectID int64, key string) (string, error) {
	if key == "" || strings.Contains(key, "\x00") {
		return "", errors.New("empty cache key")
	}
	for _, seg := range strings.Split(key, "/") {
		if seg == ".." || seg == "." {
			return "", fmt.Errorf("cache key %q has a %q segment", key, seg)
		}
	}
	parts := []string{p.cfg.Path}
	if !p.cfg.Shared {
		parts = append(parts, "runner", runnerID)
	}
	parts = append(parts, "project", fmt.Sprint(projectID), key)
	return strings.TrimPrefix(path.Join(parts...), "/"), nil
}

// Key is a cache entry's key as the inner runner computes it.
func Key(vars job.Variables, raw string) string {
	k := vars.Expand(raw)
	if k == "" {
		k = "default"
	}
	return k
}

// ForJob presigns the URLs of a job's caches, valid for the job's timeout
// plus an hour (at most 7 days, S3's limit). Keys that cannot be stored
// are left out (the inner runner then skips them).
func (p *Presigner) ForJob(ctx context.Context, runnerID string, payload json.RawMessage) (map[string]URLs, error) {
	a, err := job.Parse(payload)
	if err != nil {
		return nil, err
	}
	pl := a.Payload
	if len(pl.Cache) == 0 {
		return nil, nil
	}
	ttl := time.Duration(pl.RunnerInfo.Timeout)*time.Second + time.Hour
	ttl = min(max(ttl, time.Hour), 7*24*time.Hour)
	out := map[string]URLs{}
	sign := func(key string, put bool) error {
		u, ok := out[key]
		name, err := p.ObjectName(runnerID, pl.JobInfo.ProjectID, key)
		if err != nil {
			return nil
		}
		if !ok {
			g, err := p.cli.PresignedGetObject(ctx, p.cfg.BucketName, name, ttl, url.Values{})
			if err != nil {
				return err
			}
			u.Get = g.String()
		}
		if put && u.Put == "" {
			pu, err := p.cli.PresignedPutObject(ctx, p.cfg.BucketName, name, ttl)
			if err != nil {
				return err
			}
			u.Put = pu.String()
		}
		out[key] = u
		return nil
	}
	for _, c := range pl.Cache {
		if err := sign(Key(pl.Variables, c.Key), c.Policy != "pull"); err != nil {
			return nil, fmt.Errorf("presigning cache URLs: %w", err)
		}
		for _, fk := range c.FallbackKeys {
			if err := sign(pl.Variables.Expand(fk), false); err != nil {
				return nil, fmt.Errorf("presigning cache URLs: %w", err)
			}
		}
	}
	return out, nil
}

// WithoutCredentials returns a copy of the forwarded [[runners]] keys
// whose [runners.cache] has no storage subtable (s3, gcs, azure): the
// inner runner keeps Type, Path, Shared, max_age but never the keys.
func WithoutCredentials(inner map[string]any) map[string]any {
	cache, _ := inner["cache"].(map[string]any)
	if cache == nil {
		return inner
	}
	out := make(map[string]any, len(inner))
	for k, v := range inner {
		out[k] = v
	}
	c := make(map[string]any, len(cache))
	for k, v := range cache {
		switch k {
		case "s3", "gcs", "azure":
		default:
			c[k] = v
		}
	}
	out["cache"] = c
	return out
}

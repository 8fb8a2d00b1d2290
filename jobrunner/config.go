// Package jobrunner is the inner runner behind `paas-runner
// exec-fetched-job`: on the host the executor provisioned, it runs one
// already-acquired job with GitLab Runner's docker-executor semantics and
// reports the log and the result to GitLab itself.
package jobrunner

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/internal/labels"
	"gitlab.com/paas-runner/paas-runner/job"
)

// RunnerConfig is the part of runner.toml the inner runner uses.
type RunnerConfig struct {
	Name        string         `toml:"name"`
	URL         string         `toml:"url"`
	BuildsDir   string         `toml:"builds_dir"`
	Environment []string       `toml:"environment"`
	OutputLimit int64          `toml:"output_limit"` // KB
	Docker      DockerConfig   `toml:"-"`
	DockerRaw   map[string]any `toml:"docker"`
	Cache       CacheConfig    `toml:"cache"`
	// TLSCAFile is a PEM bundle trusted for GitLab (its API, git,
	// artifacts) in addition to the system's: gitlab-runner's key. A
	// relative path is read from runner.toml's directory. TLSCA is its
	// content once loaded.
	TLSCAFile string `toml:"tls-ca-file"`
	TLSCA     []byte `toml:"-"`
}

// CacheConfig is [runners.cache]. Only local cache volumes exist here.
type CacheConfig struct {
	// MaxAge bounds local cache volumes: one not saved for this long is
	// removed when a job starts (max_age, seconds; default 7 days).
	MaxAge    time.Duration `toml:"-"`
	MaxAgeRaw any           `toml:"max_age"`
}

// DefaultCacheMaxAge is [runners.cache] max_age when not set.
const DefaultCacheMaxAge = 7 * 24 * time.Hour

// CacheMaxAge reads [runners.cache] max_age: a positive number of seconds
// (integer or float), or absent (nil) for the default.
func CacheMaxAge(v any) (time.Duration, error) {
	var secs float64
	switch n := v.(type) {
	case nil:
		return DefaultCacheMaxAge, nil
	case int64:
		secs = float64(n)
	case int:
		secs = float64(n)
	case float64:
		secs = n
	default:
		return 0, fmt.Errorf("want a number of seconds, not %T", v)
	}
	if math.IsNaN(secs) || math.IsInf(secs, 0) || secs <= 0 || secs > 100*365*24*3600 {
		return 0, fmt.Errorf("want a positive number of seconds (at most 100 years), not %v", secs)
	}
	return time.Duration(secs * float64(time.Second)), nil
}

// DockerConfig is [runners.docker], parsed by the same code as the
// daemon's validation (gitlab-runner's keys, types and units).
type DockerConfig = config.Docker

// LoadConfig reads runner.toml (the first [[runners]] entry).
func LoadConfig(path string) (*RunnerConfig, error) {
	var doc struct {
		Runners []RunnerConfig `toml:"runners"`
	}
	if _, err := toml.DecodeFile(path, &doc); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(doc.Runners) != 1 {
		return nil, fmt.Errorf("%s: want exactly one [[runners]] entry, found %d", path, len(doc.Runners))
	}
	rc := doc.Runners[0]
	d, probs := config.ParseDocker(rc.DockerRaw)
	var errs []string
	for _, p := range probs {
		if !p.Warning {
			errs = append(errs, "runners.docker."+p.Key+": "+p.Msg)
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s: %s", path, strings.Join(errs, "; "))
	}
	rc.Docker = d
	maxAge, err := CacheMaxAge(rc.Cache.MaxAgeRaw)
	if err != nil {
		return nil, fmt.Errorf("%s: runners.cache.max_age: %w", path, err)
	}
	rc.Cache.MaxAge = maxAge
	if rc.URL == "" {
		return nil, fmt.Errorf("%s: the runner has no url", path)
	}
	if rc.TLSCAFile != "" {
		if !filepath.IsAbs(rc.TLSCAFile) {
			rc.TLSCAFile = filepath.Join(filepath.Dir(path), rc.TLSCAFile)
		}
		ca, err := os.ReadFile(rc.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("%s: tls-ca-file: %w", path, err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(ca) {
			return nil, fmt.Errorf("%s: tls-ca-file %s: no PEM certificate found", path, rc.TLSCAFile)
		}
		rc.TLSCA = ca
	}
	if rc.BuildsDir == "" {
		rc.BuildsDir = "/builds"
	}
	if rc.OutputLimit <= 0 {
		rc.OutputLimit = 4096
	}
	return &rc, nil
}

// Job is job.json: GitLab's payload plus what the daemon adds.
type Job struct {
	*job.Acquired
	TraceOffset int64
	// TraceCRC of the log up to TraceOffset; nil when the daemon could not
	// know it (the final update then carries no checksum).
	TraceCRC *uint32
	// TraceLead is the daemon's last lines, not in GitLab yet: sent first,
	// at TraceOffset, as they are (TraceCRC is of the log before them).
	TraceLead []byte
	// SystemID and RunnerID identify the daemon and the runner that
	// handed the job over; they label everything the job creates. Empty
	// when job.json does not say (a job.json made by Heptapod).
	SystemID string
	RunnerID string
	// RemoteCache has, by cache key, the presigned URLs of the S3 cache
	// objects (the daemon's s3cache): keys without one use local volumes.
	RemoteCache map[string]RemoteCacheURLs
	// HostContainer is the name of the container this inner runner runs
	// in, on the engine it drives (local-docker's host): the job's
	// containers join its network namespace (see jobNetwork). Empty on a
	// host that is not a container of that engine.
	HostContainer string
	// BuildsVolume is the job's builds volume, when its host already has
	// it (local-docker makes it with the host and mounts it there).
	BuildsVolume BuildsVolume
}

// BuildsVolume names a builds volume and where this inner runner has it.
type BuildsVolume struct {
	Name string `json:"name"`
	Path string `json:"path"`
}

// RemoteCacheURLs are one cache key's presigned URLs; Put is empty when the
// job may only restore it.
type RemoteCacheURLs struct {
	Get string `json:"get_url"`
	Put string `json:"put_url"`
}

// LoadJob reads job.json.
func LoadJob(path string) (*Job, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	a, err := job.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var extra struct {
		PaasRunner struct {
			TraceOffset int64                      `json:"trace_offset"`
			TraceCRC    *uint32                    `json:"trace_crc32"`
			TraceLead   string                     `json:"trace_lead"`
			SystemID    string                     `json:"system_id"`
			RunnerID    string                     `json:"runner_id"`
			Cache       map[string]RemoteCacheURLs `json:"cache"`
			Host        string                     `json:"host_container"`
			Builds      BuildsVolume               `json:"builds_volume"`
		} `json:"paas_runner"`
	}
	_ = json.Unmarshal(raw, &extra)
	pr := extra.PaasRunner
	var lead []byte
	if pr.TraceLead != "" {
		lead = []byte(pr.TraceLead)
	}
	return &Job{Acquired: a, TraceOffset: pr.TraceOffset, TraceCRC: pr.TraceCRC, TraceLead: lead, SystemID: pr.SystemID, RunnerID: pr.RunnerID, RemoteCache: pr.Cache, HostContainer: pr.Host, BuildsVolume: pr.Builds}, nil
}

// labels are put on every container, network and volume the job creates,
// so that the daemon finds and removes them with the job's host (see
// internal/labels). Keys whose value is unknown are left out rather than
// set empty.
func (r *runner) labels() map[string]string {
	l := map[string]string{
		labels.LabelJobID: strconv.FormatInt(r.p.ID, 10),
		labels.LabelRole:  labels.RoleJob,
	}
	if r.o.Job.SystemID != "" {
		l[labels.LabelSystemID] = r.o.Job.SystemID
	}
	if r.o.Job.RunnerID != "" {
		l[labels.LabelRunner] = r.o.Job.RunnerID
	}
	return l
}

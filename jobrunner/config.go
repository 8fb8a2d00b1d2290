// Package jobrunner is the inner runner behind `paas-runner
// exec-fetched-job`: on the host the executor provisioned, it runs one
// already-acquired job with GitLab Runner's docker-executor semantics and
// reports the log and the result to GitLab itself.
package jobrunner

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/BurntSushi/toml"

	"gitlab.com/paas-runner/paas-runner/job"
)

// RunnerConfig is the part of runner.toml the inner runner uses.
type RunnerConfig struct {
	Name        string       `toml:"name"`
	URL         string       `toml:"url"`
	BuildsDir   string       `toml:"builds_dir"`
	Environment []string     `toml:"environment"`
	OutputLimit int64        `toml:"output_limit"` // KB
	Docker      DockerConfig `toml:"docker"`
}

// DockerConfig is [runners.docker].
type DockerConfig struct {
	Image         string   `toml:"image"`
	PullPolicyRaw any      `toml:"pull_policy"` // a string or a list
	PullPolicy    []string `toml:"-"`
	NetworkMode   string   `toml:"network_mode"`
	Privileged    bool     `toml:"privileged"`
	Volumes       []string `toml:"volumes"`
}

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
	switch pp := rc.Docker.PullPolicyRaw.(type) {
	case string:
		rc.Docker.PullPolicy = []string{pp}
	case []any:
		for _, p := range pp {
			if s, ok := p.(string); ok {
				rc.Docker.PullPolicy = append(rc.Docker.PullPolicy, s)
			}
		}
	}
	if rc.URL == "" {
		return nil, fmt.Errorf("%s: the runner has no url", path)
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
	// RemoteCache has, by cache key, the presigned URLs of the S3 cache
	// objects (the daemon's s3cache): keys without one use local volumes.
	RemoteCache map[string]RemoteCacheURLs
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
			Cache       map[string]RemoteCacheURLs `json:"cache"`
		} `json:"paas_runner"`
	}
	_ = json.Unmarshal(raw, &extra)
	return &Job{Acquired: a, TraceOffset: extra.PaasRunner.TraceOffset, TraceCRC: extra.PaasRunner.TraceCRC, RemoteCache: extra.PaasRunner.Cache}, nil
}

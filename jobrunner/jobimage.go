package jobrunner

import (
	"fmt"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The job image's docker executor options (image: docker: platform, user),
// expanded against the job's variables like GitLab Runner.

// jobUser is the user the job container runs as: image: docker: user, or
// the image's own when unset.
func (r *runner) jobUser() string {
	return r.expanded.Expand(r.p.Image.ExecutorOpts.Docker.User)
}

// jobPlatformSpec is image: docker: platform as given (expanded).
func (r *runner) jobPlatformSpec() string {
	return strings.TrimSpace(r.expanded.Expand(r.p.Image.ExecutorOpts.Docker.Platform))
}

// jobPlatform is the platform the job container is created for; nil when
// the job sets none (the engine's). runJob validated it.
func (r *runner) jobPlatform() *ocispec.Platform {
	p, _ := parsePlatform(r.jobPlatformSpec())
	return p
}

// parsePlatform reads os[/arch[/variant]] (linux/arm64/v8), or a bare
// architecture (arm64, meaning linux/arm64); "" is nil.
func parsePlatform(s string) (*ocispec.Platform, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(strings.ToLower(s), "/")
	for _, p := range parts {
		if p == "" {
			return nil, fmt.Errorf("image: docker: platform %q: want os/arch[/variant]", s)
		}
	}
	switch len(parts) {
	case 1:
		if parts[0] == "linux" || parts[0] == "windows" {
			return &ocispec.Platform{OS: parts[0]}, nil
		}
		return &ocispec.Platform{OS: "linux", Architecture: parts[0]}, nil
	case 2:
		return &ocispec.Platform{OS: parts[0], Architecture: parts[1]}, nil
	case 3:
		return &ocispec.Platform{OS: parts[0], Architecture: parts[1], Variant: parts[2]}, nil
	}
	return nil, fmt.Errorf("image: docker: platform %q: want os/arch[/variant]", s)
}

// platformString is p as the engine's pull takes it; "" for nil.
func platformString(p *ocispec.Platform) string {
	if p == nil {
		return ""
	}
	s := p.OS
	if p.Architecture != "" {
		s += "/" + p.Architecture
	}
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

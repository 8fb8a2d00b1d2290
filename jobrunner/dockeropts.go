package jobrunner

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"strconv"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/volume"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/internal/labels"
	"gitlab.com/paas-runner/paas-runner/job"
)

// What [runners.docker] does to the containers of a job, as gitlab-runner's
// docker executor: the job's containers (script, after_script) and the
// service containers get the options below; caches' helper containers
// only move files and get none.

// jobHostConfig is the HostConfig of the job's script containers, without
// mounts and network (runScript adds them).
func jobHostConfig(d config.Docker) container.HostConfig {
	hc := container.HostConfig{
		NetworkMode: container.NetworkMode(d.NetworkMode),
		Privileged:  d.Privileged,
		CapAdd:      d.CapAdd,
		CapDrop:     d.CapDrop,
		DNS:         d.DNS,
		DNSSearch:   d.DNSSearch,
		ExtraHosts:  d.ExtraHosts,
		ShmSize:     d.ShmSize,
		Tmpfs:       d.Tmpfs,
		Sysctls:     d.Sysctls,
		Resources: container.Resources{
			Memory:            d.Memory,
			MemorySwap:        d.MemorySwap,
			MemoryReservation: d.MemoryReservation,
			NanoCPUs:          d.NanoCPUs,
			CpusetCpus:        d.CPUSetCPUs,
		},
	}
	for _, dev := range d.Devices {
		hc.Devices = append(hc.Devices, container.DeviceMapping{PathOnHost: dev.PathOnHost, PathInContainer: dev.PathInContainer, CgroupPermissions: dev.CgroupPermissions})
	}
	return hc
}

// serviceHostConfig is the HostConfig of a service container: like
// gitlab-runner, privileged (services_privileged when set, else
// privileged), DNS, extra hosts, shared memory and services_tmpfs; not the
// job's capabilities, devices, resources nor sysctls.
func serviceHostConfig(d config.Docker) container.HostConfig {
	priv := d.Privileged
	if d.ServicesPrivileged != nil {
		priv = *d.ServicesPrivileged
	}
	return container.HostConfig{
		Privileged: priv,
		DNS:        d.DNS,
		DNSSearch:  d.DNSSearch,
		ExtraHosts: d.ExtraHosts,
		ShmSize:    d.ShmSize,
		Tmpfs:      d.ServicesTmpfs,
	}
}

// labelVolumeDestination marks the volumes made for volumes = ["/dst"].
const labelVolumeDestination = "paas-runner.volume-destination"

// volumeBinds prepares [runners.docker] volumes once per job and returns
// them as binds for the job's and the services' containers, as
// gitlab-runner does: "src:/dst" is bound as written; "/dst" is a volume
// kept across the project's jobs on this runner (a protected ref gets
// its own), or one for this job only with disable_cache.
func (r *runner) volumeBinds(ctx context.Context) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.bindsReady {
		return r.binds, nil
	}
	var binds []string
	for _, spec := range r.o.Config.Docker.Volumes {
		v, err := config.ParseVolume(spec)
		if err != nil {
			return nil, err
		}
		if v.Source != "" {
			binds = append(binds, v.Bind(v.Source))
			continue
		}
		var name string
		var l map[string]string
		if r.o.Config.Docker.DisableCache {
			name = fmt.Sprintf("%s-volume-%s", r.name, shortHash(v.Destination))
			l = r.labels()
		} else {
			name = r.projectVolume(v.Destination)
			l = map[string]string{labels.LabelRole: labels.RoleCache, labelCacheProject: strconv.FormatInt(r.projectID(), 10),
				labelVolumeDestination: v.Destination}
			if r.o.Job.RunnerID != "" {
				l[labels.LabelRunner] = r.o.Job.RunnerID
			}
		}
		if _, err := r.docker.VolumeCreate(ctx, volume.CreateOptions{Name: name, Labels: l}); err != nil {
			return nil, fmt.Errorf("creating the volume for %s: %w", v.Destination, err)
		}
		if r.o.Config.Docker.DisableCache {
			r.tmpVolumes = append(r.tmpVolumes, name)
		}
		binds = append(binds, v.Bind(name))
	}
	r.binds, r.bindsReady = binds, true
	return binds, nil
}

// projectVolume names the volume kept for a volumes destination: per
// runner, project, destination, and whether the ref is protected (so that
// an unprotected branch cannot write what a protected one reads).
func (r *runner) projectVolume(dest string) string {
	prot := ""
	if r.p.GitInfo.Protected {
		prot = "-protected"
	}
	runner := ""
	if id := r.o.Job.RunnerID; id != "" {
		runner = volumeUnsafe.ReplaceAllString(id, "_") + "-"
	}
	return fmt.Sprintf("paas-runner-volume-%sp%d-%s%s", runner, r.projectID(), shortHash(r.o.Job.RunnerID+"\x00"+dest), prot)
}

func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:6])
}

// jobError is a failure with its failure_reason.
type jobError struct {
	reason string
	err    error
}

func (e *jobError) Error() string { return e.err.Error() }
func (e *jobError) Unwrap() error { return e.err }

// failureReason is err's failure_reason, or def.
func failureReason(err error, def string) string {
	var je *jobError
	if errors.As(err, &je) {
		return je.reason
	}
	return def
}

// errDisallowedImage is gitlab-runner's error for an image or service not
// in allowed_images/allowed_services (a runner_system_failure there too).
var errDisallowedImage = errors.New("disallowed image")

// checkAllowed refuses an image of the job not matching the allow-list
// (option "images" or "services"), printing the list like gitlab-runner.
// An empty list allows everything; internal images (the runner's own
// default image) are always allowed.
func (r *runner) checkAllowed(img, option string, allowed []string, internal ...string) error {
	if len(allowed) == 0 || config.MatchImage(allowed, img) {
		return nil
	}
	for _, i := range internal {
		if i == img {
			return nil
		}
	}
	r.printf("\n%sERROR: The %q image is not present on list of allowed %s:%s\n", ansiBoldRed, img, option, ansiReset)
	for _, a := range allowed {
		r.printf("- %s\n", a)
	}
	r.printf("\nPlease check runner's allowed_%s configuration: https://docs.gitlab.com/runner/configuration/advanced-configuration/\n", option)
	return &jobError{reason: job.RunnerSystemFailure, err: errDisallowedImage}
}

// prepareJobImage checks the job's image against allowed_images (the
// runner's default image is always allowed) and pulls it.
func (r *runner) prepareJobImage(ctx context.Context, img string, platform *ocispec.Platform) error {
	if r.p.Image.Name != "" {
		if err := r.checkAllowed(img, "images", r.o.Config.Docker.AllowedImages, r.expanded.Expand(r.o.Config.Docker.Image)); err != nil {
			return err
		}
	}
	return r.pullImage(ctx, img, r.p.Image.PullPolicy, platform)
}

// effectivePullPolicies are the job's policies (else the runner's, else
// always) limited to allowed_pull_policies, as gitlab-runner: none left is
// a configuration error.
func effectivePullPolicies(img string, jobPolicies []string, d config.Docker) ([]string, error) {
	policies, source := jobPolicies, "GitLab pipeline config"
	if len(policies) == 0 {
		policies, source = d.PullPolicy, "Runner config"
	}
	if len(policies) == 0 {
		policies, source = []string{"always"}, "Runner config (default)"
	}
	if len(d.AllowedPullPolicies) == 0 {
		return policies, nil
	}
	var out []string
	for _, p := range policies {
		for _, a := range d.AllowedPullPolicies {
			if p == a {
				out = append(out, p)
				break
			}
		}
	}
	if len(out) == 0 {
		return nil, &jobError{reason: job.ConfigurationError, err: fmt.Errorf("invalid pull policy for image %q: pull_policy ([%s]) defined in %s is not one of the allowed_pull_policies ([%s])",
			img, strings.Join(policies, " "), source, strings.Join(d.AllowedPullPolicies, " "))}
	}
	return out, nil
}

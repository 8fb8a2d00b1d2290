package config

import (
	"fmt"
	"math/big"
	"net/netip"
	"path"
	"regexp"
	"sort"
	"strings"

	"github.com/bmatcuk/doublestar/v4"
	units "github.com/docker/go-units"
)

// Docker is [runners.docker] as the inner runner applies it: gitlab-runner's
// key names, types and units, parsed and validated. The daemon parses it at
// start (errors name the key, keys not honoured are warnings) and the inner
// runner parses the same forwarded table with the same function.
type Docker struct {
	Image       string
	PullPolicy  []string // always, if-not-present, never; empty: always
	NetworkMode string
	// Privileged applies to the job's containers; ServicesPrivileged, when
	// set, to service containers instead of Privileged (gitlab-runner's
	// services_privileged).
	Privileged         bool
	ServicesPrivileged *bool
	// Volumes as written: "/dst" (a volume kept across jobs of the project,
	// per-job with DisableCache) or "src:/dst[:options]" (a bind mount or a
	// named volume).
	Volumes      []string
	DisableCache bool
	CapAdd       []string
	CapDrop      []string
	Devices      []Device
	DNS          []string
	DNSSearch    []string
	ExtraHosts   []string
	ShmSize      int64 // bytes
	// Memory limits in bytes, from gitlab-runner's strings ("512m", "2g").
	Memory            int64
	MemorySwap        int64
	MemoryReservation int64
	NanoCPUs          int64 // from cpus ("1.5")
	CPUSetCPUs        string
	User              string
	Tmpfs             map[string]string
	ServicesTmpfs     map[string]string
	Sysctls           map[string]string
	// Allow-lists, doublestar globs as in gitlab-runner; empty allows all.
	AllowedImages       []string
	AllowedServices     []string
	AllowedPullPolicies []string
}

// Device is one entry of devices: host path, container path, cgroup
// permissions ("/dev/kvm" is /dev/kvm:/dev/kvm:rwm, like docker run).
type Device struct {
	PathOnHost, PathInContainer, CgroupPermissions string
}

// DockerProblem is one problem with a [runners.docker] key: an error, or a
// warning (a gitlab-runner key paas-runner does not honour).
type DockerProblem struct {
	Key     string // the key under [runners.docker], such as "memory"
	Msg     string
	Warning bool
}

// Warning is something accepted that the operator should know, such as a
// gitlab-runner key that is ignored; the daemon logs each one at start.
type Warning struct {
	File string
	Line int
	Key  string
	Msg  string
}

func (w Warning) String() string {
	return (&Error{File: w.File, Line: w.Line, Key: w.Key, Msg: w.Msg}).Error()
}

// dockerIgnored are gitlab-runner's [runners.docker] keys the inner runner
// does not honour, with why when there is more to say than "not
// implemented".
var dockerIgnored = map[string]string{
	"helper_image":        "ignored: paas-runner has no helper image (the inner runner fetches sources, caches and artifacts itself through the Docker API)",
	"helper_image_flavor": "ignored: paas-runner has no helper image",
	"host":                "ignored: the inner runner uses the Docker engine of the job's host",
	"tls_cert_path":       "ignored: the inner runner uses the Docker engine of the job's host",
	"tls_verify":          "ignored: the inner runner uses the Docker engine of the job's host",
	"cache_dir":           "ignored: caches live in Docker volumes ([runners.cache] max_age bounds them)",
}

// dockerNotImplemented are the other gitlab-runner [runners.docker] keys
// that are accepted and ignored, with a warning.
var dockerNotImplemented = []string{
	"hostname", "runtime", "cgroup_parent", "cpuset_mems", "cpu_shares",
	"disable_entrypoint_overwrite", "allowed_users", "group_add", "userns_mode",
	"oom_kill_disable", "oom_score_adjust", "security_opt", "services_security_opt",
	"device_cgroup_rules", "gpus", "services_devices", "volume_keep", "volume_driver",
	"volume_driver_ops", "volumes_from", "pid_mode", "ipcmode", "mac_address", "links",
	"services", "services_limit", "service_memory", "service_memory_swap",
	"service_memory_reservation", "service_cgroup_parent", "service_slot_cgroup_template",
	"service_cpuset_cpus", "service_cpus", "service_cpu_shares", "service_gpus",
	"wait_for_services_timeout", "allowed_privileged_images", "allowed_privileged_services",
	"isolation", "container_labels", "enable_ipv6", "ulimit", "network_mtu", "log_options",
}

var pullPolicies = []string{"always", "if-not-present", "never"}

// ParseDocker reads a [runners.docker] table as decoded from TOML (string,
// bool, int64, float64, []any, map[string]any values). Problems are in key
// order; the result holds every valid value.
func ParseDocker(m map[string]any) (Docker, []DockerProblem) {
	var d Docker
	var probs []DockerProblem
	fail := func(k, msg string) { probs = append(probs, DockerProblem{Key: k, Msg: msg}) }
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	notImpl := map[string]bool{}
	for _, k := range dockerNotImplemented {
		notImpl[k] = true
	}
	for _, k := range keys {
		v := m[k]
		str := func(dst *string) bool {
			s, ok := v.(string)
			if !ok {
				fail(k, fmt.Sprintf("want a string, not %s", tomlType(v)))
				return false
			}
			*dst = s
			return true
		}
		list := func(dst *[]string) bool {
			l, ok := stringList(v)
			if !ok {
				fail(k, fmt.Sprintf("want a list of strings, not %s", tomlType(v)))
				return false
			}
			*dst = l
			return true
		}
		table := func(dst *map[string]string) bool {
			t, ok := stringTable(v)
			if !ok {
				fail(k, fmt.Sprintf("want a table of strings (key = \"value\"), not %s", tomlType(v)))
				return false
			}
			*dst = t
			return true
		}
		boolean := func(dst *bool) {
			b, ok := v.(bool)
			if !ok {
				fail(k, fmt.Sprintf("want true or false, not %s", tomlType(v)))
				return
			}
			*dst = b
		}
		memory := func(dst *int64) {
			var s string
			if !str(&s) || s == "" {
				return
			}
			n, err := units.RAMInBytes(s)
			if err != nil || n < 0 {
				fail(k, fmt.Sprintf("%q is not a size: want a number with an optional unit b, k, m or g (such as \"512m\")", s))
				return
			}
			*dst = n
		}
		switch k {
		case "image":
			str(&d.Image)
		case "network_mode":
			str(&d.NetworkMode)
		case "user":
			str(&d.User)
		case "pull_policy":
			var l []string
			if s, ok := v.(string); ok {
				l = []string{s}
			} else if !list(&l) {
				continue
			}
			for _, p := range l {
				if !oneOf(p, pullPolicies...) {
					fail(k, fmt.Sprintf("unsupported pull_policy %q (want always, if-not-present or never)", p))
				}
			}
			d.PullPolicy = l
		case "allowed_pull_policies":
			var l []string
			if list(&l) {
				for _, p := range l {
					if !oneOf(p, pullPolicies...) {
						fail(k, fmt.Sprintf("unsupported pull policy %q (want always, if-not-present or never)", p))
					}
				}
				d.AllowedPullPolicies = l
			}
		case "privileged":
			boolean(&d.Privileged)
		case "services_privileged":
			var b bool
			boolean(&b)
			if _, ok := v.(bool); ok {
				d.ServicesPrivileged = &b
			}
		case "disable_cache":
			boolean(&d.DisableCache)
		case "volumes":
			var l []string
			if list(&l) {
				for _, s := range l {
					if _, err := ParseVolume(s); err != nil {
						fail(k, err.Error())
					}
				}
				d.Volumes = l
			}
		case "cap_add":
			list(&d.CapAdd)
		case "cap_drop":
			list(&d.CapDrop)
		case "devices":
			var l []string
			if list(&l) {
				for _, s := range l {
					dev, err := ParseDevice(s)
					if err != nil {
						fail(k, err.Error())
						continue
					}
					d.Devices = append(d.Devices, dev)
				}
			}
		case "dns":
			var l []string
			if list(&l) {
				for _, s := range l {
					if _, err := netip.ParseAddr(s); err != nil {
						fail(k, fmt.Sprintf("%q is not an IP address", s))
					}
				}
				d.DNS = l
			}
		case "dns_search":
			list(&d.DNSSearch)
		case "extra_hosts":
			var l []string
			if list(&l) {
				for _, s := range l {
					name, addr, ok := strings.Cut(s, ":")
					if _, err := netip.ParseAddr(addr); !ok || name == "" || (err != nil && addr != "host-gateway") {
						fail(k, fmt.Sprintf("%q: want host:IP (or host:host-gateway)", s))
					}
				}
				d.ExtraHosts = l
			}
		case "shm_size":
			n, ok := v.(int64)
			if !ok || n < 0 {
				fail(k, "want a number of bytes (an integer, such as 268435456 for 256 MiB)")
				continue
			}
			d.ShmSize = n
		case "memory":
			memory(&d.Memory)
		case "memory_swap":
			if v == "-1" {
				d.MemorySwap = -1 // unlimited swap, as docker run
				continue
			}
			memory(&d.MemorySwap)
		case "memory_reservation":
			memory(&d.MemoryReservation)
		case "cpus":
			var s string
			if !str(&s) || s == "" {
				continue
			}
			r, ok := new(big.Rat).SetString(s)
			if !ok || r.Sign() <= 0 {
				fail(k, fmt.Sprintf("%q is not a positive number of CPUs (such as \"1.5\")", s))
				continue
			}
			nano, _ := r.Mul(r, big.NewRat(1e9, 1)).Float64()
			d.NanoCPUs = int64(nano)
		case "cpuset_cpus":
			var s string
			if str(&s) {
				if s != "" && !cpusetRe.MatchString(s) {
					fail(k, fmt.Sprintf("%q: want CPU numbers and ranges such as \"0-3,6\"", s))
					continue
				}
				d.CPUSetCPUs = s
			}
		case "tmpfs", "services_tmpfs":
			var t map[string]string
			if table(&t) {
				for p := range t {
					if !path.IsAbs(p) || path.Clean(p) == "/" {
						fail(k, fmt.Sprintf("%q: want an absolute path other than /", p))
					}
				}
				if k == "tmpfs" {
					d.Tmpfs = t
				} else {
					d.ServicesTmpfs = t
				}
			}
		case "sysctls":
			table(&d.Sysctls)
		case "allowed_images", "allowed_services":
			var l []string
			if list(&l) {
				for _, g := range l {
					if !doublestar.ValidatePattern(g) {
						fail(k, fmt.Sprintf("%q is not a valid glob pattern", g))
					}
				}
				if k == "allowed_images" {
					d.AllowedImages = l
				} else {
					d.AllowedServices = l
				}
			}
		default:
			if why, ok := dockerIgnored[k]; ok {
				probs = append(probs, DockerProblem{Key: k, Msg: why, Warning: true})
			} else if notImpl[k] {
				probs = append(probs, DockerProblem{Key: k, Msg: "a gitlab-runner key the inner runner does not implement: ignored", Warning: true})
			} else {
				fail(k, "unknown key (neither a gitlab-runner [runners.docker] key nor one of paas-runner's)")
			}
		}
	}
	return d, probs
}

var cpusetRe = regexp.MustCompile(`^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$`)

// ParseDevice reads host[:container[:permissions]] like gitlab-runner and
// docker run: the container path defaults to the host's, permissions to rwm.
func ParseDevice(s string) (Device, error) {
	parts := strings.Split(s, ":")
	if len(parts) > 3 {
		return Device{}, fmt.Errorf("device %q: too many colons (want host[:container[:permissions]])", s)
	}
	d := Device{PathOnHost: parts[0], PathInContainer: parts[0], CgroupPermissions: "rwm"}
	if len(parts) > 1 {
		d.PathInContainer = parts[1]
	}
	if len(parts) > 2 {
		d.CgroupPermissions = parts[2]
	}
	if !path.IsAbs(d.PathOnHost) || !path.IsAbs(d.PathInContainer) {
		return Device{}, fmt.Errorf("device %q: want absolute paths", s)
	}
	if d.CgroupPermissions == "" || strings.Trim(d.CgroupPermissions, "rwm") != "" {
		return Device{}, fmt.Errorf("device %q: permissions are letters among r, w and m", s)
	}
	return d, nil
}

// Volume is one entry of volumes.
type Volume struct {
	// Source is a host path or a volume name; empty for a cache volume.
	Source      string
	Destination string
	// Options such as ro, rw, z, rshared, comma separated.
	Options string
}

// Bind renders the volume for HostConfig.Binds, with source as given.
func (v Volume) Bind(source string) string {
	s := source + ":" + v.Destination
	if v.Options != "" {
		s += ":" + v.Options
	}
	return s
}

var volumeOptions = map[string]bool{"ro": true, "rw": true, "O": true, "z": true, "Z": true, "nocopy": true,
	"shared": true, "slave": true, "private": true, "rshared": true, "rslave": true, "rprivate": true}

var volumeNameRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// ParseVolume reads a volumes entry: [source:]destination[:options], the
// destination absolute (not /), the source an absolute host path or a
// volume name.
func ParseVolume(s string) (Volume, error) {
	parts := strings.Split(s, ":")
	var v Volume
	if len(parts) > 1 {
		last := parts[len(parts)-1]
		allOpts := last != ""
		for _, o := range strings.Split(last, ",") {
			if !volumeOptions[o] {
				allOpts = false
			}
		}
		if allOpts && !strings.HasPrefix(last, "/") {
			v.Options = last
			parts = parts[:len(parts)-1]
		}
	}
	switch len(parts) {
	case 1:
		v.Destination = parts[0]
	case 2:
		v.Source, v.Destination = parts[0], parts[1]
		if v.Source == "" || (!path.IsAbs(v.Source) && !volumeNameRe.MatchString(v.Source)) {
			return Volume{}, fmt.Errorf("volume %q: the source is an absolute host path or a volume name", s)
		}
	default:
		return Volume{}, fmt.Errorf("volume %q: want [source:]destination[:options]", s)
	}
	if !path.IsAbs(v.Destination) || path.Clean(v.Destination) == "/" {
		return Volume{}, fmt.Errorf("volume %q: the destination must be an absolute path other than /", s)
	}
	return v, nil
}

// MatchImage tells whether image matches one of the globs, as
// gitlab-runner's allowed_images (doublestar: * stays within a path
// segment, ** crosses them, {a,b} alternatives).
func MatchImage(globs []string, image string) bool {
	for _, g := range globs {
		if ok, _ := doublestar.Match(g, image); ok {
			return true
		}
	}
	return false
}

func stringList(v any) ([]string, bool) {
	switch l := v.(type) {
	case []string:
		return l, true
	case []any:
		out := make([]string, 0, len(l))
		for _, e := range l {
			s, ok := e.(string)
			if !ok {
				return nil, false
			}
			out = append(out, s)
		}
		return out, true
	}
	return nil, false
}

func stringTable(v any) (map[string]string, bool) {
	switch t := v.(type) {
	case map[string]string:
		return t, true
	case map[string]any:
		out := make(map[string]string, len(t))
		for k, e := range t {
			s, ok := e.(string)
			if !ok {
				return nil, false
			}
			out[k] = s
		}
		return out, true
	}
	return nil, false
}

func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case int64, int:
		return "an integer"
	case float64:
		return "a float"
	case []any, []string:
		return "a list"
	case map[string]any:
		return "a table"
	}
	return fmt.Sprintf("%T", v)
}

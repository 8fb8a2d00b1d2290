package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

func parseDockerTOML(t *testing.T, body string) (Docker, []DockerProblem) {
	t.Helper()
	var m map[string]any
	if _, err := toml.Decode(body, &m); err != nil {
		t.Fatal(err)
	}
	return ParseDocker(m)
}

// Every honoured key, in gitlab-runner's types and units.
func TestParseDockerHonouredKeys(t *testing.T) {
	d, probs := parseDockerTOML(t, `
image = "alpine:3"
pull_policy = "if-not-present"
network_mode = "host"
privileged = true
services_privileged = false
volumes = ["/cache", "/srv/data:/data:ro", "named:/named"]
disable_cache = true
cap_add = ["NET_ADMIN"]
cap_drop = ["CHOWN"]
devices = ["/dev/null:/dev/xnull:r", "/dev/zero"]
dns = ["1.1.1.1", "2606:4700::1111"]
dns_search = ["example.com"]
extra_hosts = ["db:10.0.0.5", "gw:host-gateway"]
shm_size = 268435456
memory = "128m"
memory_swap = "1g"
memory_reservation = "64M"
cpus = "1.5"
cpuset_cpus = "0-1,3"
user = "1000:1000"
tmpfs = { "/scratch" = "rw,size=64m" }
services_tmpfs = { "/var/lib/mysql" = "rw" }
sysctls = { "net.ipv4.ip_forward" = "1" }
allowed_images = ["ruby:*", "registry.example.com/**"]
allowed_services = ["postgres:*"]
allowed_pull_policies = ["if-not-present", "always"]
`)
	if len(probs) != 0 {
		t.Fatalf("problems: %+v", probs)
	}
	if d.Image != "alpine:3" || strings.Join(d.PullPolicy, ",") != "if-not-present" || d.NetworkMode != "host" || !d.Privileged ||
		d.ServicesPrivileged == nil || *d.ServicesPrivileged || len(d.Volumes) != 3 || !d.DisableCache {
		t.Errorf("%+v", d)
	}
	if d.Memory != 128<<20 || d.MemorySwap != 1<<30 || d.MemoryReservation != 64<<20 || d.NanoCPUs != 1_500_000_000 || d.ShmSize != 256<<20 {
		t.Errorf("units: memory %d swap %d reservation %d nanocpus %d shm %d", d.Memory, d.MemorySwap, d.MemoryReservation, d.NanoCPUs, d.ShmSize)
	}
	if len(d.Devices) != 2 || d.Devices[0] != (Device{"/dev/null", "/dev/xnull", "r"}) || d.Devices[1] != (Device{"/dev/zero", "/dev/zero", "rwm"}) {
		t.Errorf("devices %+v", d.Devices)
	}
	if d.Tmpfs["/scratch"] != "rw,size=64m" || d.ServicesTmpfs["/var/lib/mysql"] != "rw" || d.Sysctls["net.ipv4.ip_forward"] != "1" {
		t.Errorf("tables %+v %+v %+v", d.Tmpfs, d.ServicesTmpfs, d.Sysctls)
	}
	if d.CPUSetCPUs != "0-1,3" || d.User != "1000:1000" || len(d.DNS) != 2 || len(d.ExtraHosts) != 2 || len(d.CapAdd) != 1 || len(d.CapDrop) != 1 {
		t.Errorf("%+v", d)
	}
	if len(d.AllowedImages) != 2 || len(d.AllowedServices) != 1 || len(d.AllowedPullPolicies) != 2 {
		t.Errorf("allow lists %+v", d)
	}
}

func TestParseDockerProblems(t *testing.T) {
	cases := map[string]struct {
		body, key, msg string
		warning        bool
	}{
		"memory unit":      {`memory = "12x"`, "memory", `"12x" is not a size`, false},
		"memory type":      {`memory = 512`, "memory", "want a string, not an integer", false},
		"cpus":             {`cpus = "two"`, "cpus", "not a positive number of CPUs", false},
		"cpus zero":        {`cpus = "0"`, "cpus", "not a positive number of CPUs", false},
		"cpuset":           {`cpuset_cpus = "a-b"`, "cpuset_cpus", "CPU numbers and ranges", false},
		"shm string":       {`shm_size = "64m"`, "shm_size", "want a number of bytes", false},
		"privileged":       {`privileged = "yes"`, "privileged", "want true or false", false},
		"pull policy":      {`pull_policy = ["sometimes"]`, "pull_policy", `unsupported pull_policy "sometimes"`, false},
		"allowed policies": {`allowed_pull_policies = ["often"]`, "allowed_pull_policies", `unsupported pull policy "often"`, false},
		"dns":              {`dns = ["dns.example"]`, "dns", "not an IP address", false},
		"extra host":       {`extra_hosts = ["db"]`, "extra_hosts", "want host:IP", false},
		"device":           {`devices = ["/a:/b:rw:x"]`, "devices", "too many colons", false},
		"device perms":     {`devices = ["/dev/a:/dev/b:q"]`, "devices", "permissions", false},
		"volume root":      {`volumes = ["/"]`, "volumes", "absolute path other than /", false},
		"volume relative":  {`volumes = ["cache"]`, "volumes", "absolute path", false},
		"tmpfs":            {`tmpfs = { "tmp" = "rw" }`, "tmpfs", "absolute path", false},
		"sysctls type":     {`sysctls = ["a=b"]`, "sysctls", "want a table of strings", false},
		"glob":             {`allowed_images = ["ruby:[*"]`, "allowed_images", "not a valid glob", false},
		"typo":             {`privilegd = true`, "privilegd", "unknown key", false},
		"helper image":     {`helper_image = "x"`, "helper_image", "no helper image", true},
		"not implemented":  {`ulimit = { nofile = "1024" }`, "ulimit", "does not implement", true},
		"services":         {`services_limit = 2`, "services_limit", "does not implement", true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, probs := parseDockerTOML(t, tc.body)
			if len(probs) != 1 || probs[0].Key != tc.key || !strings.Contains(probs[0].Msg, tc.msg) || probs[0].Warning != tc.warning {
				t.Fatalf("want one problem %s %q (warning %v), got %+v", tc.key, tc.msg, tc.warning, probs)
			}
		})
	}
}

func TestParseVolume(t *testing.T) {
	for s, want := range map[string]Volume{
		"/cache":           {Destination: "/cache"},
		"/srv:/data":       {Source: "/srv", Destination: "/data"},
		"/srv:/data:ro":    {Source: "/srv", Destination: "/data", Options: "ro"},
		"named:/data:rw,z": {Source: "named", Destination: "/data", Options: "rw,z"},
		"/cache:ro":        {Destination: "/cache", Options: "ro"},
		"/var/run/docker.sock:/var/run/docker.sock": {Source: "/var/run/docker.sock", Destination: "/var/run/docker.sock"},
	} {
		got, err := ParseVolume(s)
		if err != nil || got != want {
			t.Errorf("%q: %+v %v, want %+v", s, got, err, want)
		}
	}
}

func TestMatchImage(t *testing.T) {
	globs := []string{"ruby:*", "registry.example.com/**", "alpine"}
	for img, want := range map[string]bool{
		"ruby:3.3": true, "ruby": false, "registry.example.com/a/b:1": true, "alpine": true,
		"alpine:3": false, "evil/ruby:3": false, "registry.example.com.evil/x": false,
	} {
		if MatchImage(globs, img) != want {
			t.Errorf("%s: want %v", img, want)
		}
	}
}

// The daemon validates [runners.docker] at start: invalid values and
// typos are errors naming the key and its line; gitlab-runner keys the
// inner runner does not honour are warnings naming them.
func TestDaemonDockerSection(t *testing.T) {
	body := minimal + `  [runners.docker]
  image = "alpine"
  memory = "lots"
  helper_image = "registry.example/helper:1"
  privilegd = true
  services_limit = 3
`
	p := write(t, body)
	_, err := Load(p, execs)
	var es Errors
	if !errors.As(err, &es) || len(es) != 2 {
		t.Fatalf("want 2 errors, got %v", err)
	}
	for _, want := range []string{p + `:8: runners[0].docker.memory: "lots" is not a size`, p + ":10: runners[0].docker.privilegd: unknown key"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
	ok := strings.Replace(strings.Replace(body, "  memory = \"lots\"\n", "", 1), "  privilegd = true\n", "", 1)
	c, err := Load(write(t, ok), execs)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 2 || c.Warnings[0].Key != "runners[0].docker.helper_image" || c.Warnings[0].Line != 8 ||
		c.Warnings[1].Key != "runners[0].docker.services_limit" || !strings.Contains(c.Warnings[0].String(), "no helper image") {
		t.Fatalf("warnings %+v", c.Warnings)
	}
}

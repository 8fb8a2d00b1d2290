package jobrunner

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/internal/labels"
	"gitlab.com/paas-runner/paas-runner/job"
)

// parseDocker is [runners.docker] from TOML, through the parser the inner
// runner uses; any problem fails the test.
func parseDocker(t *testing.T, body string) config.Docker {
	t.Helper()
	var m map[string]any
	if _, err := toml.Decode(body, &m); err != nil {
		t.Fatal(err)
	}
	d, probs := config.ParseDocker(m)
	for _, p := range probs {
		if !p.Warning {
			t.Fatalf("[runners.docker]: %+v", probs)
		}
	}
	return d
}

func withDocker(t *testing.T, body string) func(*RunnerConfig) {
	d := parseDocker(t, body)
	return func(rc *RunnerConfig) { rc.Docker = d }
}

func TestLoadConfigDocker(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "runner.toml")
	os.WriteFile(p, []byte("[[runners]]\nurl = \"http://g\"\n  [runners.docker]\n  memory = \"1g\"\n  pull_policy = \"never\"\n  helper_image = \"x\"\n"), 0o600)
	rc, err := LoadConfig(p)
	if err != nil || rc.Docker.Memory != 1<<30 || strings.Join(rc.Docker.PullPolicy, ",") != "never" {
		t.Fatalf("%+v %v", rc, err)
	}
	os.WriteFile(p, []byte("[[runners]]\nurl = \"http://g\"\n  [runners.docker]\n  memory = \"much\"\n"), 0o600)
	if _, err := LoadConfig(p); err == nil || !strings.Contains(err.Error(), "runners.docker.memory") {
		t.Fatalf("want an error naming the key, got %v", err)
	}
}

// Each [runners.docker] key lands in the HostConfig field gitlab-runner
// puts it in, for the job's containers and for service containers.
func TestHostConfigFromDockerKeys(t *testing.T) {
	cases := []struct {
		key, body   string
		job, svc    func(container.HostConfig) any
		wantJob     any
		wantService any // nil: the key does not apply to services
	}{
		{"privileged", `privileged = true`, func(h container.HostConfig) any { return h.Privileged }, func(h container.HostConfig) any { return h.Privileged }, true, true},
		{"services_privileged", "privileged = true\nservices_privileged = false", func(h container.HostConfig) any { return h.Privileged }, func(h container.HostConfig) any { return h.Privileged }, true, false},
		{"cap_add", `cap_add = ["NET_ADMIN"]`, func(h container.HostConfig) any { return []string(h.CapAdd) }, func(h container.HostConfig) any { return []string(h.CapAdd) }, []string{"NET_ADMIN"}, []string(nil)},
		{"cap_drop", `cap_drop = ["CHOWN"]`, func(h container.HostConfig) any { return []string(h.CapDrop) }, nil, []string{"CHOWN"}, nil},
		{"devices", `devices = ["/dev/null:/dev/xnull:r"]`, func(h container.HostConfig) any { return h.Devices }, nil, []container.DeviceMapping{{PathOnHost: "/dev/null", PathInContainer: "/dev/xnull", CgroupPermissions: "r"}}, nil},
		{"dns", `dns = ["10.0.0.53"]`, func(h container.HostConfig) any { return h.DNS }, func(h container.HostConfig) any { return h.DNS }, []string{"10.0.0.53"}, []string{"10.0.0.53"}},
		{"dns_search", `dns_search = ["corp.example"]`, func(h container.HostConfig) any { return h.DNSSearch }, func(h container.HostConfig) any { return h.DNSSearch }, []string{"corp.example"}, []string{"corp.example"}},
		{"extra_hosts", `extra_hosts = ["db:10.1.2.3"]`, func(h container.HostConfig) any { return h.ExtraHosts }, func(h container.HostConfig) any { return h.ExtraHosts }, []string{"db:10.1.2.3"}, []string{"db:10.1.2.3"}},
		{"shm_size", `shm_size = 67108864`, func(h container.HostConfig) any { return h.ShmSize }, func(h container.HostConfig) any { return h.ShmSize }, int64(64 << 20), int64(64 << 20)},
		{"memory", `memory = "256m"`, func(h container.HostConfig) any { return h.Memory }, func(h container.HostConfig) any { return h.Memory }, int64(256 << 20), int64(0)},
		{"memory_swap", `memory_swap = "1g"`, func(h container.HostConfig) any { return h.MemorySwap }, nil, int64(1 << 30), nil},
		{"memory_reservation", `memory_reservation = "128k"`, func(h container.HostConfig) any { return h.MemoryReservation }, nil, int64(128 << 10), nil},
		{"cpus", `cpus = "1.5"`, func(h container.HostConfig) any { return h.NanoCPUs }, func(h container.HostConfig) any { return h.NanoCPUs }, int64(1_500_000_000), int64(0)},
		{"cpuset_cpus", `cpuset_cpus = "0"`, func(h container.HostConfig) any { return h.CpusetCpus }, nil, "0", nil},
		{"tmpfs", `tmpfs = { "/scratch" = "rw" }`, func(h container.HostConfig) any { return h.Tmpfs }, func(h container.HostConfig) any { return h.Tmpfs }, map[string]string{"/scratch": "rw"}, map[string]string(nil)},
		{"services_tmpfs", `services_tmpfs = { "/data" = "rw" }`, func(h container.HostConfig) any { return h.Tmpfs }, func(h container.HostConfig) any { return h.Tmpfs }, map[string]string(nil), map[string]string{"/data": "rw"}},
		{"sysctls", `sysctls = { "net.ipv4.ip_unprivileged_port_start" = "0" }`, func(h container.HostConfig) any { return h.Sysctls }, nil, map[string]string{"net.ipv4.ip_unprivileged_port_start": "0"}, nil},
		{"network_mode", `network_mode = "host"`, func(h container.HostConfig) any { return string(h.NetworkMode) }, nil, "host", nil},
	}
	for _, tc := range cases {
		t.Run(tc.key, func(t *testing.T) {
			d := parseDocker(t, tc.body)
			if got := tc.job(jobHostConfig(d)); !reflect.DeepEqual(got, tc.wantJob) {
				t.Errorf("job container: %#v, want %#v", got, tc.wantJob)
			}
			if tc.svc != nil {
				if got := tc.svc(serviceHostConfig(d)); !reflect.DeepEqual(got, tc.wantService) {
					t.Errorf("service container: %#v, want %#v", got, tc.wantService)
				}
			}
		})
	}
}

// Against the engine: a job with the options set, inspected while its
// script runs (privileged apart: this engine cannot start privileged
// containers, see TestServicesPrivileged). The service container has what
// applies to services, the job's container the rest, and the script sees the bind volume, the tmpfs, the extra host, the device and
// the /cache-style volume.
func TestDockerOptionsOnContainers(t *testing.T) {
	if cli == nil {
		t.Skip("no Docker engine")
	}
	hostDir := t.TempDir()
	os.Chmod(hostDir, 0o755)
	os.WriteFile(filepath.Join(hostDir, "hostfile"), []byte("from-the-host\n"), 0o644)
	dest := fmt.Sprintf("/cache%d", time.Now().UnixNano())
	t.Cleanup(func() { removeVolumesFor(t, dest) })
	d := parseDocker(t, fmt.Sprintf(`
volumes = [%q, %q]
cap_add = ["NET_ADMIN"]
cap_drop = ["MKNOD"]
devices = ["/dev/null:/dev/xnull:rwm"]
dns = ["10.0.0.53"]
dns_search = ["corp.example"]
extra_hosts = ["db.example:10.1.2.3"]
shm_size = 67108864
memory = "256m"
memory_swap = "512m"
memory_reservation = "128m"
cpuset_cpus = "0"
user = "0:0"
tmpfs = { "/scratch" = "rw,size=16m" }
services_tmpfs = { "/svc-scratch" = "rw" }
sysctls = { "net.ipv4.ip_unprivileged_port_start" = "0" }
helper_image = "ignored"
`, hostDir+":/hostdata:ro", dest))
	type seen struct {
		role string
		cfg  *container.Config
		hc   *container.HostConfig
	}
	var mu sync.Mutex
	var got []seen
	j := runJob(t, jobSpec{
		script: []string{"cat /hostdata/hostfile", "grep ' /scratch tmpfs' /proc/mounts", "grep db.example /etc/hosts",
			"test -c /dev/xnull && echo device-ok", "cat /proc/sys/net/ipv4/ip_unprivileged_port_start",
			"echo kept > " + dest + "/marker", "echo started", "sleep 120"},
		config: func(rc *RunnerConfig) { rc.Docker = d },
		setup: func(gl *coordinatortest.Server, q *coordinatortest.Job) {
			q.Payload["services"] = []map[string]any{{"name": jobImage, "alias": "dind", "entrypoint": []string{"/bin/sh", "-c"},
				"command": []string{"sleep 300"}, "pull_policy": []string{"if-not-present"}}}
		},
		during: func(gl *coordinatortest.Server, id int64) {
			defer gl.ForceCancel(id)
			gl.WaitFor(time.Minute, "the script to start", func(s *coordinatortest.Server) bool { return s.TraceContains(id, "started\n") })
			ctx := context.Background()
			f := filters.NewArgs(filters.Arg("label", fmt.Sprintf("%s=%d", labels.LabelJobID, id)))
			cs, _ := cli.ContainerList(ctx, container.ListOptions{Filters: f})
			for _, c := range cs {
				info, err := cli.ContainerInspect(ctx, c.ID)
				if err != nil {
					continue
				}
				role := "job"
				if strings.Contains(info.Name, "-service-") {
					role = "service"
				}
				mu.Lock()
				got = append(got, seen{role, info.Config, info.HostConfig})
				mu.Unlock()
			}
		},
	})
	tr := string(j.Trace)
	for _, want := range []string{"from-the-host", " /scratch tmpfs", "10.1.2.3", "device-ok", "\n0\n"} {
		if !strings.Contains(tr, want) {
			t.Errorf("the script did not see %q:\n%s", want, tr)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	var job, svc *seen
	for i := range got {
		switch got[i].role {
		case "job":
			job = &got[i]
		case "service":
			svc = &got[i]
		}
	}
	if job == nil || svc == nil {
		t.Fatalf("found %d containers, want the job's and the service's\n%s", len(got), tr)
	}
	if !reflect.DeepEqual(svc.hc.Tmpfs, map[string]string{"/svc-scratch": "rw"}) || !reflect.DeepEqual(svc.hc.ExtraHosts, []string{"db.example:10.1.2.3"}) {
		t.Errorf("service HostConfig: privileged %v tmpfs %v extra hosts %v", svc.hc.Privileged, svc.hc.Tmpfs, svc.hc.ExtraHosts)
	}
	if len(svc.hc.Binds) != 2 {
		t.Errorf("service binds %v", svc.hc.Binds)
	}
	h := job.hc
	checks := map[string][2]any{
		"CapAdd":            {caps(h.CapAdd), []string{"NET_ADMIN"}},
		"CapDrop":           {caps(h.CapDrop), []string{"MKNOD"}},
		"Devices":           {h.Devices, []container.DeviceMapping{{PathOnHost: "/dev/null", PathInContainer: "/dev/xnull", CgroupPermissions: "rwm"}}},
		"DNS":               {h.DNS, []string{"10.0.0.53"}},
		"DNSSearch":         {h.DNSSearch, []string{"corp.example"}},
		"ShmSize":           {h.ShmSize, int64(64 << 20)},
		"Memory":            {h.Memory, int64(256 << 20)},
		"MemorySwap":        {h.MemorySwap, int64(512 << 20)},
		"MemoryReservation": {h.MemoryReservation, int64(128 << 20)},
		"CpusetCpus":        {h.CpusetCpus, "0"},
		"Tmpfs":             {h.Tmpfs, map[string]string{"/scratch": "rw,size=16m"}},
		"Sysctls":           {h.Sysctls, map[string]string{"net.ipv4.ip_unprivileged_port_start": "0"}},
		"User":              {job.cfg.User, "0:0"},
	}
	for name, c := range checks {
		if !reflect.DeepEqual(c[0], c[1]) {
			t.Errorf("job container %s = %#v, want %#v", name, c[0], c[1])
		}
	}
	if len(h.Binds) != 2 || h.Binds[0] != hostDir+":/hostdata:ro" || !strings.HasSuffix(h.Binds[1], ":"+dest) {
		t.Errorf("job binds %v", h.Binds)
	}

	// the /cache-style volume outlives the job: the next job of the
	// project reads what this one wrote; with disable_cache a job gets an
	// empty one of its own, removed with it (runJob checks nothing is left)
	next := runJob(t, jobSpec{script: []string{"cat " + dest + "/marker"}, config: withDocker(t, fmt.Sprintf("volumes = [%q]", dest))})
	if next.Status != "success" || !strings.Contains(string(next.Trace), "\nkept\n") {
		t.Errorf("the volume was not kept: %s\n%s", next.Status, next.Trace)
	}
	fresh := runJob(t, jobSpec{script: []string{"test ! -e " + dest + "/marker", "touch " + dest + "/x"},
		config: withDocker(t, fmt.Sprintf("volumes = [%q]\ndisable_cache = true", dest))})
	if fresh.Status != "success" {
		t.Errorf("disable_cache: %s\n%s", fresh.Status, fresh.Trace)
	}
}

// caps without the CAP_ prefix the engine adds.
func caps(l []string) []string {
	var out []string
	for _, c := range l {
		out = append(out, strings.TrimPrefix(c, "CAP_"))
	}
	return out
}

// removeVolumesFor removes the kept volumes of a test's volumes destination.
func removeVolumesFor(t *testing.T, dest string) {
	if cli == nil {
		return
	}
	f := filters.NewArgs(filters.Arg("label", labelVolumeDestination+"="+dest))
	vs, _ := cli.VolumeList(context.Background(), volume.ListOptions{Filters: f})
	for _, v := range vs.Volumes {
		cli.VolumeRemove(context.Background(), v.Name, true)
	}
}

// services: [docker:dind] needs a privileged service container: with
// privileged = true the engine creates service containers privileged like
// the job's (services_privileged overrides). Inspected as created: starting
// a privileged container needs an engine that may grant every capability.
func TestServicesPrivileged(t *testing.T) {
	if cli == nil {
		t.Skip("no Docker engine")
	}
	for _, tc := range []struct {
		body string
		want bool
	}{{"privileged = true", true}, {"privileged = true\nservices_privileged = false", false}, {"services_privileged = true", true}, {"", false}} {
		t.Run(tc.body, func(t *testing.T) {
			gl := coordinatortest.New(t)
			c, _ := coordinator.New(coordinator.Config{URL: gl.URL, Token: "glrt-x"})
			p := &job.Payload{ID: 424242, Services: []job.Service{{Image: job.Image{Name: jobImage, Alias: "dind", Entrypoint: []string{"/bin/sh", "-c"},
				Command: []string{"sleep 300"}, PullPolicy: []string{"if-not-present"}}}}}
			r := &runner{o: Options{Config: &RunnerConfig{Docker: parseDocker(t, tc.body)}, Job: &Job{Acquired: &job.Acquired{ID: p.ID, Payload: p}, RunnerID: testRunnerID}},
				p: p, docker: cli, name: "paas-job-privtest-" + randomSuffix(), log: zap.NewNop(),
				trace: NewTrace(c, p.ID, "tok", 0, nil, nil, nil, 1<<20, time.Second, func(string) {})}
			defer r.cleanup()
			_ = r.startServices(context.Background()) // starting fails where the engine cannot grant privileges
			r.mu.Lock()
			created := append([]string(nil), r.created...)
			r.mu.Unlock()
			if len(created) != 1 {
				t.Fatalf("created %v", created)
			}
			info, err := cli.ContainerInspect(context.Background(), created[0])
			if err != nil {
				t.Fatal(err)
			}
			if info.HostConfig.Privileged != tc.want {
				t.Errorf("service container privileged = %v, want %v", info.HostConfig.Privileged, tc.want)
			}
		})
	}
}

func TestAllowedImages(t *testing.T) {
	j := runJob(t, jobSpec{script: []string{"echo never"}, config: withDocker(t, `allowed_images = ["ruby:*", "registry.example.com/**"]`)})
	tr := string(j.Trace)
	if j.Status != "failed" || j.FailureReason != "runner_system_failure" || strings.Contains(tr, "\nnever") {
		t.Fatalf("%s %s\n%s", j.Status, j.FailureReason, tr)
	}
	for _, want := range []string{fmt.Sprintf("The %q image is not present on list of allowed images:", jobImage), "- ruby:*\n", "- registry.example.com/**\n", "disallowed image"} {
		if !strings.Contains(tr, want) {
			t.Errorf("log lacks %q:\n%s", want, tr)
		}
	}
	// the pattern that matches lets it run
	ok := runJob(t, jobSpec{script: []string{"echo allowed"}, config: withDocker(t, `allowed_images = ["paas-runner-test-busybox:*"]`)})
	if ok.Status != "success" {
		t.Fatalf("%s\n%s", ok.Status, ok.Trace)
	}
}

func TestAllowedServices(t *testing.T) {
	j := runJob(t, jobSpec{script: []string{"echo never"}, config: withDocker(t, `allowed_services = ["postgres:*"]`),
		setup: func(gl *coordinatortest.Server, q *coordinatortest.Job) {
			q.Payload["services"] = []map[string]any{{"name": jobImage, "pull_policy": []string{"if-not-present"}}}
		}})
	if j.Status != "failed" || j.FailureReason != "runner_system_failure" || !strings.Contains(string(j.Trace), "not present on list of allowed services") {
		t.Fatalf("%s %s\n%s", j.Status, j.FailureReason, j.Trace)
	}
}

func TestAllowedPullPolicies(t *testing.T) {
	// the test job asks for if-not-present
	j := runJob(t, jobSpec{script: []string{"echo never"}, config: withDocker(t, `allowed_pull_policies = ["always"]`)})
	want := fmt.Sprintf("invalid pull policy for image %q: pull_policy ([if-not-present]) defined in GitLab pipeline config is not one of the allowed_pull_policies ([always])", jobImage)
	if j.Status != "failed" || !strings.Contains(string(j.Trace), want) {
		t.Fatalf("%s %s\n%s", j.Status, j.FailureReason, j.Trace)
	}
	d := parseDocker(t, "pull_policy = [\"always\", \"if-not-present\"]\nallowed_pull_policies = [\"if-not-present\", \"never\"]")
	if got, err := effectivePullPolicies("x", nil, d); err != nil || strings.Join(got, ",") != "if-not-present" {
		t.Errorf("runner policies limited to the allowed ones: %v %v", got, err)
	}
	if _, err := effectivePullPolicies("x", nil, parseDocker(t, `allowed_pull_policies = ["never"]`)); failureReason(err, "") != job.ConfigurationError ||
		!strings.Contains(err.Error(), "defined in Runner config (default)") {
		t.Errorf("default always, not allowed: %v", err)
	}
}

// Which credentials go with which image: the registry host normalised
// (Docker Hub's three names, case, ports), the longest registry path
// containing the image, DOCKER_AUTH_CONFIG before the payload's.
func TestCredentialsForImage(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	dac := fmt.Sprintf(`{"auths": {
		"https://index.docker.io/v1/": {"auth": %q},
		"Registry.Example.com:5000": {"username": "port-user", "password": "p"},
		"registry.example.com/team": {"auth": %q},
		"gitlab.example.com:5050": {"auth": %q}
	}}`, b64("hub-user:hub-pass"), b64("team-user:t"), b64("dac-user:x"))
	creds, warns := registryCreds(dac, []job.Credentials{
		{Type: "registry", URL: "gitlab.example.com:5050", Username: "gitlab-ci-token", Password: "job-token"},
		{Type: "registry", URL: "registry.gitlab.example", Username: "gitlab-ci-token", Password: "job-token"},
		{Type: "other", URL: "elsewhere.example", Username: "nope"},
	})
	if len(warns) != 0 {
		t.Fatalf("warnings %v", warns)
	}
	for img, want := range map[string]string{
		"alpine":                                     "hub-user",
		"alpine:3.20":                                "hub-user",
		"library/alpine@sha256:0123":                 "hub-user",
		"docker.io/library/alpine":                   "hub-user",
		"index.docker.io/library/alpine:3":           "hub-user",
		"registry-1.docker.io/library/alpine":        "hub-user",
		"registry.example.com:5000/x/y:1":            "port-user",
		"REGISTRY.example.com:5000/x":                "port-user",
		"registry.example.com/team/app:2":            "team-user",
		"registry.example.com/other/app":             "",
		"registry.example.com/teamx/app":             "",
		"gitlab.example.com:5050/group/project:tag":  "dac-user", // DOCKER_AUTH_CONFIG first
		"registry.gitlab.example/group/project:main": "gitlab-ci-token",
		"registry.gitlab.example:443/group/project":  "",
		"elsewhere.example/x":                        "",
		"localhost:5000/x":                           "",
	} {
		c := credsForImage(img, creds)
		got := ""
		if c != nil {
			got = c.auth.Username
		}
		if got != want {
			t.Errorf("%s: credentials of %q, want %q", img, got, want)
		}
	}
	if _, warns := registryCreds(`{"credsStore": "desktop"}`, nil); len(warns) != 1 || !strings.Contains(warns[0], "credential helpers") {
		t.Errorf("credential store: %v", warns)
	}
	if _, warns := registryCreds(`not json`, nil); len(warns) != 1 || !strings.Contains(warns[0], "$DOCKER_AUTH_CONFIG") {
		t.Errorf("bad DOCKER_AUTH_CONFIG: %v", warns)
	}
}

// fakePuller is the image side of the Docker API: no image is present;
// each pull's RegistryAuth is recorded.
type fakePuller struct{ auths map[string]string }

func (f *fakePuller) ImageInspect(context.Context, string, ...client.ImageInspectOption) (image.InspectResponse, error) {
	return image.InspectResponse{}, errors.New("no such image")
}

func (f *fakePuller) ImagePull(_ context.Context, ref string, o image.PullOptions) (io.ReadCloser, error) {
	f.auths[ref] = o.RegistryAuth
	return io.NopCloser(strings.NewReader("{}")), nil
}

// The chosen credentials reach ImagePull's RegistryAuth; DOCKER_AUTH_CONFIG
// is read from the job's variables (which include the runner's
// environment, the job's value winning).
func TestPullSendsChosenAuth(t *testing.T) {
	dac := func(user string) string {
		return fmt.Sprintf(`{"auths": {"registry.example.com": {"auth": %q}}}`, base64.StdEncoding.EncodeToString([]byte(user+":secret")))
	}
	r := &runner{
		o:        Options{Config: &RunnerConfig{Docker: parseDocker(t, `pull_policy = "always"`)}},
		p:        &job.Payload{Credentials: []job.Credentials{{Type: "registry", URL: "registry.gitlab.example", Username: "gitlab-ci-token", Password: "tok"}}},
		expanded: job.Variables{{Key: "DOCKER_AUTH_CONFIG", Value: dac("from-runner-env")}, {Key: "DOCKER_AUTH_CONFIG", Value: dac("from-job")}},
	}
	fake := &fakePuller{auths: map[string]string{}}
	var out bytes.Buffer
	for _, img := range []string{"registry.example.com/app:1", "registry.gitlab.example/g/p:2", "alpine:3"} {
		if err := r.pullImageWith(context.Background(), fake, &out, img, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	decode := func(s string) registry.AuthConfig {
		var a registry.AuthConfig
		raw, err := base64.URLEncoding.DecodeString(s)
		if err != nil {
			t.Fatalf("RegistryAuth %q: %v", s, err)
		}
		json.Unmarshal(raw, &a)
		return a
	}
	if a := decode(fake.auths["registry.example.com/app:1"]); a.Username != "from-job" || a.Password != "secret" || a.ServerAddress != "registry.example.com" {
		t.Errorf("DOCKER_AUTH_CONFIG: %+v", a)
	}
	if a := decode(fake.auths["registry.gitlab.example/g/p:2"]); a.Username != "gitlab-ci-token" || a.Password != "tok" {
		t.Errorf("payload credentials: %+v", a)
	}
	if fake.auths["alpine:3"] != "" {
		t.Errorf("Docker Hub got credentials: %q", fake.auths["alpine:3"])
	}
	if !strings.Contains(out.String(), "Authenticating with credentials from $DOCKER_AUTH_CONFIG") ||
		!strings.Contains(out.String(), "Authenticating with credentials from job payload (GitLab Registry)") {
		t.Errorf("log:\n%s", out.String())
	}
}

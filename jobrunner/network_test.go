package jobrunner

import (
	"testing"

	"github.com/docker/docker/api/types/container"

	"gitlab.com/paas-runner/paas-runner/config"
)

// Which network a script container gets (jobNetwork); the real engine's
// side is executors/localdocker's TestJobSharesTheHostNetwork.
func TestJobNetwork(t *testing.T) {
	for _, tc := range []struct {
		name    string
		host    string // job.json's host_container
		network string // the job's own network (services)
		docker  config.Docker
		want    string
	}{
		{"the host's namespace", "paas-job-r-1", "", config.Docker{}, "container:paas-job-r-1"},
		{"services: the job's network", "paas-job-r-1", "net-1", config.Docker{}, "net-1"},
		{"services win over network_mode", "paas-job-r-1", "net-1", config.Docker{NetworkMode: "host"}, "net-1"},
		{"network_mode as set", "paas-job-r-1", "", config.Docker{NetworkMode: "bridge"}, "bridge"},
		{"not in a container of this engine", "", "", config.Docker{}, ""},
		{"dns", "paas-job-r-1", "", config.Docker{DNS: []string{"10.0.0.53"}}, ""},
		{"dns_search", "paas-job-r-1", "", config.Docker{DNSSearch: []string{"corp"}}, ""},
		{"extra_hosts", "paas-job-r-1", "", config.Docker{ExtraHosts: []string{"db:10.0.0.1"}}, ""},
		{"a net.* sysctl", "paas-job-r-1", "", config.Docker{Sysctls: map[string]string{"net.ipv4.ip_forward": "1"}}, ""},
		{"other sysctls", "paas-job-r-1", "", config.Docker{Sysctls: map[string]string{"kernel.msgmax": "65536"}}, "container:paas-job-r-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &runner{network: tc.network, o: Options{Job: &Job{HostContainer: tc.host}, Config: &RunnerConfig{Docker: tc.docker}}}
			hc := jobHostConfig(tc.docker)
			r.jobNetwork(&hc)
			if got := string(hc.NetworkMode); got != tc.want {
				t.Errorf("network %q, want %q", got, tc.want)
			}
		})
	}
	var nilJob runner
	nilJob.o.Config = &RunnerConfig{}
	hc := container.HostConfig{}
	nilJob.jobNetwork(&hc)
	if hc.NetworkMode != "" {
		t.Errorf("no job.json: network %q", hc.NetworkMode)
	}
}

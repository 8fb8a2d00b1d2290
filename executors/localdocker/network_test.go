package localdocker

import (
	"os"
	"strings"
	"testing"
)

// A job's script container joins its host container's network namespace
// unless [runners.docker] network_mode says otherwise. Docker gives a
// container joining another's namespace that container's hostname, so
// with hosts on the machine's network the script's `hostname` is the
// machine's; with network_mode = "bridge" it is its own container's.
func TestJobSharesTheHostNetwork(t *testing.T) {
	needDocker(t)
	machine, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	jobImage := busyboxImage(t)
	for _, tc := range []struct {
		name   string
		docker map[string]any
		shared bool
	}{
		{"default: the host's network", nil, true},
		{"network_mode = bridge", map[string]any{"network_mode": "bridge"}, false},
		{"extra_hosts: Docker refuses it in a shared namespace", map[string]any{"extra_hosts": []string{"db.example:10.0.0.1"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hj := newHostJob(t, tc.docker, jobImage, []string{`echo "hostname=$(hostname)"`}, nil)
			hj.provision(t)
			got := hj.run(t)
			if got.Status != "success" {
				t.Fatalf("job %s:\n%s", got.Status, got.Trace)
			}
			shared := strings.Contains(string(got.Trace), "hostname="+machine+"\n")
			if shared != tc.shared || !strings.Contains(string(got.Trace), "hostname=") {
				t.Fatalf("shares the host's network: %v, want %v (machine %q):\n%s", shared, tc.shared, machine, got.Trace)
			}
		})
	}
}

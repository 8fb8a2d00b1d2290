package main_test

import (
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// With quota_computation, an unweighted executor's jobs weigh 1 each (the
// reference flavor M): reference_jobs_count of them run at once, even under
// a larger concurrent, and the metrics show the weight used and available.
func TestWeightedQuotaProcess(t *testing.T) {
	e := newEnv(t, "listen_address = \"127.0.0.1:0\"\n[quota_computation]\nreference_runner = \"proc\"\nreference_flavor = \"M\"\nreference_jobs_count = 2")
	p := e.start("", "--log-format", "json")
	a, b := e.gl.Enqueue("", nil), e.gl.Enqueue("", nil)
	e.waitFile(filepath.Join(e.hosts, e.hostName(a.ID)+".launched"))
	e.waitFile(filepath.Join(e.hosts, e.hostName(b.ID)+".launched"))
	c := e.gl.Enqueue("", nil)
	addr := regexp.MustCompile(`"listen_address":"([^"]+)"`).FindStringSubmatch(p.log())
	if addr == nil {
		t.Fatalf("no metrics address in the log:\n%s", p.log())
	}
	resp, err := http.Get("http://" + addr[1] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"paas_runner_quota_weight_limit 2\n", "paas_runner_quota_weight_used 2\n", "paas_runner_quota_weight_available 0\n", "paas_runner_jobs_waiting_for_quota 0\n"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}
	if got := e.gl.Job(c.ID); got.Acquisitions != 0 {
		t.Fatalf("a third job was acquired with a quota of two: %+v", got)
	}
	e.gl.Finish(a.ID, "success")
	e.waitFile(filepath.Join(e.hosts, e.hostName(c.ID)+".launched"))
	if !strings.Contains(p.log(), `"msg":"weighted quota"`) || strings.Contains(p.log(), "not implemented") {
		t.Errorf("start-up log:\n%s", p.log())
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// A reference flavor the reference runner's executor does not know is a
// configuration error (exit 2) naming the key.
func TestWeightedQuotaUnknownReferenceFlavor(t *testing.T) {
	e := newEnv(t, "[quota_computation]\nreference_runner = \"proc\"\nreference_flavor = \"XL\"\nreference_jobs_count = 2")
	code, stderr := runOnce(t, []string{"PAAS_RUNNER_TEST_EXECUTOR_DIR=" + e.hosts}, e.config)
	if code != 2 || !strings.Contains(stderr, `quota_computation.reference_flavor: runner "proc": flavor "XL" is unknown`) {
		t.Fatalf("exit %d: %s", code, stderr)
	}
}

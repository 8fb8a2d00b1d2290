package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Run as /usr/bin/gitlab-runner (the host image's link), paas-runner takes
// Heptapod's entry point; under its own name it does not.
func TestHeptapodEntryPoint(t *testing.T) {
	var out bytes.Buffer
	if _, ok := asHeptapodRunner([]string{"/usr/bin/paas-runner", "exec-fetched-job"}, &out); ok {
		t.Fatal("handled under paas-runner's own name")
	}
	if code, ok := asHeptapodRunner([]string{"/usr/bin/gitlab-runner", "run"}, &out); !ok || code != exitUsage || !strings.Contains(out.String(), "only Heptapod Runner's exec-fetched-job") {
		t.Fatalf("%d %v %s", code, ok, out.String())
	}
	// Heptapod's invocation reaches the inner runner, which reads the
	// files it names (missing here: a usage error naming the file)
	t.Setenv("DEBUG", "true")
	t.Setenv("PAAS_RUNNER_LOG_LEVEL", "")
	os.Unsetenv("PAAS_RUNNER_LOG_LEVEL")
	missing := filepath.Join(t.TempDir(), "runner.toml")
	out.Reset()
	code, ok := asHeptapodRunner([]string{"/usr/bin/gitlab-runner", "exec-fetched-job", "--config", missing, "/nonexistent/job.json"}, &out)
	if !ok || code != exitUsage || !strings.Contains(out.String(), missing) {
		t.Fatalf("%d %v %s", code, ok, out.String())
	}
	if os.Getenv("PAAS_RUNNER_LOG_LEVEL") != "debug" {
		t.Fatal("DEBUG=true (Heptapod's Dockerfile) did not turn on debug logging")
	}
}

package main_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

// The built binary, as a job script calls it: exit codes and output.
func TestGuardBinary(t *testing.T) {
	srv := coordinatortest.New(t)
	srv.AddAPIToken("glpat-bin", "read_api")
	old := srv.AddPipeline(7, "11-old", "running")
	own := srv.AddPipeline(7, "12-mine", "running")
	run := func(env []string, args ...string) (int, string, string) {
		cmd := exec.Command(binary, append([]string{"guard"}, args...)...)
		cmd.Env = append(os.Environ(), "CI_API_V4_URL="+srv.URL+"/api/v4", "CI_PROJECT_ID=7",
			fmt.Sprintf("CI_PIPELINE_ID=%d", own), "PRIVATE_TOKEN=glpat-bin")
		cmd.Env = append(cmd.Env, env...)
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return cmd.ProcessState.ExitCode(), out.String(), errb.String()
	}
	code, out, _ := run(nil, "--no-wait")
	if code != 7 || !strings.Contains(out, fmt.Sprintf("Pipeline #%d running", old)) ||
		!strings.Contains(out, "1 other pipelines in (running) state.. Exiting on request.") {
		t.Fatalf("exit %d\n%s", code, out)
	}
	code, out, errOut := run([]string{"GUARD_REF_REGEX=^main$"}, "--no-wait")
	if code != 0 || !strings.Contains(out, "No other conflicting pipelines detected, proceeding ...") || errOut != "." {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	if code, _, errOut := run([]string{"CI_API_V4_URL="}, "-x"); code != 2 || !strings.Contains(errOut, "--ci-api-v4-url/-u/--api-url") {
		t.Fatalf("exit %d %s", code, errOut)
	}
	if code, _, _ := run([]string{"GUARD_TIMEOUT=1"}); code != 11 {
		t.Fatalf("timeout: exit %d", code)
	}
}

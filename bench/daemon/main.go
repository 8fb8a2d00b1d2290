// Command daemon benchmarks the paas-runner binary at scale against the
// in-process fake GitLab: a state file with N launched jobs (a restart),
// then it measures the time back to full tracking, the GitLab request rate
// spent on tracking, and the daemon's memory. Run it through bench/run.sh.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"gitlab.com/paas-runner/paas-runner/bench/internal/procstat"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

func main() {
	binary := flag.String("binary", "bench/out/paas-runner", "paas-runner built with -tags paasrunner_testexec")
	jobs := flag.Int("jobs", 5000, "launched jobs in the state file")
	seconds := flag.Int("seconds", 20, "measurement window")
	free := flag.Int("free", 0, "free slots: concurrent = jobs + free (0: saturated, the daemon must not poll for jobs)")
	executor := flag.String("executor", "test-dir", "test-dir (GitLab is polled for job ends) or test-dir-watch (the executor reports host ends)")
	flag.Parse()

	t := &coordinatortest.Program{}
	defer t.Close()
	gl := coordinatortest.New(t)
	token := "glrt-bench-0123456789"
	gl.AddRunner(token)
	dir, _ := os.MkdirTemp("", "paas-runner-bench")
	defer os.RemoveAll(dir)
	hosts := filepath.Join(dir, "hosts")
	os.Mkdir(hosts, 0o700)
	statePath := filepath.Join(dir, "state.json")

	// A state file as a previous run would leave it: N launched jobs, each
	// with its host still up (the test-dir executor's files), so that a
	// daemon that checks its hosts at start keeps them all.
	var launched []string
	for i := 0; i < *jobs; i++ {
		j := gl.AddRunning(token)
		host := fmt.Sprintf("host-%s-%d", config.RunnerID(token), j.ID)
		// the hosts exist and run: the restart check finds them alive
		for _, suffix := range []string{".host", ".launched"} {
			if err := os.WriteFile(filepath.Join(hosts, host+suffix), nil, 0o600); err != nil {
				t.Fatalf("%v", err)
			}
		}
		rec := map[string]any{"runner_name": config.RunnerID(token), "job_id": j.ID, "token": j.Token, "trace_offset": 100,
			"expected_weight": 1, "paas_resource": map[string]string{"name": host},
			"phase": "launched", "executor": *executor, "acquired_at": time.Now().UTC(), "launched_at": time.Now().UTC()}
		b, _ := json.Marshal(rec)
		launched = append(launched, string(b))
	}
	doc := `{"version": 1, "launched": [` + strings.Join(launched, ",\n") + `], "pending": [], "to_decommission": []}`
	if err := os.WriteFile(statePath, []byte(doc), 0o600); err != nil {
		t.Fatalf("%v", err)
	}
	cfg := filepath.Join(dir, "config.toml")
	// concurrent = the number of launched jobs: the daemon is saturated,
	// and must not ask GitLab for more jobs.
	os.WriteFile(cfg, []byte(fmt.Sprintf(`concurrent = %d
check_interval = 3
state_file = %q
paas_log_statistics = false
[[runners]]
name = "bench"
url = %q
token = %q
executor = %q
`, *jobs+*free, statePath, gl.URL, token, *executor)), 0o600)

	cmd := exec.Command(*binary, "--log-format", "json", cfg)
	cmd.Env = append(os.Environ(), "PAAS_RUNNER_TEST_EXECUTOR_DIR="+hosts)
	stderr, _ := cmd.StderrPipe()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("%v", err)
	}
	resumed := make(chan time.Duration, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "resumed jobs from the state file") {
				resumed <- time.Since(start)
			}
		}
	}()
	var restart time.Duration
	select {
	case restart = <-resumed:
	case <-time.After(time.Minute):
		t.Fatalf("the daemon did not resume its jobs within a minute")
	}
	// Let the tracker reach its steady rate, then measure a window.
	time.Sleep(3 * time.Second) // settling period of a benchmark, not a synchronisation
	j0, r0, t0 := gl.Count("GET /api/v4/job"), gl.Count("POST /api/v4/jobs/request"), time.Now()
	time.Sleep(time.Duration(*seconds) * time.Second) // the measurement window
	j1, r1, el := gl.Count("GET /api/v4/job"), gl.Count("POST /api/v4/jobs/request"), time.Since(t0).Seconds()
	rss, hwm := procstat.Mem(cmd.Process.Pid)
	running := 0
	for _, j := range gl.Jobs() {
		if j.Status == "running" {
			running++
		}
	}

	stopAt := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	err := cmd.Wait()
	stop := time.Since(stopAt)

	fmt.Printf("| tracked launched jobs (concurrent) | %d (%d); still running at the end: %d |\n", *jobs, *jobs+*free, running)
	fmt.Printf("| restart: process start → all jobs tracked | %.0f ms |\n", restart.Seconds()*1000)
	fmt.Printf("| executor | %s |\n", *executor)
	fmt.Printf("| GitLab requests/s tracking jobs (GET /job) | %.2f (%.0f a minute) |\n", float64(j1-j0)/el, float64(j1-j0)/el*60)
	what := "saturated"
	if *free > 0 {
		what = fmt.Sprintf("%d slots free", *free)
	}
	fmt.Printf("| GitLab requests/s polling for jobs, %s (POST /jobs/request) | %.2f |\n", what, float64(r1-r0)/el)
	fmt.Printf("| daemon RSS (VmRSS / peak VmHWM) | %d MB / %d MB |\n", rss/1024, hwm/1024)
	fmt.Printf("| graceful stop (SIGTERM → exit) | %.0f ms (exit: %v) |\n", stop.Seconds()*1000, errOrZero(err))
}

func errOrZero(err error) string {
	if err == nil {
		return "0"
	}
	return err.Error()
}

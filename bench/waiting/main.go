// Command waiting benchmarks jobs waiting for a deployment lock in the
// paas-runner binary (built with -tags paasrunner_testexec) against the
// in-process fake GitLab: one job holds lock "production" for the whole
// run, N more wait for it. It reports the daemon's RSS growth and CPU
// while they wait, and the GitLab requests spent per waiting job per
// minute in steady state. Run it through bench/run.sh.
package main

import (
	"flag"
	"fmt"
	"gitlab.com/paas-runner/paas-runner/bench/internal/procstat"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

func main() {
	binary := flag.String("binary", "bench/out/paas-runner", "paas-runner built with -tags paasrunner_testexec")
	jobs := flag.Int("jobs", 1000, "jobs waiting for the lock")
	settle := flag.Int("settle", 70, "seconds after the last job started waiting before measuring (first checks are spread over a minute)")
	seconds := flag.Int("seconds", 120, "measurement window")
	flag.Parse()

	t := &coordinatortest.Program{}
	defer t.Close()
	gl := coordinatortest.New(t)
	token := "glrt-bench-0123456789"
	gl.AddRunner(token)
	dir, _ := os.MkdirTemp("", "paas-runner-bench-waiting")
	defer os.RemoveAll(dir)
	hosts := filepath.Join(dir, "hosts")
	os.Mkdir(hosts, 0o700)
	statePath := filepath.Join(dir, "state.json")
	cfg := filepath.Join(dir, "config.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`concurrent = 20
check_interval = 3
state_file = %q
paas_log_statistics = false
[guards]
max_waiting_jobs = %d
[[runners]]
name = "bench"
url = %q
token = %q
executor = "test-dir"
`, statePath, *jobs+100, gl.URL, token)), 0o600)

	enqueue := func(pipeline int) *coordinatortest.Job {
		return gl.Enqueue(token, map[string]any{"variables": []map[string]any{
			{"key": "CI_PROJECT_PATH", "value": "acme/web", "public": true},
			{"key": "CI_PROJECT_ROOT_NAMESPACE", "value": "acme", "public": true},
			{"key": "CI_PIPELINE_ID", "value": strconv.Itoa(pipeline), "public": true},
			{"key": "PAAS_LOCK", "value": "production", "public": true},
		}, "job_info": map[string]any{"name": "deploy", "project_id": 1, "pipeline_id": pipeline, "project_full_path": "acme/web"}})
	}
	holder := enqueue(1)

	cmd := exec.Command(*binary, "--log-format", "json", cfg)
	cmd.Env = append(os.Environ(), "PAAS_RUNNER_TEST_EXECUTOR_DIR="+hosts)
	if err := cmd.Start(); err != nil {
		t.Fatalf("%v", err)
	}
	pid := cmd.Process.Pid
	poll := func(what string, limit time.Duration, cond func() bool) {
		for deadline := time.Now().Add(limit); !cond(); time.Sleep(200 * time.Millisecond) { // a benchmark's progress poll
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	poll("the holder launched", time.Minute, func() bool {
		_, err := os.Stat(filepath.Join(hosts, fmt.Sprintf("host-%s-%d.launched", config.RunnerID(token), holder.ID)))
		return err == nil
	})
	rss0, _ := procstat.Mem(pid)
	var waiting []*coordinatortest.Job
	for i := 0; i < *jobs; i++ {
		waiting = append(waiting, enqueue(2+i))
	}
	enq := time.Now()
	poll("every job waiting", 10*time.Minute, func() bool {
		for _, j := range waiting {
			if !strings.Contains(string(gl.Job(j.ID).Trace), "waiting for lock production") {
				return false
			}
		}
		return true
	})
	allWaiting := time.Since(enq)
	time.Sleep(time.Duration(*settle) * time.Second) // settling period of a benchmark, not a synchronisation

	count := func() (get, patch, put int) {
		for _, j := range waiting {
			get += gl.Job(j.ID).StatusChecks
			patch += gl.Count(fmt.Sprintf("PATCH /api/v4/jobs/%d/trace", j.ID))
			put += gl.Count(fmt.Sprintf("PUT /api/v4/jobs/%d", j.ID))
		}
		return
	}
	g0, p0, u0 := count()
	c0, t0 := procstat.CPU(pid), time.Now()
	time.Sleep(time.Duration(*seconds) * time.Second) // the measurement window
	g1, p1, u1 := count()
	c1, el := procstat.CPU(pid), time.Since(t0)
	rss1, hwm := procstat.Mem(pid)
	for _, j := range waiting {
		if st := gl.StatusOf(j.ID); st != "running" {
			t.Fatalf("waiting job %d is %s", j.ID, st)
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	err := cmd.Wait()

	perJobMin := func(n int) float64 { return float64(n) / float64(*jobs) / el.Minutes() }
	fmt.Printf("| jobs waiting for one lock (held all along) | %d |\n", *jobs)
	fmt.Printf("| time to acquire them all and log their waiting line | %.1f s |\n", allWaiting.Seconds())
	fmt.Printf("| measurement window (after %d s settling) | %.0f s |\n", *settle, el.Seconds())
	fmt.Printf("| GitLab requests per waiting job per minute: all | %.3f |\n", perJobMin(g1-g0+p1-p0+u1-u0))
	fmt.Printf("| … GET /job (status checks) | %.3f |\n", perJobMin(g1-g0))
	fmt.Printf("| … PATCH trace (the waiting line, every minute) | %.3f |\n", perJobMin(p1-p0))
	fmt.Printf("| … PUT /jobs/:id | %.3f |\n", perJobMin(u1-u0))
	fmt.Printf("| daemon CPU while they wait | %.2f %% of one core |\n", 100*c1.Seconds()/el.Seconds()-100*c0.Seconds()/el.Seconds())
	fmt.Printf("| daemon RSS: one job / %d waiting (peak VmHWM) | %d MB / %d MB (%d MB) |\n", *jobs, rss0/1024, rss1/1024, hwm/1024)
	fmt.Printf("| graceful stop exit | %v |\n", errOrZero(err))
}

func errOrZero(err error) string {
	if err == nil {
		return "0"
	}
	return err.Error()
}

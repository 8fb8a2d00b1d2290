// Command pickup benchmarks paas-runner with the local-docker executor
// under load (issue 10): N jobs queued at once in the in-process fake
// GitLab, concurrent = N, each a busybox job with a one-commit repository
// whose script prints a timestamped line, prints another one and sleeps.
// It reports queue → first script line in the job log (p50/p90), printed →
// visible in GitLab for a line printed while the command still runs,
// the daemon's own GitLab requests/s by endpoint while the jobs run, job
// end → host container gone, and the daemon's RSS and CPU.
//
// Usage (bench/run.sh): go run ./bench/pickup -binary bench/out/paas-runner-static -jobs 20
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
	"gitlab.com/paas-runner/paas-runner/internal/gitserve"
)

// printedRe finds the line the script prints with the kernel's uptime
// (shared by the containers and this program; busybox's date has no
// sub-second format).
var printedRe = regexp.MustCompile(`(?m)^printed ([0-9]+\.[0-9]+)`)

func main() {
	binary := flag.String("binary", "bench/out/paas-runner-static", "static paas-runner (CGO_ENABLED=0)")
	jobs := flag.Int("jobs", 20, "jobs queued at once (concurrent = jobs)")
	sleep := flag.Int("sleep", 30, "seconds each job's script sleeps")
	flag.Parse()

	t := &coordinatortest.Program{}
	defer t.Close()
	ctx := context.Background()
	cli, err := localdockertest.Client()
	if err != nil {
		t.Fatalf("Docker engine: %v", err)
	}
	jobImage := fmt.Sprintf("paas-runner-bench-busybox:%d", os.Getpid())
	if err := localdockertest.BuildBusyboxImage(ctx, cli, jobImage); err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { localdockertest.RemoveImage(cli, jobImage) })

	dir, _ := os.MkdirTemp("", "paas-runner-pickup")
	t.Cleanup(func() { os.RemoveAll(dir) })
	sha, err := gitserve.MakeRepo(filepath.Join(dir, "git"), "g/p.git", map[string]string{"README": "bench\n"})
	if err != nil {
		t.Fatalf("%v", err)
	}
	git, err := gitserve.New(filepath.Join(dir, "git"), func(u, p string) bool { return u == "gitlab-ci-token" && strings.HasPrefix(p, "glcbt-") })
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(git.Close)

	gl := coordinatortest.New(t)
	token := fmt.Sprintf("glrt-pickup-%d", os.Getpid())
	gl.AddRunner(token)
	cfg := filepath.Join(dir, "config.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`concurrent = %d
check_interval = 3
state_file = %q
[[runners]]
name = "pickup"
url = %q
token = %q
executor = "local-docker"
  [runners.local_docker]
  network_mode = "host"
  [runners.docker]
  network_mode = "host"
  pull_policy = "never"
`, *jobs, filepath.Join(dir, "state.json"), gl.URL, token)), 0o600)

	cmd := exec.Command(*binary, "--log-format", "json", cfg)
	logf, _ := os.Create(filepath.Join(dir, "daemon.log"))
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// Warm: the daemon polls, and its host base image exists (built on
	// first use): one job first, not measured.
	gl.WaitFor(time.Minute, "the daemon to poll", func(s *coordinatortest.Server) bool { return s.CountOf("POST /api/v4/jobs/request") > 0 })
	enqueue := func(i int, sleepS int) *coordinatortest.Job {
		jt := fmt.Sprintf("glcbt-pickup-%d-%d", i, time.Now().UnixNano())
		return gl.Enqueue(token, map[string]any{
			"token": jt, "image": map[string]any{"name": jobImage},
			"git_info": map[string]any{"repo_url": git.URLWith("g/p.git", "gitlab-ci-token", jt), "ref": "main", "sha": sha, "ref_type": "branch", "depth": 1,
				"refspecs": []string{"+refs/heads/main:refs/remotes/origin/main"}},
			"steps": []map[string]any{{"name": "script", "timeout": 600, "when": "on_success", "script": []string{
				"echo first-line",
				fmt.Sprintf("sleep 2; echo printed $(cat /proc/uptime); sleep %d", sleepS),
			}}},
		})
	}
	warm := enqueue(-1, 0)
	gl.WaitFor(5*time.Minute, "the warm-up job", func(s *coordinatortest.Server) bool { return final(s.StatusOf(warm.ID)) })
	if st := gl.StatusOf(warm.ID); st != "success" {
		t.Fatalf("warm-up job %s:\n%s", st, gl.Job(warm.ID).Trace)
	}

	rid := config.RunnerID(token)
	cpu0 := cpuTicks(cmd.Process.Pid)
	counts0 := daemonCounts(gl)
	start := time.Now()
	var queued []*coordinatortest.Job
	enqAt := map[int64]time.Time{}
	for i := 0; i < *jobs; i++ {
		j := enqueue(i, *sleep)
		queued = append(queued, j)
		enqAt[j.ID] = time.Now()
	}
	firstLine, acqFirst, printedVisible, removal := map[int64]time.Duration{}, map[int64]time.Duration{}, map[int64]time.Duration{}, map[int64]time.Duration{}
	seenHost := map[int64]bool{}
	maxRSS := 0
	deadline := time.Now().Add(time.Duration(*sleep)*time.Second + 10*time.Minute)
	for len(removal) < len(queued) && time.Now().Before(deadline) {
		now := time.Now()
		for _, q := range queued {
			j := gl.Job(q.ID)
			tr := string(j.Trace)
			if _, ok := firstLine[q.ID]; !ok && strings.Contains(tr, "\nfirst-line") {
				firstLine[q.ID] = now.Sub(enqAt[q.ID])
				acqFirst[q.ID] = now.Sub(j.AcquiredAt)
			}
			if _, ok := printedVisible[q.ID]; !ok {
				if m := printedRe.FindStringSubmatch(tr); m != nil {
					at, _ := strconv.ParseFloat(m[1], 64)
					printedVisible[q.ID] = time.Duration((uptime() - at) * float64(time.Second))
				}
			}
			if _, ok := removal[q.ID]; !ok {
				_, err := cli.ContainerInspect(ctx, fmt.Sprintf("paas-job-%s-%d", rid, q.ID))
				switch {
				case err == nil:
					seenHost[q.ID] = true
				case cerrdefs.IsNotFound(err) && seenHost[q.ID] && final(j.Status):
					removal[q.ID] = now.Sub(j.FinishedAt)
				}
			}
		}
		if rss := rssKB(cmd.Process.Pid); rss > maxRSS {
			maxRSS = rss
		}
		time.Sleep(20 * time.Millisecond) // measuring resolution
	}
	elapsed := time.Since(start).Seconds()
	counts1 := daemonCounts(gl)
	cpu1 := cpuTicks(cmd.Process.Pid)
	failed := 0
	for _, q := range queued {
		if gl.StatusOf(q.ID) != "success" {
			failed++
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	leftImages(cli, rid)

	fmt.Printf("jobs=%d sleep=%ds cores=%d failed=%d window=%.1fs\n", *jobs, *sleep, runtime.NumCPU(), failed, elapsed)
	fmt.Println("| jobs | queue → first line p50 / p90 | acquired → first line p50 / p90 | printed → visible p50 / p90 | job end → host gone p50 / p90 | daemon GitLab req/s (by endpoint) | daemon max RSS | daemon CPU |")
	fmt.Printf("| %d | %s | %s | %s | %s | %.2f (%s) | %d MiB | %.1f%% |\n", *jobs,
		pcts(firstLine), pcts(acqFirst), pcts(printedVisible), pcts(removal),
		total(counts0, counts1)/elapsed, byEndpoint(counts0, counts1, elapsed), maxRSS/1024, float64(cpu1-cpu0)/100/elapsed*100)
}

func final(st string) bool { return st == "success" || st == "failed" || st == "canceled" }

// daemonCounts are the requests only the daemon makes: polling for jobs and
// watching them (the inner runners PATCH the trace and PUT the result).
func daemonCounts(gl *coordinatortest.Server) map[string]int {
	out := map[string]int{}
	for _, r := range []string{"POST /api/v4/jobs/request", "GET /api/v4/job"} {
		out[r] = gl.Count(r)
	}
	return out
}

func total(a, b map[string]int) float64 {
	n := 0
	for k := range b {
		n += b[k] - a[k]
	}
	return float64(n)
}

func byEndpoint(a, b map[string]int, el float64) string {
	var parts []string
	for _, k := range []string{"POST /api/v4/jobs/request", "GET /api/v4/job"} {
		parts = append(parts, fmt.Sprintf("%s %.2f", k, float64(b[k]-a[k])/el))
	}
	return strings.Join(parts, ", ")
}

func pcts(m map[int64]time.Duration) string {
	if len(m) == 0 {
		return "—"
	}
	var ds []time.Duration
	for _, d := range m {
		ds = append(ds, d)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return fmt.Sprintf("%.2f / %.2f s", ds[len(ds)/2].Seconds(), ds[len(ds)*9/10].Seconds())
}

// uptime is the kernel's /proc/uptime, in seconds.
func uptime() float64 {
	b, _ := os.ReadFile("/proc/uptime")
	f, _ := strconv.ParseFloat(strings.Fields(string(b) + " 0")[0], 64)
	return f
}

// rssKB is the VmRSS of pid (the daemon has no child processes: the inner
// runners run in containers).
func rssKB(pid int) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) >= 2 && fs[0] == "VmRSS:" {
			n, _ := strconv.Atoi(fs[1])
			return n
		}
	}
	return 0
}

// cpuTicks is utime+stime of pid, in clock ticks (100/s on Linux).
func cpuTicks(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	fs := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.Atoi(fs[11])
	st, _ := strconv.Atoi(fs[12])
	return u + st
}

// leftImages says whether dangling images appeared (none should: no image
// is built per job).
func leftImages(cli *client.Client, runnerID string) {
	imgs, _ := cli.ImageList(context.Background(), image.ListOptions{Filters: filters.NewArgs(filters.Arg("label", "paas-runner.runner="+runnerID))})
	if len(imgs) > 0 {
		fmt.Printf("warning: %d images labelled with this runner on the engine\n", len(imgs))
	}
}

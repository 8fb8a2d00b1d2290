// Command load benchmarks paas-runner under load, end to end: the real
// daemon binary with the local-docker executor, against the fake GitLab
// (coordinator/coordinatortest) and a sample repository over git smart
// HTTP, N jobs queued at once with `concurrent = N`. Per run it prints a
// markdown table row: queue → the script's first line in the job log,
// a printed line → visible in GitLab, the daemon's own GitLab requests/s
// by endpoint (told from the inner runners' by which process holds the
// connection), job success → host container gone and → job image gone,
// and the daemon's process tree's memory and CPU; then where the time to
// the first line goes (breakdown), and the daemon's requests per job by
// endpoint and in the steady state (every job running), the figure the
// issue's daemon-requests goal is read on.
//
// It is bounded in time (-timeout), stops by itself, sends traffic only to
// 127.0.0.1, and removes what it made (containers, images, networks,
// volumes of its runners and jobs, its temporary directory). Run it
// through bench/run.sh or: make build && go run ./bench/load -jobs 20.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
	"gitlab.com/paas-runner/paas-runner/internal/gitserve"
)

// The scripts. Each prints lines "PRINTED-<mark> <uptime>" (see
// printedRe): the first is the script's first line, and every one tells
// when it was printed.
var variants = map[string][]string{
	// the job of issue 10: a line, then a long command
	"sleep": {`echo "PRINTED-A $(cat /proc/uptime)"`, "sleep 30"},
	// live log: lines printed while one command runs
	"print": {`echo "PRINTED-A $(cat /proc/uptime)"; sleep 12; echo "PRINTED-B $(cat /proc/uptime)"; sleep 12`},
}

func main() { os.Exit(run(os.Args[1:])) }

type options struct {
	binary        string
	jobs          int
	concurrent    int
	variants      []string
	checkInterval float64
	longPoll      time.Duration
	maxProv       int
	runTimeout    time.Duration
	timeout       time.Duration
	header        bool
	logs          string
}

func run(args []string) int {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	var o options
	var vs string
	fs.StringVar(&o.binary, "binary", "bin/paas-runner", "the static paas-runner binary (make build)")
	fs.IntVar(&o.jobs, "jobs", 20, "jobs queued at once")
	fs.IntVar(&o.concurrent, "concurrent", 0, "the daemon's concurrent (default: -jobs)")
	fs.StringVar(&vs, "variant", "sleep,print", "scripts to run, one run each: sleep (echo; sleep 30), print (echo A; sleep 12; echo B; sleep 12)")
	fs.Float64Var(&o.checkInterval, "check-interval", config.DefaultCheckInterval, "the daemon's check_interval (seconds)")
	fs.DurationVar(&o.longPoll, "long-poll", 0, "hold job requests as GitLab Workhorse does with apiCiLongPollingDuration (GitLab.com: 50s; 0: no long polling)")
	fs.IntVar(&o.maxProv, "max-provisioning", 0, "the daemon's paas_max_concurrent_provisioning (0: its default)")
	fs.DurationVar(&o.runTimeout, "run-timeout", 10*time.Minute, "give up on one run after this long")
	fs.DurationVar(&o.timeout, "timeout", 25*time.Minute, "give up on everything after this long")
	fs.BoolVar(&o.header, "header", true, "print the table's header")
	fs.StringVar(&o.logs, "logs", "", "write each job's log (as GitLab has it) and the daemon's to this directory, for diagnosis")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if o.jobs < 1 || o.concurrent < 0 || o.maxProv < 0 {
		fmt.Fprintln(os.Stderr, "load: -jobs must be ≥ 1, -concurrent and -max-provisioning ≥ 0")
		return 2
	}
	if o.concurrent == 0 {
		o.concurrent = o.jobs
	}
	for _, v := range strings.Split(vs, ",") {
		if _, ok := variants[v]; !ok {
			fmt.Fprintf(os.Stderr, "load: -variant %q: want sleep or print\n", v)
			return 2
		}
		o.variants = append(o.variants, v)
	}
	bin, err := filepath.Abs(o.binary)
	if err == nil {
		_, err = os.Stat(bin)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "load: %s not found: run `make build` first\n", o.binary)
		return 2
	}
	o.binary = bin

	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	prog := &coordinatortest.Program{}
	defer prog.Close()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "load: %v: cleaning up\n", s)
		cancel()
		prog.Close()
		os.Exit(1)
	}()

	b, err := setup(ctx, prog, o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "load: %v\n", err)
		return 2
	}
	if o.header {
		fmt.Println(header)
	}
	code := 0
	var results []*result
	for _, v := range o.variants {
		if ctx.Err() != nil {
			break
		}
		r := b.runOnce(ctx, v)
		results = append(results, r)
		fmt.Println(r.row())
		if len(r.problems) > 0 {
			code = 1
		}
	}
	fmt.Println()
	fmt.Println(breakdownHeader)
	for _, r := range results {
		fmt.Println(r.breakdown())
	}
	fmt.Println()
	fmt.Println(requestsHeader)
	for _, r := range results {
		fmt.Println(r.requests())
	}
	for _, r := range results {
		fmt.Println()
		fmt.Print(r.notes())
	}
	return code
}

// bench is what the runs share.
type bench struct {
	o         options
	prog      *coordinatortest.Program
	cli       *client.Client
	dir       string
	jobImage  string
	version   string
	boot      bootClock
	git       *gitserve.Server
	sha       string
	tokensMu  sync.Mutex
	jobTokens map[string]bool
}

func setup(ctx context.Context, prog *coordinatortest.Program, o options) (*bench, error) {
	b := &bench{o: o, prog: prog, jobTokens: map[string]bool{}}
	out, err := exec.Command(o.binary, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --version: %v", o.binary, err)
	}
	b.version = strings.TrimSpace(string(out))
	if b.boot, err = newBootClock(); err != nil {
		return nil, err
	}
	b.cli, err = localdockertest.Client()
	if err != nil {
		return nil, fmt.Errorf("no Docker engine answers (%v): `make docker-up` starts one", err)
	}
	prog.Cleanup(func() { b.cli.Close() })
	if b.dir, err = os.MkdirTemp("", "paas-runner-load"); err != nil {
		return nil, err
	}
	prog.Cleanup(func() { os.RemoveAll(b.dir) })

	// The job image: FROM scratch + Debian's static busybox, this run's tag.
	b.jobImage = fmt.Sprintf("paas-runner-bench-busybox:%d", os.Getpid())
	progress("building the job image %s", b.jobImage)
	runLabel := map[string]string{"paas-runner.bench-run": fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano())}
	if err := localdockertest.BuildBusyboxImageLabelled(ctx, b.cli, b.jobImage, runLabel); err != nil {
		return nil, fmt.Errorf("building %s: %w", b.jobImage, err)
	}
	prog.Cleanup(func() { localdockertest.RemoveImage(b.cli, b.jobImage) })

	// local-docker's base image, as the daemon would build it on its first
	// job: built beforehand so that every run measures a warm engine; it
	// is removed at the end when it was not there before.
	before, err := baseImages(ctx, b.cli)
	if err != nil {
		return nil, err
	}
	progress("building the host base image (%s host-image)", o.binary)
	if out, err := exec.CommandContext(ctx, o.binary, "host-image").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("%s host-image: %v\n%s", o.binary, err, out)
	}
	prog.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		after, _ := baseImages(ctx, b.cli)
		for id := range after {
			if !before[id] {
				b.cli.ImageRemove(ctx, id, image.RemoveOptions{Force: true, PruneChildren: true})
			}
		}
	})

	repos := filepath.Join(b.dir, "repos")
	if b.sha, err = gitserve.MakeRepo(repos, "bench/sample.git", map[string]string{"README": "the load benchmark's repository\n"}); err != nil {
		return nil, err
	}
	b.git, err = gitserve.New(repos, func(u, p string) bool {
		b.tokensMu.Lock()
		defer b.tokensMu.Unlock()
		return u == "gitlab-ci-token" && b.jobTokens[p]
	})
	if err != nil {
		return nil, err
	}
	prog.Cleanup(b.git.Close)
	return b, nil
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().UTC().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// request is one GitLab request as the fake saw it arrive.
type request struct {
	At     time.Time
	Route  string
	Daemon bool // from a connection the daemon's process tree holds
	Agent  string
}

// result is one run's measurements.
// label is the script's name, and the long poll when there is one.
func (r *result) label() string {
	if r.longPoll > 0 {
		return fmt.Sprintf("%s, long poll %v", r.variant, r.longPoll)
	}
	return r.variant
}

type result struct {
	longPoll time.Duration // the fake GitLab's long poll (0: none)
	variant  string
	jobs     int
	conc     int
	maxProv  int
	cores    int
	load     string
	version  string
	problems []string

	firstLine     []time.Duration // queue → first printed line in GitLab
	visible       []time.Duration // printed → in GitLab (every printed line)
	acquired      []time.Duration // queue → handed out
	toStarted     []time.Duration // handed out → host container started
	toLine        []time.Duration // host started → first line in GitLab
	toPrint       []time.Duration // host started → first line printed by the script
	toScript      []time.Duration // host started → script container created (inner runner's start, image, volume, git fetch)
	scriptStart   []time.Duration // script container created → started (sources copied in)
	scriptToPrint []time.Duration // script container started → first line printed
	queuedToPrint []time.Duration // queue → first line printed by the script
	hostGone      []time.Duration // success → host container destroyed
	imageGone     []time.Duration // success → per-job image deleted
	jobImages     int             // hosts that ran an image of their own
	succeeded     int

	window    time.Duration      // queue → last job's end
	daemonRPS map[string]float64 // by route, in the window
	// perJob: the daemon's requests by route, queue → every host gone,
	// per job. steady: its requests by route from the last host's start
	// to the first job's end (every job running), zero window if none.
	perJob               map[string]float64
	steady               map[string]int
	steadyFrom, steadyTo time.Time
	innerRPS             float64
	daemonUA             map[string]bool
	innerUA              map[string]bool
	rssPeakKiB           int
	rssEndKiB            int
	procsPeak            int
	cpuSeconds           float64
	cpuWindow            time.Duration // queue → every host gone
	leftovers            string        // what the daemon left on the engine after it stopped
	exit                 string
	logTail              string
}

func (b *bench) runOnce(parent context.Context, variant string) *result {
	r := &result{variant: variant, longPoll: b.o.longPoll, jobs: b.o.jobs, conc: b.o.concurrent, maxProv: b.o.maxProv, cores: runtime.NumCPU(), load: loadAvg(), version: b.version}
	ctx, cancel := context.WithTimeout(parent, b.o.runTimeout)
	defer cancel()
	fail := func(format string, args ...any) *result {
		r.problems = append(r.problems, fmt.Sprintf(format, args...))
		return r
	}

	suffix := make([]byte, 6)
	rand.Read(suffix)
	token := "glrt-load-" + hex.EncodeToString(suffix)
	runnerID := config.RunnerID(token)
	gl := coordinatortest.New(b.prog)
	gl.AddRunner(token)
	gl.LongPoll = b.o.longPoll
	u, _ := url.Parse(gl.URL)
	glPort, _ := strconv.Atoi(u.Port())
	runDir := filepath.Join(b.dir, variant)
	os.MkdirAll(runDir, 0o700)
	cfg := filepath.Join(runDir, "config.toml")
	global := ""
	if b.o.maxProv > 0 {
		global = fmt.Sprintf("paas_max_concurrent_provisioning = %d\n", b.o.maxProv)
	}
	conf := fmt.Sprintf(`# written by bench/load
concurrent = %d
check_interval = %g
state_file = %q
%s
[[runners]]
name = "load"
url = %q
token = %q
executor = "local-docker"
  [runners.local_docker]
  network_mode = "host"
  [runners.docker]
  pull_policy = "if-not-present"
`, b.o.concurrent, b.o.checkInterval, filepath.Join(runDir, "state.json"), global, gl.URL, token)
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		return fail("%v", err)
	}

	// what GitLab sees, as it arrives
	var recMu sync.Mutex
	var reqs []request
	var chunks []coordinatortest.TraceChunk
	var socks *sockets
	gl.Observe(coordinatortest.Observer{
		Request: func(hr *http.Request) {
			recMu.Lock()
			s := socks
			recMu.Unlock()
			daemon := s != nil && s.owned(hr.RemoteAddr, glPort)
			rq := request{At: time.Now(), Route: route(hr.Method, hr.URL.Path), Daemon: daemon, Agent: hr.Header.Get("User-Agent")}
			recMu.Lock()
			reqs = append(reqs, rq)
			recMu.Unlock()
		},
		Trace: func(c coordinatortest.TraceChunk) {
			recMu.Lock()
			chunks = append(chunks, c)
			recMu.Unlock()
		},
	})

	logPath := filepath.Join(runDir, "paas-runner.log")
	if b.o.logs != "" {
		// the daemon's log kept with the jobs' (-logs)
		logPath = filepath.Join(b.o.logs, fmt.Sprintf("%s-%d-daemon.log", variant, b.o.jobs))
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return fail("%v", err)
	}
	defer logf.Close()
	cmd := exec.Command(b.o.binary, "--log-format", "json", cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = os.Environ()
	progress("%s, %d jobs: starting the daemon (concurrent = %d)", variant, b.o.jobs, b.o.concurrent)
	if err := cmd.Start(); err != nil {
		return fail("starting %s: %v", b.o.binary, err)
	}
	pid := cmd.Process.Pid
	recMu.Lock()
	socks = newSockets(pid)
	recMu.Unlock()
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		select {
		case <-exited:
			r.exit = "exited early: " + exitString(waitErr)
			return
		default:
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
			r.exit = exitString(waitErr)
		case <-time.After(90 * time.Second):
			cmd.Process.Kill()
			<-exited
			r.exit = "killed: no exit within 90 s of SIGTERM"
		}
	}
	jobs := map[int64]bool{}
	started := time.Now()
	cleanup := func() {
		stop()
		cleanRun(b.cli, runnerID, jobs, started)
	}
	b.prog.Cleanup(cleanup) // should the program be interrupted
	defer cleanup()
	defer func() { r.logTail = tail(logPath, 15) }()

	// The daemon is ready when it polls GitLab for jobs.
	if !waitUntil(ctx, exited, func() bool { return gl.Count("POST /api/v4/jobs/request") > 0 }) {
		return fail("the daemon never asked GitLab for a job")
	}
	if b.o.longPoll > 0 {
		// A daemon running for a while behind a long-polling GitLab has a
		// request held (its first one, with no last_update yet, is not).
		if !waitUntil(ctx, exited, func() bool { return gl.Held() > 0 }) {
			return fail("the daemon's job request was never held")
		}
	}
	w, err := watch(ctx, b.cli, b.jobImage)
	if err != nil {
		return fail("%v", err)
	}

	// Sample the daemon's process tree while the jobs run.
	var memMu sync.Mutex
	samplerDone := make(chan struct{})
	sampleCtx, stopSampling := context.WithCancel(ctx)
	go func() {
		defer close(samplerDone)
		for {
			rss, _, procs := treeUsage(pid)
			memMu.Lock()
			r.rssPeakKiB, r.procsPeak = max(r.rssPeakKiB, rss), max(r.procsPeak, procs)
			memMu.Unlock()
			select {
			case <-sampleCtx.Done():
				return
			case <-time.After(250 * time.Millisecond): // sampling period
			}
		}
	}()
	_, cpu0, _ := treeUsage(pid)

	// N jobs at once.
	t0 := time.Now()
	queued := map[int64]time.Time{}
	var ids []int64
	for i := 0; i < b.o.jobs; i++ {
		tok := fmt.Sprintf("glcbt-load-%s-%d", hex.EncodeToString(suffix), i)
		b.tokensMu.Lock()
		b.jobTokens[tok] = true
		b.tokensMu.Unlock()
		q := gl.Enqueue(token, b.payload(tok, variant, gl.URL))
		queued[q.ID] = time.Now()
		w.expect(q.ID)
		jobs[q.ID] = true
		ids = append(ids, q.ID)
	}
	progress("%s, %d jobs: queued", variant, b.o.jobs)

	allEnded := waitUntil(ctx, exited, func() bool {
		for _, id := range ids {
			if !final(gl.Job(id).Status) {
				return false
			}
		}
		return true
	})
	if !allEnded {
		r.problems = append(r.problems, "not every job ended in time")
	}
	var lastEnd time.Time
	ended := map[int64]coordinatortest.Job{}
	for _, id := range ids {
		j := gl.Job(id)
		ended[id] = j
		if j.FinishedAt.After(lastEnd) {
			lastEnd = j.FinishedAt
		}
		if j.Status == "success" {
			r.succeeded++
		}
	}
	if lastEnd.IsZero() {
		lastEnd = time.Now()
	}
	progress("%s, %d jobs: %d succeeded; waiting for the hosts to go", variant, b.o.jobs, r.succeeded)
	// Every host gone (bounded: a minute after the last end).
	hostCtx, hostCancel := context.WithTimeout(ctx, time.Minute)
	waitUntil(hostCtx, exited, func() bool {
		for _, id := range ids {
			h, ok := w.host(id, ended[id].FinishedAt)
			if ok && h.Gone.IsZero() {
				return false
			}
			if ok && h.JobImage != "" && h.ImageGone.IsZero() {
				return false
			}
		}
		return true
	})
	hostCancel()
	allGone := time.Now()
	_, cpu1, _ := treeUsage(pid)
	r.cpuWindow = time.Since(t0)
	r.cpuSeconds = float64(cpu1-cpu0) / clockTicks
	r.rssEndKiB, _, _ = treeUsage(pid)
	stopSampling()
	<-samplerDone

	// What GitLab saw.
	recMu.Lock()
	allReqs := append([]request(nil), reqs...)
	allChunks := append([]coordinatortest.TraceChunk(nil), chunks...)
	recMu.Unlock()
	r.window = lastEnd.Sub(t0)
	r.daemonRPS, r.daemonUA, r.innerUA = map[string]float64{}, map[string]bool{}, map[string]bool{}
	inner := 0
	for _, q := range allReqs {
		if q.At.Before(t0) || q.At.After(lastEnd) {
			continue
		}
		if q.Daemon {
			r.daemonRPS[q.Route]++
			r.daemonUA[q.Agent] = true
		} else {
			inner++
			r.innerUA[q.Agent] = true
		}
	}
	for k := range r.daemonRPS {
		r.daemonRPS[k] /= r.window.Seconds()
	}
	r.innerRPS = float64(inner) / r.window.Seconds()

	// Each job's log, rebuilt chunk by chunk: when each printed line
	// became visible.
	logs := map[int64][]byte{}
	seen := map[int64]map[string]bool{}
	hs := map[int64]hostTimes{}
	for _, id := range ids {
		if h, ok := w.host(id, ended[id].FinishedAt); ok {
			hs[id] = h
		}
	}
	for _, e := range w.errors() {
		r.problems = append(r.problems, e.Error())
	}
	// The daemon's requests: per job over the whole run (what each job
	// costs once), and in the steady state, when every job runs.
	for k, n := range countDaemon(allReqs, t0, allGone) {
		if r.perJob == nil {
			r.perJob = map[string]float64{}
		}
		r.perJob[k] = float64(n) / float64(b.o.jobs)
	}
	var starts, ends []time.Time
	for _, id := range ids {
		starts = append(starts, hs[id].Started)
		ends = append(ends, ended[id].FinishedAt)
	}
	if from, to, ok := steadyWindow(starts, ends); ok {
		r.steadyFrom, r.steadyTo = from, to
		r.steady = countDaemon(allReqs, from, to)
	}
	for _, c := range allChunks {
		if !jobs[c.JobID] {
			continue
		}
		logs[c.JobID] = append(logs[c.JobID][:c.Offset:c.Offset], c.Data...)
		if seen[c.JobID] == nil {
			seen[c.JobID] = map[string]bool{}
		}
		for _, p := range findPrinted(logs[c.JobID]) {
			if seen[c.JobID][p.Mark] {
				continue
			}
			seen[c.JobID][p.Mark] = true
			r.visible = append(r.visible, seconds(b.boot.at(c.At)-p.Uptime))
			if p.Mark == "A" {
				r.firstLine = append(r.firstLine, c.At.Sub(queued[c.JobID]))
				r.queuedToPrint = append(r.queuedToPrint, seconds(p.Uptime-b.boot.at(queued[c.JobID])))
				if h, ok := hs[c.JobID]; ok && !h.Started.IsZero() {
					r.toLine = append(r.toLine, c.At.Sub(h.Started))
					r.toPrint = append(r.toPrint, seconds(p.Uptime-b.boot.at(h.Started)))
					if sc, ss, ok := w.script(c.JobID, h.Container); ok {
						r.toScript = append(r.toScript, sc.Sub(h.Started))
						r.scriptStart = append(r.scriptStart, ss.Sub(sc))
						r.scriptToPrint = append(r.scriptToPrint, seconds(p.Uptime-b.boot.at(ss)))
					}
				}
			}
		}
	}
	if b.o.logs != "" {
		for _, id := range ids {
			path := filepath.Join(b.o.logs, fmt.Sprintf("%s-%d-job-%d.log", variant, b.o.jobs, id))
			if err := os.WriteFile(path, ended[id].Trace, 0o600); err != nil {
				r.problems = append(r.problems, err.Error())
			}
		}
	}
	for _, id := range ids {
		j := ended[id]
		h, ok := hs[id]
		if !j.AcquiredAt.IsZero() {
			r.acquired = append(r.acquired, j.AcquiredAt.Sub(queued[id]))
			if ok && !h.Started.IsZero() {
				r.toStarted = append(r.toStarted, h.Started.Sub(j.AcquiredAt))
			}
		}
		if j.Acquisitions > 1 {
			r.problems = append(r.problems, fmt.Sprintf("job %d was handed out %d times", id, j.Acquisitions))
		}
		if j.Status != "success" {
			r.problems = append(r.problems, fmt.Sprintf("job %d ended %s %s", id, j.Status, j.FailureReason))
			continue
		}
		if len(findPrinted(j.Trace)) < printedLines(variant) {
			r.problems = append(r.problems, fmt.Sprintf("job %d: its log lacks printed lines", id))
		}
		if !ok {
			r.problems = append(r.problems, fmt.Sprintf("job %d: no host container seen", id))
			continue
		}
		if !h.Gone.IsZero() {
			r.hostGone = append(r.hostGone, h.Gone.Sub(j.FinishedAt))
		}
		if h.JobImage != "" {
			r.jobImages++
			if !h.ImageGone.IsZero() {
				r.imageGone = append(r.imageGone, h.ImageGone.Sub(j.FinishedAt))
			}
		}
	}

	// Stop the daemon; what did it leave?
	stop()
	if c, i, err := remaining(context.Background(), b.cli, runnerID, jobs, started); err == nil && c+i > 0 {
		r.leftovers = fmt.Sprintf("%d containers, %d images", c, i)
		r.problems = append(r.problems, "left on the engine after the daemon stopped: "+r.leftovers)
	}
	if r.exit != "0" {
		r.problems = append(r.problems, "daemon exit: "+r.exit)
	}
	progress("%s, %d jobs: done", variant, b.o.jobs)
	return r
}

// printedLines is how many PRINTED lines each variant's script prints.
func printedLines(variant string) int {
	return strings.Count(strings.Join(variants[variant], "\n"), "PRINTED-")
}

// payload is a job of the variant for the fake GitLab: the busybox image,
// the sample repository, the script.
func (b *bench) payload(tok, variant, glURL string) map[string]any {
	return map[string]any{
		"token":    tok,
		"image":    map[string]any{"name": b.jobImage, "pull_policy": []string{"if-not-present"}},
		"job_info": map[string]any{"name": "load-" + variant, "stage": "test", "project_id": 1, "project_name": "sample", "project_full_path": "bench/sample"},
		"git_info": map[string]any{"repo_url": b.git.URLWith("bench/sample.git", "gitlab-ci-token", tok), "ref": "main", "sha": b.sha,
			"ref_type": "branch", "depth": 1, "refspecs": []string{"+refs/heads/main:refs/remotes/origin/main"}},
		"steps":       []map[string]any{{"name": "script", "script": variants[variant], "timeout": 600, "when": "on_success"}},
		"runner_info": map[string]any{"timeout": 600},
		"variables": []map[string]any{
			{"key": "CI_JOB_TOKEN", "value": tok, "public": false, "masked": true},
			{"key": "CI_SERVER_URL", "value": glURL, "public": true, "masked": false},
			{"key": "CI_PROJECT_PATH", "value": "bench/sample", "public": true, "masked": false},
		},
	}
}

// waitUntil checks cond every 100 ms (the benchmark's own timings come
// from the events and requests recorded, not from this loop) until it
// holds, ctx ends or the daemon exits.
func waitUntil(ctx context.Context, exited <-chan struct{}, cond func() bool) bool {
	for {
		if cond() {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-exited:
			return cond()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func final(st string) bool { return st == "success" || st == "failed" || st == "canceled" }

func exitString(err error) string {
	if err == nil {
		return "0"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return strconv.Itoa(ee.ExitCode())
	}
	return err.Error()
}

func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	data, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

const header = `| jobs (concurrent) | script | queue → first line p50 / p90 | printed → in GitLab p50 / p90 | daemon's GitLab req/s (by endpoint) | inner runners' req/s | success → host gone p50 / p90 | success → job image gone p50 / p90 | daemon tree RSS peak | daemon tree CPU | ok | cores, load (1 min) | measured |
|---|---|---|---|---|---|---|---|---|---|---|---|---|`

func (r *result) row() string {
	var routes []string
	total := 0.0
	for k, v := range r.daemonRPS {
		total += v
		routes = append(routes, k)
	}
	sort.Slice(routes, func(i, j int) bool { return r.daemonRPS[routes[i]] > r.daemonRPS[routes[j]] })
	var by []string
	for _, k := range routes {
		by = append(by, fmt.Sprintf("%s %.2f", shortRoute(k), r.daemonRPS[k]))
	}
	images := "no job image"
	if r.jobImages > 0 {
		images = pair(r.imageGone, r.jobImages)
	}
	ok := fmt.Sprintf("%d/%d", r.succeeded, r.jobs)
	if len(r.problems) > 0 {
		ok += " ⚠"
	}
	cpu := "–"
	if r.cpuWindow > 0 {
		cpu = fmt.Sprintf("%.1f s (%.1f%% of a core)", r.cpuSeconds, 100*r.cpuSeconds/r.cpuWindow.Seconds())
	}
	conc := strconv.Itoa(r.conc)
	if r.maxProv > 0 {
		conc += fmt.Sprintf(", provisioning %d", r.maxProv)
	}
	return fmt.Sprintf("| %d (%s) | %s | %s | %s | **%.2f** (%s) | %.2f | %s | %s | %d MiB | %s | %s | %d, %s | %s |",
		r.jobs, conc, r.label(), pair(r.firstLine, r.succeeded), pair(r.visible, r.succeeded*printedLines(r.variant)),
		total, strings.Join(by, "; "), r.innerRPS, pair(r.hostGone, r.succeeded), images,
		r.rssPeakKiB/1024, cpu, ok, r.cores, r.load, r.version)
}

const breakdownHeader = `| jobs | script | queue → handed out p50 / p90 | handed out → host started | host started → script's first line printed | … host started → script container created | … created → started | … started → line printed | queue → first line printed | host started → first line in GitLab | queue → last job end |
|---|---|---|---|---|---|---|---|---|---|---|`

// breakdown is where the time to the first line goes; the inner runner's
// part is split by its script container's events: its start until it
// creates the script container (configuration, Docker client, image
// check, builds volume, git fetch), copying the sources in until the
// container starts, and the shell until the script's first line.
func (r *result) breakdown() string {
	return fmt.Sprintf("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |", r.jobs, r.label(), pair(r.acquired, r.jobs), pair(r.toStarted, r.jobs),
		pair(r.toPrint, r.succeeded), pair(r.toScript, r.succeeded), pair(r.scriptStart, r.succeeded), pair(r.scriptToPrint, r.succeeded),
		pair(r.queuedToPrint, r.succeeded), pair(r.toLine, r.succeeded), secs(r.window))
}

const requestsHeader = `| jobs | script | daemon's requests per job, queue → every host gone (by endpoint) | steady state: last host started → first job end | daemon's req/s in the steady state (requests by endpoint) |
|---|---|---|---|---|`

// requests is what the daemon's GitLab requests cost: once per job, and
// per second while every job runs.
func (r *result) requests() string {
	total := 0.0
	for _, v := range r.perJob {
		total += v
	}
	per := fmt.Sprintf("**%.2f** (%s)", total, byRoute(r.perJob, "%.2f"))
	steady, rate := "none (a job ended before the last host started)", "–"
	if d := r.steadyTo.Sub(r.steadyFrom); d > 0 {
		n := 0
		counts := map[string]float64{}
		for k, v := range r.steady {
			n += v
			counts[k] = float64(v)
		}
		steady = secs(d)
		rate = fmt.Sprintf("**%.2f** (%d: %s)", float64(n)/d.Seconds(), n, byRoute(counts, "%.0f"))
	}
	return fmt.Sprintf("| %d | %s | %s | %s | %s |", r.jobs, r.label(), per, steady, rate)
}

// byRoute lists m's routes, largest first: "PUT jobs/:id 1.00; …".
func byRoute(m map[string]float64, format string) string {
	var routes []string
	for k := range m {
		routes = append(routes, k)
	}
	sort.Slice(routes, func(i, j int) bool {
		if m[routes[i]] != m[routes[j]] {
			return m[routes[i]] > m[routes[j]]
		}
		return routes[i] < routes[j]
	})
	var by []string
	for _, k := range routes {
		by = append(by, shortRoute(k)+" "+fmt.Sprintf(format, m[k]))
	}
	if len(by) == 0 {
		return "none"
	}
	return strings.Join(by, "; ")
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func (r *result) notes() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s, %d jobs: daemon exit %s; User-Agent of the daemon %s, of the inner runners %s.\n", r.variant, r.jobs, r.exit, keys(r.daemonUA), keys(r.innerUA))
	for _, p := range r.problems {
		fmt.Fprintf(&sb, "  problem: %s\n", p)
	}
	if len(r.problems) > 0 && r.logTail != "" {
		fmt.Fprintf(&sb, "  daemon log (last lines):\n%s\n", indent(r.logTail))
	}
	return sb.String()
}

func keys(m map[string]bool) string {
	var ks []string
	for k := range m {
		ks = append(ks, fmt.Sprintf("%q", k))
	}
	sort.Strings(ks)
	if len(ks) == 0 {
		return "(none)"
	}
	return strings.Join(ks, ", ")
}

func indent(s string) string { return "    " + strings.ReplaceAll(s, "\n", "\n    ") }

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/dispatcher"
	"gitlab.com/paas-runner/paas-runner/guard"
	"gitlab.com/paas-runner/paas-runner/internal/version"
	"gitlab.com/paas-runner/paas-runner/state"
)

// ops observes the dispatcher for /metrics, /healthz, /readyz,
// /debug/jobs and systemd's notify protocol.
type ops struct {
	log      *zap.Logger
	systemID string
	cfg      *config.Config

	mu       sync.Mutex
	started  bool
	draining bool
	paused   map[string]time.Time // runner ID → no polling before
	// refused are the runners whose last job request GitLab answered 403
	// (paused or not: with unhealthy_requests_limit = 0 they never are)
	refused map[string]bool
	ended   map[state.Key]time.Time
	d       *dispatcher.Dispatcher
	// guardWaits, when set, names what waiting jobs wait for (guards).
	guardWaits func() map[state.Key]string
	reloader   *reloader
	// logErrors counts the daemon's warning and error lines, when set.
	logErrors *logErrors

	acquisitions *prometheus.CounterVec
	provisioning *prometheus.HistogramVec
	decomLag     *prometheus.HistogramVec
	launchFails  *prometheus.CounterVec
	apiStatuses  *prometheus.CounterVec
	apiDuration  *prometheus.HistogramVec
	apiErrors    *prometheus.CounterVec
	jobsTotal    *prometheus.CounterVec
	jobDuration  *prometheus.HistogramVec
	paasStatuses *prometheus.CounterVec
	paasDuration *prometheus.HistogramVec
	paasErrors   *prometheus.CounterVec
	stateWrite   *prometheus.HistogramVec
}

func newOps(cfg *config.Config, systemID string, log *zap.Logger) *ops {
	o := &ops{log: log, systemID: systemID, cfg: cfg, paused: map[string]time.Time{}, refused: map[string]bool{}, ended: map[state.Key]time.Time{}}
	o.acquisitions = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "paas_runner", Name: "acquisitions_total",
		Help: "Job requests to GitLab, by answer: job, no_job, forbidden (403), error."}, []string{"runner", "answer"})
	buckets := []float64{0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600}
	o.provisioning = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "paas_runner", Name: "provisioning_duration_seconds",
		Help: "Time to create a job's host, per executor.", Buckets: buckets}, []string{"executor"})
	o.decomLag = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "paas_runner", Name: "decommission_lag_seconds",
		Help: "Time from a job's end to its host's removal, per executor (billed idle time).", Buckets: buckets}, []string{"executor"})
	o.launchFails = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "paas_runner", Name: "launch_failures_by_reason_total",
		Help: "Jobs failed before launch, by executor and GitLab failure_reason."}, []string{"executor", "reason"})
	// gitlab-runner's names, labels and buckets (network/api_requests_collector.go)
	o.apiStatuses = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gitlab_runner_api_request_statuses_total",
		Help: "The total number of API requests made to GitLab, partitioned by runner, system_id, endpoint, status and method."},
		[]string{"runner", "system_id", "endpoint", "status", "method"})
	o.apiDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "gitlab_runner_api_request_duration_seconds",
		Help:    "Latency histogram of API requests made to GitLab, partitioned by runner, system_id, endpoint, status_class and method.",
		Buckets: []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}}, []string{"runner", "system_id", "endpoint", "status_class", "method"})
	o.apiErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "paas_runner", Name: "gitlab_request_errors_total",
		Help: "GitLab API requests that got no answer (connection refused, timeout, TLS error), by runner, endpoint and method."},
		[]string{"runner", "endpoint", "method"})
	o.paasStatuses = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "paas_runner", Name: "paas_api_request_statuses_total",
		Help: "PaaS API requests (Clever Cloud's for clever-docker, the Docker engine's for local-docker) that got an answer, by executor, endpoint, status and method; retries count."},
		[]string{"executor", "endpoint", "status", "method"})
	o.paasDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "paas_runner", Name: "paas_api_request_duration_seconds",
		Help:    "Latency of PaaS API requests that got an answer, by executor, endpoint, status_class and method.",
		Buckets: []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}}, []string{"executor", "endpoint", "status_class", "method"})
	o.paasErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "paas_runner", Name: "paas_api_request_errors_total",
		Help: "PaaS API requests that got no answer (refused, timeout, TLS error), by executor, endpoint and method."},
		[]string{"executor", "endpoint", "method"})
	o.jobDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "gitlab_runner_job_duration_seconds",
		Help:    "Histogram of job durations: from acquisition to the job's end (guard waits and provisioning included).",
		Buckets: []float64{30, 60, 300, 600, 1800, 3600, 7200, 10800, 18000, 36000}}, []string{"runner", "runner_name", "system_id"})
	o.jobsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gitlab_runner_jobs_total", Help: "Total number of handled jobs"},
		[]string{"runner", "runner_name", "system_id"})
	o.stateWrite = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "paas_runner", Name: "state_write_duration_seconds",
		Help:    "Time to make state changes durable: a journal append (fdatasync) or a snapshot (state file rewritten), by kind and result.",
		Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}}, []string{"kind", "result"})
	o.runnerSeries(cfg)
	for _, k := range []string{"journal", "snapshot"} {
		o.stateWrite.WithLabelValues(k, "ok")
	}
	return o
}

// runnerSeries makes cfg's runners' series exist from the start, so that
// dashboards and rate() see them.
func (o *ops) runnerSeries(cfg *config.Config) {
	for _, r := range cfg.Runners {
		for _, a := range []string{"job", "no_job", "forbidden", "error"} {
			o.acquisitions.WithLabelValues(r.ID(), a)
		}
		o.provisioning.WithLabelValues(r.Executor)
		o.decomLag.WithLabelValues(r.Executor)
		o.launchFails.WithLabelValues(r.Executor, "runner_system_failure")
		o.jobsTotal.WithLabelValues(r.ID(), r.DisplayName(), o.systemID)
		o.jobDuration.WithLabelValues(r.ID(), r.DisplayName(), o.systemID)
	}
}

// configured is told the configuration in force after a reload: readiness
// and the per-runner metrics follow its runners (added, removed, limits).
func (o *ops) configured(cfg *config.Config) {
	o.runnerSeries(cfg)
	o.mu.Lock()
	o.cfg = cfg
	o.mu.Unlock()
}

// --- dispatcher.Observer

func (o *ops) Started() {
	o.mu.Lock()
	o.started = true
	o.mu.Unlock()
	o.notify(daemon.SdNotifyReady + "\n" + o.statusLine())
}

func (o *ops) Draining() {
	o.mu.Lock()
	o.draining = true
	o.mu.Unlock()
	o.notify(daemon.SdNotifyStopping + "\nSTATUS=draining: " + o.summary())
}

func (o *ops) Polled(r *dispatcher.Runner, answer string) {
	o.acquisitions.WithLabelValues(r.ID, answer).Inc()
	if answer == "job" {
		o.jobsTotal.WithLabelValues(r.ID, r.Name, o.systemID).Inc()
	}
	switch answer {
	case "forbidden":
		o.mu.Lock()
		o.refused[r.ID] = true
		o.mu.Unlock()
	case "error": // no answer: nothing learnt
	default:
		o.mu.Lock()
		delete(o.paused, r.ID)
		delete(o.refused, r.ID)
		o.mu.Unlock()
	}
}

func (o *ops) RunnerPaused(r *dispatcher.Runner, until time.Time) {
	o.mu.Lock()
	o.paused[r.ID] = until
	o.mu.Unlock()
}

func (o *ops) Provisioned(r *dispatcher.Runner, took time.Duration) {
	o.provisioning.WithLabelValues(r.ExecutorName).Observe(took.Seconds())
}

func (o *ops) LaunchFailed(r *dispatcher.Runner, reason string) {
	o.launchFails.WithLabelValues(r.ExecutorName, reason).Inc()
}

func (o *ops) JobEnded(r *dispatcher.Runner, k state.Key) {
	now := time.Now()
	o.mu.Lock()
	o.ended[k] = now
	d := o.d
	o.mu.Unlock()
	if d == nil {
		return
	}
	// (the dispatcher calls this holding none of its locks)
	for _, j := range d.Jobs() {
		if j.Runner == k.Runner && j.JobID == k.ID && !j.AcquiredAt.IsZero() {
			o.jobDuration.WithLabelValues(r.ID, r.Name, o.systemID).Observe(now.Sub(j.AcquiredAt).Seconds())
			return
		}
	}
}

func (o *ops) HostRemoved(r *dispatcher.Runner, k state.Key) {
	o.mu.Lock()
	at, ok := o.ended[k]
	delete(o.ended, k)
	o.mu.Unlock()
	if ok { // a job that ended before a restart has no known end time
		o.decomLag.WithLabelValues(r.ExecutorName).Observe(time.Since(at).Seconds())
	}
}

// attach starts observing d and store; the systemd STATUS= line is
// refreshed every interval until ctx ends.
func (o *ops) attach(ctx context.Context, d *dispatcher.Dispatcher, store *state.Store, interval time.Duration) {
	o.mu.Lock()
	o.d = d
	o.mu.Unlock()
	store.ObserveWrites(func(kind string, took time.Duration, err error) {
		result := "ok"
		if err != nil {
			result = "error"
		}
		o.stateWrite.WithLabelValues(kind, result).Observe(took.Seconds())
	})
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				o.notify(o.statusLine())
			}
		}
	}()
}

// statusInterval is how often systemd's STATUS= is refreshed.
func statusInterval() time.Duration {
	if v, err := time.ParseDuration(os.Getenv("PAAS_RUNNER_STATUS_INTERVAL")); err == nil && v > 0 { // tests
		return v
	}
	return 10 * time.Second
}

// hangup handles SIGHUP: the reloader re-reads the configuration (wrapped
// in RELOADING=1 … READY=1, see reloading). Without a reloader (tools) the
// daemon says so and keeps running (Go's default would kill it).
func (o *ops) hangup() {
	if o == nil {
		return
	}
	if o.reloader != nil {
		o.reloader.requestReload("SIGHUP")
		return
	}
	_ = o.reloading(func() error {
		err := errors.New("reloading the configuration is not supported here; restart the daemon to apply changes")
		o.log.Warn("SIGHUP received: keeping the current configuration", zap.Error(err))
		return err
	})
}

// reloading tells systemd a reload runs while fn does.
func (o *ops) reloading(fn func() error) error {
	o.notify(fmt.Sprintf("%s\nMONOTONIC_USEC=%d", daemon.SdNotifyReloading, monotonicUsec()))
	err := fn()
	status := o.statusLine()
	if err != nil {
		status = "STATUS=reload failed, running on the previous configuration: " + oneLine(err.Error())
	}
	o.notify(daemon.SdNotifyReady + "\n" + status)
	return err
}

func monotonicUsec() int64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) != nil {
		return 0
	}
	return ts.Nano() / 1000
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", "; ") }

func (o *ops) config() *config.Config {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.cfg
}

// --- readiness

// readiness is nil when the daemon can take jobs, else why not.
func (o *ops) readiness() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case !o.started:
		return fmt.Errorf("starting: the state file's jobs are not resumed yet")
	case o.draining:
		return fmt.Errorf("draining: no more jobs are acquired")
	}
	var paused []string
	now := time.Now()
	for _, r := range o.cfg.Runners {
		if until, ok := o.paused[r.ID()]; ok && now.Before(until) {
			paused = append(paused, fmt.Sprintf("%s paused until %s", r.DisplayName(), until.UTC().Format(time.RFC3339)))
			continue
		}
		if o.refused[r.ID()] {
			paused = append(paused, fmt.Sprintf("%s (its last job request)", r.DisplayName()))
			continue
		}
		return nil
	}
	if len(o.cfg.Runners) == 0 {
		return fmt.Errorf("no runner configured")
	}
	return fmt.Errorf("no runner may poll: GitLab refused their tokens (403): %s", strings.Join(paused, ", "))
}

// summary is jobs by state on one line: "3 jobs: 1 provisioning, 2 launched".
func (o *ops) summary() string {
	o.mu.Lock()
	d := o.d
	o.mu.Unlock()
	if d == nil {
		return "starting"
	}
	counts := map[string]int{}
	jobs := d.Jobs()
	for _, j := range jobs {
		counts[string(j.Phase)]++
	}
	var parts []string
	for _, p := range []state.Phase{state.Acquired, state.Provisioning, state.Launching, state.Launched, state.Decommissioning} {
		if n := counts[string(p)]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, p))
		}
	}
	s := fmt.Sprintf("%d jobs", len(jobs))
	if len(parts) > 0 {
		s += ": " + strings.Join(parts, ", ")
	}
	return s
}

func (o *ops) statusLine() string {
	return "STATUS=" + o.summary()
}

func (o *ops) notify(msg string) {
	if _, err := daemon.SdNotify(false, msg); err != nil {
		o.log.Warn("notifying systemd failed", zap.Error(err))
	}
}

// --- HTTP

func (o *ops) register(reg *prometheus.Registry, mux *http.ServeMux, d *dispatcher.Dispatcher) {
	if o.reloader != nil {
		reg.MustRegister(o.reloader.collectors()...)
	}
	if o.logErrors != nil {
		reg.MustRegister(o.logErrors)
	}
	reg.MustRegister(versionInfo())
	reg.MustRegister(o.acquisitions, o.provisioning, o.decomLag, o.launchFails, o.apiStatuses, o.apiDuration, o.apiErrors, o.jobsTotal, o.jobDuration, o.paasStatuses, o.paasDuration, o.paasErrors, o.stateWrite, &jobsCollector{o: o, d: d})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := o.readiness(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, err)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("/debug/jobs", func(w http.ResponseWriter, _ *http.Request) {
		jobs := o.jobs(d)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(debugJobs{SystemID: o.systemID, Jobs: jobs})
	})
}

// versionInfo is gitlab-runner's gitlab_runner_version_info (constant 1,
// the build in its labels), which dashboards use to list runner managers
// and template on them. branch and built_at are not recorded here: empty.
func versionInfo() prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "gitlab_runner_version_info",
		Help: "Constant 1, labelled with the build: name, version, revision, branch, go_version, built_at, os, architecture."},
		[]string{"name", "version", "revision", "branch", "go_version", "built_at", "os", "architecture"})
	g.WithLabelValues(version.Name, version.Version, version.Revision, "", runtime.Version(), "", runtime.GOOS, runtime.GOARCH).Set(1)
	return g
}

// jobs are d's tracked jobs, sorted, with the guards they wait for.
func (o *ops) jobs(d *dispatcher.Dispatcher) []dispatcher.JobView {
	jobs := d.Jobs()
	if o.guardWaits != nil {
		waits := o.guardWaits()
		for i := range jobs {
			if w, ok := waits[state.Key{Runner: jobs[i].Runner, ID: jobs[i].JobID}]; ok && jobs[i].Phase == state.Acquired {
				jobs[i].WaitingFor = w
			}
		}
	}
	sortViews(jobs)
	return jobs
}

// guardWaiting lists, for each job of this daemon waiting for guards, the
// guards it waits for ("lock:acme/web:production, pool:aws").
func guardWaiting(m *guard.Manager, systemID string) func() map[state.Key]string {
	return func() map[state.Key]string {
		out := map[state.Key]string{}
		st, _ := m.Snapshot()
		if st == nil {
			return out
		}
		for _, w := range st.Waiters {
			if w.Daemon != systemID || w.SupersededBy != 0 {
				continue
			}
			var names []string
			for _, dm := range w.Demands {
				n := guard.GuardLabel(dm.Pool)
				if dm.Lock != "" {
					n += "/" + dm.Lock
				}
				names = append(names, n)
			}
			out[state.Key{Runner: w.Runner, ID: w.JobID}] = strings.Join(names, ", ")
		}
		return out
	}
}

// debugJobs is the /debug/jobs document.
type debugJobs struct {
	SystemID string               `json:"system_id"`
	Jobs     []dispatcher.JobView `json:"jobs"`
}

func sortViews(v []dispatcher.JobView) {
	sort.Slice(v, func(i, k int) bool {
		if v[i].Runner != v[k].Runner {
			return v[i].Runner < v[k].Runner
		}
		return v[i].JobID < v[k].JobID
	})
}

// jobsCollector exports the gauges computed from the tracked jobs at
// scrape time.
type jobsCollector struct {
	o *ops
	d *dispatcher.Dispatcher
}

var (
	// gitlab-runner's names and labels (commands/builds_helper.go,
	// commands/multi.go); stage and executor_stage are the lifecycle state
	glJobsDesc = prometheus.NewDesc("gitlab_runner_jobs",
		"The current number of running builds.", []string{"runner", "runner_name", "system_id", "state", "stage", "executor_stage"}, nil)
	glConcurrentDesc = prometheus.NewDesc("gitlab_runner_concurrent", "The current value of concurrent setting", nil, nil)
	glLimitDesc      = prometheus.NewDesc("gitlab_runner_limit", "The current value of limit setting", []string{"runner", "runner_name", "system_id"}, nil)
	jobsByStateDesc  = prometheus.NewDesc("paas_runner_jobs_by_state",
		"Jobs in the daemon's care, by runner, executor and lifecycle state.", []string{"runner", "executor", "state"}, nil)
	hostsAliveDesc = prometheus.NewDesc("paas_runner_hosts_alive",
		"Hosts that exist or may exist (being created, running a job, being removed), by executor.", []string{"executor"}, nil)
	runnerPausedDesc = prometheus.NewDesc("paas_runner_runner_paused",
		"1 while a runner does not poll because GitLab refused its token.", []string{"runner"}, nil)
)

func (c *jobsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{glJobsDesc, glConcurrentDesc, glLimitDesc, jobsByStateDesc, hostsAliveDesc, runnerPausedDesc} {
		ch <- d
	}
}

// gitlabState maps a lifecycle state to gitlab-runner's job state label.
func gitlabState(p state.Phase) string {
	switch p {
	case state.Launched:
		return "running"
	case state.Decommissioning:
		return "finished"
	}
	return "pending"
}

func (c *jobsCollector) Collect(ch chan<- prometheus.Metric) {
	cfg := c.o.config()
	type key struct{ runner, executor, state string }
	byState := map[key]int{}
	gl := map[[3]string]int{}
	alive := map[string]int{}
	execOf := map[string]string{}
	nameOf := map[string]string{}
	for _, r := range cfg.Runners {
		execOf[r.ID()] = r.Executor
		nameOf[r.ID()] = r.DisplayName()
		for _, p := range []state.Phase{state.Acquired, state.Provisioning, state.Launching, state.Launched, state.Decommissioning} {
			byState[key{r.ID(), r.Executor, string(p)}] += 0
			gl[[3]string{r.ID(), gitlabState(p), string(p)}] += 0
		}
		alive[r.Executor] += 0
	}
	for _, j := range c.d.Jobs() {
		ex := j.Executor
		if ex == "" {
			ex = execOf[j.Runner]
		}
		byState[key{j.Runner, ex, string(j.Phase)}]++
		if _, ok := nameOf[j.Runner]; !ok { // a runner a reload removed
			nameOf[j.Runner] = firstOf(j.RunnerName, j.Runner)
		}
		gl[[3]string{j.Runner, gitlabState(j.Phase), string(j.Phase)}]++
		if j.Phase != state.Acquired {
			alive[ex]++
		}
	}
	for k, n := range byState {
		ch <- prometheus.MustNewConstMetric(jobsByStateDesc, prometheus.GaugeValue, float64(n), k.runner, k.executor, k.state)
	}
	for k, n := range gl {
		ch <- prometheus.MustNewConstMetric(glJobsDesc, prometheus.GaugeValue, float64(n), k[0], nameOf[k[0]], c.o.systemID, k[1], k[2], k[2])
	}
	for ex, n := range alive {
		ch <- prometheus.MustNewConstMetric(hostsAliveDesc, prometheus.GaugeValue, float64(n), ex)
	}
	ch <- prometheus.MustNewConstMetric(glConcurrentDesc, prometheus.GaugeValue, float64(c.d.Stats().Concurrent))
	c.o.mu.Lock()
	paused := map[string]bool{}
	now := time.Now()
	for id, until := range c.o.paused {
		paused[id] = now.Before(until)
	}
	c.o.mu.Unlock()
	for _, r := range cfg.Runners {
		ch <- prometheus.MustNewConstMetric(glLimitDesc, prometheus.GaugeValue, float64(r.Limit), r.ID(), r.DisplayName(), c.o.systemID)
		v := 0.0
		if paused[r.ID()] {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(runnerPausedDesc, prometheus.GaugeValue, v, r.ID())
	}
}

// --- GitLab request metrics

// wrapTransport counts runner's GitLab requests by endpoint and status,
// under gitlab-runner's metric and endpoint names.
func (o *ops) wrapTransport(runner string) func(http.RoundTripper) http.RoundTripper {
	if o == nil {
		return nil
	}
	return func(next http.RoundTripper) http.RoundTripper {
		if next == nil {
			next = http.DefaultTransport
		}
		return roundTripFunc(func(req *http.Request) (*http.Response, error) {
			start := time.Now()
			resp, err := next.RoundTrip(req)
			ep, method := endpointOf(req.Method, req.URL.Path), strings.ToLower(req.Method)
			if err != nil {
				o.apiErrors.WithLabelValues(runner, ep, method).Inc()
				return resp, err
			}
			o.apiStatuses.WithLabelValues(runner, o.systemID, ep, strconv.Itoa(resp.StatusCode), method).Inc()
			o.apiDuration.WithLabelValues(runner, o.systemID, ep, statusClass(resp.StatusCode), method).Observe(time.Since(start).Seconds())
			return resp, err
		})
	}
}

// paasClient is the HTTP client of executor's PaaS API at apiURL: its
// requests to that host are counted by endpoint (paasEndpoint), status and
// method; others (GitLab's group attributes) pass through uncounted. nil
// without ops (tools).
func (o *ops) paasClient(executor, apiURL string) *http.Client {
	if o == nil {
		return nil
	}
	base, err := url.Parse(apiURL)
	if err != nil {
		return nil
	}
	prefix := strings.TrimRight(base.Path, "/")
	rt := o.paasTransport(executor, func(req *http.Request) string {
		if req.URL.Host != base.Host {
			return ""
		}
		return paasEndpoint(req.Method, strings.TrimPrefix(req.URL.Path, prefix))
	})(http.DefaultTransport)
	return &http.Client{Timeout: 60 * time.Second, Transport: rt}
}

// engineTransport counts local-docker's Docker engine API requests, the
// PaaS API of that executor (localdocker.Options.WrapTransport); nil
// without ops.
func (o *ops) engineTransport(executor string) func(http.RoundTripper) http.RoundTripper {
	if o == nil {
		return nil
	}
	return o.paasTransport(executor, func(req *http.Request) string {
		return engineEndpoint(req.Method, req.URL.Path)
	})
}

// paasTransport wraps a transport so that the requests endpoint names
// are counted in the paas_api_* metrics; endpoint "" passes uncounted.
func (o *ops) paasTransport(executor string, endpoint func(*http.Request) string) func(http.RoundTripper) http.RoundTripper {
	return func(next http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(req *http.Request) (*http.Response, error) {
			ep := endpoint(req)
			if ep == "" {
				return next.RoundTrip(req)
			}
			start := time.Now()
			resp, err := next.RoundTrip(req)
			method := strings.ToLower(req.Method)
			if err != nil {
				o.paasErrors.WithLabelValues(executor, ep, method).Inc()
				return resp, err
			}
			o.paasStatuses.WithLabelValues(executor, ep, strconv.Itoa(resp.StatusCode), method).Inc()
			o.paasDuration.WithLabelValues(executor, ep, statusClass(resp.StatusCode), method).Observe(time.Since(start).Seconds())
			return resp, err
		})
	}
}

var engineVersion = regexp.MustCompile(`^v[0-9]+\.[0-9]+$`)

// engineActions are the Docker engine API's operations on one object
// (/containers/{id}/start, /images/{name}/json, …) that name an endpoint;
// another last segment is an object's name or id.
var engineActions = map[string]bool{
	"attach": true, "changes": true, "connect": true, "disconnect": true, "exec": true,
	"export": true, "get": true, "history": true, "kill": true, "logs": true, "pause": true,
	"push": true, "rename": true, "resize": true, "restart": true, "start": true,
	"stats": true, "stop": true, "tag": true, "top": true, "unpause": true,
	"update": true, "wait": true,
}

// engineEndpoint names a Docker engine API call by object kind and
// operation (container_start, image_inspect, volume_remove, events…),
// never by an object's name, so that the label stays bounded.
func engineEndpoint(method, path string) string {
	seg := strings.Split(strings.Trim(path, "/"), "/")
	if len(seg) > 0 && engineVersion.MatchString(seg[0]) {
		seg = seg[1:]
	}
	if len(seg) == 0 || seg[0] == "" {
		return "other"
	}
	kind := strings.TrimSuffix(seg[0], "s")
	switch seg[0] {
	case "_ping":
		return "ping"
	case "info", "version", "events", "build":
		return seg[0]
	case "containers", "images", "volumes", "networks", "exec":
	default:
		return "other"
	}
	last := seg[len(seg)-1]
	switch {
	case len(seg) == 1 && method == http.MethodGet:
		return kind + "_list"
	case len(seg) == 2 && last == "json":
		return kind + "_list"
	case len(seg) == 2 && (last == "create" || last == "prune" || last == "load"):
		return kind + "_" + last
	case len(seg) >= 3 && last == "json":
		return kind + "_inspect"
	case len(seg) >= 3 && last == "archive":
		return kind + "_archive_" + strings.ToLower(method)
	case len(seg) >= 3 && engineActions[last]:
		return kind + "_" + last
	case len(seg) >= 2 && method == http.MethodDelete:
		return kind + "_remove"
	case len(seg) >= 2 && method == http.MethodGet:
		return kind + "_inspect"
	}
	return kind + "_other"
}

// paasEndpoint names a Clever Cloud API call (path below the API's base).
func paasEndpoint(method, path string) string {
	seg := strings.Split(strings.Trim(path, "/"), "/")
	switch {
	case len(seg) == 2 && seg[0] == "products":
		return "products_" + seg[1]
	case len(seg) >= 3 && seg[0] == "organisations" && seg[2] == "applications":
		switch {
		case len(seg) == 3 && method == http.MethodGet:
			return "list_applications"
		case len(seg) == 3 && method == http.MethodPost:
			return "create_application"
		case len(seg) == 4 && method == http.MethodGet:
			return "get_application"
		case len(seg) == 4 && method == http.MethodDelete:
			return "delete_application"
		case len(seg) == 5 && seg[4] == "env":
			return "set_application_env"
		}
	}
	return "other"
}

// statusClass is gitlab-runner's status_class label: 2xx, 4xx, …
func statusClass(code int) string {
	if code < 100 || code > 599 {
		return "unknown"
	}
	return strconv.Itoa(code/100) + "xx"
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

var jobPath = regexp.MustCompile(`/api/v4/jobs/\d+(/[a-z_]+)?$`)

// endpointOf names a runner API call as gitlab-runner does (job_status,
// GET /job, is paas-runner's: gitlab-runner does not make it).
func endpointOf(method, path string) string {
	switch {
	case strings.HasSuffix(path, "/api/v4/jobs/request"):
		return "request_job"
	case strings.HasSuffix(path, "/api/v4/runners/verify"):
		return "verify_runner"
	case strings.HasSuffix(path, "/api/v4/runners") && method == http.MethodPost:
		return "register_runner"
	case strings.HasSuffix(path, "/api/v4/runners") && method == http.MethodDelete:
		return "unregister_runner"
	case strings.HasSuffix(path, "/api/v4/job") && method == http.MethodGet:
		// paas-runner's own: watching a launched job (job token), the
		// bulk of its requests once jobs run
		return "job_status"
	}
	if m := jobPath.FindStringSubmatch(path); m != nil {
		switch {
		case m[1] == "" && method == http.MethodPut:
			return "update_job"
		case m[1] == "/trace":
			return "patch_trace"
		case m[1] == "/artifacts" && method == http.MethodPost:
			return "upload_artifacts"
		case m[1] == "/artifacts":
			return "download_artifacts"
		}
	}
	return "other"
}

// logErrors is gitlab-runner's gitlab_runner_errors_total{level}: the
// warning and error lines logged (helpers/prometheus/log_hook.go). Its hook
// goes on the daemon's logger (zap.Hooks).
type logErrors struct {
	warning, err, fatal, panic atomic.Int64
}

var logErrorsDesc = prometheus.NewDesc("gitlab_runner_errors_total", "The number of caught errors.", []string{"level"}, nil)

func (l *logErrors) hook(e zapcore.Entry) error {
	switch {
	case e.Level == zapcore.WarnLevel:
		l.warning.Add(1)
	case e.Level == zapcore.ErrorLevel:
		l.err.Add(1)
	case e.Level == zapcore.FatalLevel:
		l.fatal.Add(1)
	case e.Level > zapcore.ErrorLevel: // DPanic, Panic
		l.panic.Add(1)
	}
	return nil
}

func (l *logErrors) Describe(ch chan<- *prometheus.Desc) { ch <- logErrorsDesc }

func (l *logErrors) Collect(ch chan<- prometheus.Metric) {
	for level, n := range map[string]*atomic.Int64{"panic": &l.panic, "fatal": &l.fatal, "error": &l.err, "warning": &l.warning} {
		ch <- prometheus.MustNewConstMetric(logErrorsDesc, prometheus.CounterValue, float64(n.Load()), level)
	}
}

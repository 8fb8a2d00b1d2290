// Command paas-runner is the daemon: it acquires GitLab CI jobs and runs
// each on a fresh PaaS host. This package only wires the others together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	dockerclient "github.com/docker/docker/client"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator"
	"gitlab.com/paas-runner/paas-runner/dispatcher"
	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker"
	"gitlab.com/paas-runner/paas-runner/guard"
	"gitlab.com/paas-runner/paas-runner/internal/cliflags"
	"gitlab.com/paas-runner/paas-runner/internal/logging"
	"gitlab.com/paas-runner/paas-runner/internal/systemid"
	"gitlab.com/paas-runner/paas-runner/internal/version"
	"gitlab.com/paas-runner/paas-runner/jobrunner"
	"gitlab.com/paas-runner/paas-runner/state"
)

// Exit codes.
const (
	exitOK      = 0
	exitFatal   = 1
	exitUsage   = 2
	usageHeader = `usage: paas-runner [flags] CONFIG

Runs GitLab CI jobs on fresh PaaS hosts, one per job. CONFIG is the TOML
configuration file (gitlab-runner / Heptapod PAAS Runner shape).

Commands (each has --help):
  status [--json] CONFIG          the tracked jobs, from the daemon or the state file
  locks [--json] CONFIG           deployment locks: holders, waiters, pools
  locks release CONFIG NAME --yes force-release one lock
  pool add|add-claimed|remove|update CONFIG POOL LOCK   pool-resource's operations on a pool
  guard [flags]                   wait for conflicting pipelines (gitlab-job-guard)
  host-image                      build local-docker's host base image
  exec-fetched-job --config runner.toml job.json   the inner runner (on a job's host)

Flags:
`
)

func main() {
	if code, ok := asHeptapodRunner(os.Args, os.Stderr); ok {
		os.Exit(code)
	}
	if code, ok := asJobGuard(os.Args, os.Stdout, os.Stderr); ok {
		os.Exit(code) // guard.go
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type options struct {
	configPath     string
	pollCycles     int
	logLevel       string
	logFormat      string
	version        bool
	debugSignal    bool
	pollInterval   float64
	progressPoll   float64
	setPollIntvl   bool
	setProgressInt bool
}

// verbMistake reports a command-line mistake of a command on one line, with
// the hint to its --help: exit 2.
func verbMistake(stderr io.Writer, verb, msg string) int {
	fmt.Fprintf(stderr, "paas-runner: %s: %s (see paas-runner %s --help)\n", verb, msg, verb)
	return exitUsage
}

// usageError is a command-line mistake: exit 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func parseArgs(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("paas-runner", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.IntVar(&o.pollCycles, "poll-cycles", 0, "stop gracefully after `N` polling cycles (0: run until signalled)")
	fs.StringVar(&o.logLevel, "log-level", "", "log `level`: debug, info, warn, error (default: log_level from CONFIG, else info)")
	fs.StringVar(&o.logLevel, "l", "", "short for --log-level")
	fs.StringVar(&o.logLevel, "logging-level", "", "alias of --log-level (Heptapod)")
	fs.StringVar(&o.logFormat, "log-format", "", "log `format`: text or json (default: log_format from CONFIG, else text)")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	fs.BoolVar(&o.debugSignal, "debug-signal", false, "on SIGUSR1, log the tracked jobs (tokens are not logged)")
	fs.Float64Var(&o.pollInterval, "poll-interval", 0, "deprecated: use check_interval in CONFIG")
	fs.Float64Var(&o.progressPoll, "job-progress-poll-interval", 0, "deprecated: use job_progress_poll_interval in CONFIG")
	fs.Usage = func() {
		fmt.Fprint(stderr, usageHeader)
		fs.SetOutput(stderr)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	positional, err := cliflags.Parse(fs, args)
	if errors.Is(err, flag.ErrHelp) { // flag has printed the usage
		return nil, flag.ErrHelp
	}
	if err != nil {
		return nil, &usageError{err.Error()}
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "poll-interval":
			o.setPollIntvl = true
		case "job-progress-poll-interval":
			o.setProgressInt = true
		}
	})
	if o.version {
		return o, nil
	}
	switch {
	case len(positional) == 0:
		return nil, &usageError{"missing CONFIG: the path of the configuration file"}
	case len(positional) > 1 && isCommandTypo(positional[0]):
		return nil, &usageError{fmt.Sprintf("unknown command %q (commands: status, locks, pool, guard, host-image, exec-fetched-job)", positional[0])}
	case len(positional) > 1:
		return nil, &usageError{fmt.Sprintf("unexpected arguments after CONFIG: %s", strings.Join(positional[1:], " "))}
	}
	if o.pollCycles < 0 {
		return nil, &usageError{"--poll-cycles must not be negative"}
	}
	if (o.setPollIntvl && o.pollInterval <= 0) || (o.setProgressInt && o.progressPoll <= 0) {
		return nil, &usageError{"--poll-interval and --job-progress-poll-interval must be positive"}
	}
	o.configPath = positional[0]
	return o, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	// Catch signals first: one that arrives while starting up must drain,
	// not kill.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGHUP)
	defer signal.Stop(sigs)
	if len(args) > 0 {
		switch args[0] {
		case "host-image":
			return hostImage(args[1:], stdout, stderr)
		case "exec-fetched-job":
			return execFetchedJob(args[1:], stderr)
		case "guard":
			return guardCmd(args[1:], stdout, stderr)
		case "status":
			return statusCmd(args[1:], stdout, stderr)
		case "locks":
			return locksCmd(args[1:], stdout, stderr)
		case "pool":
			return poolCmd(args[1:], stderr)
		}
	}
	o, err := parseArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "paas-runner: %v (see --help)\n", err)
		return exitUsage
	}
	if o.version {
		fmt.Fprintln(stdout, version.String())
		return exitOK
	}
	reg := newRegistry()
	cfg, err := config.Load(o.configPath, config.Options{Executors: reg.names()})
	if err != nil {
		fmt.Fprintln(stderr, prefixLines("paas-runner: ", err.Error()))
		return exitUsage
	}
	level, format := firstOf(o.logLevel, cfg.LogLevel, "info"), firstOf(o.logFormat, cfg.LogFormat, "text")
	log, logLevel, err := logging.NewAtomic(level, format)
	if err != nil {
		fmt.Fprintf(stderr, "paas-runner: %v\n", err)
		return exitUsage
	}
	defer func() { _ = log.Sync() }()
	logErrs := &logErrors{} // gitlab_runner_errors_total
	log = log.WithOptions(zap.Hooks(logErrs.hook))
	if w := config.PermissionWarning(cfg.Path); w != "" {
		log.Warn("the configuration file is readable by others than its owner: "+w, zap.String("config", cfg.Path))
	}
	if o.setPollIntvl {
		log.Warn("--poll-interval is deprecated: set check_interval in the configuration", zap.Float64("check_interval", o.pollInterval))
		cfg.CheckInterval = o.pollInterval
	}
	if o.setProgressInt {
		log.Warn("--job-progress-poll-interval is deprecated: set job_progress_poll_interval in the configuration")
		cfg.JobProgressPollInterval = o.progressPoll
	}
	for _, w := range cfg.Warnings {
		log.Warn(w.Msg, zap.String("key", w.Key), zap.String("at", w.String()))
	}

	store, err := state.Open(cfg.StateFile)
	if err != nil {
		if msg, ok := strings.CutPrefix(err.Error(), "state_file: "); ok {
			// a problem of the path the file gives: located as its errors are
			err = cfg.KeyError("state_file", msg)
		}
		fmt.Fprintf(stderr, "paas-runner: %v\n", err)
		return exitUsage
	}
	started := false // until the dispatcher runs, a refusal leaves the state file as it was
	defer func() {
		if started {
			_ = store.Close()
		} else {
			_ = store.Release()
		}
	}()
	systemID, err := systemid.ForStateFile(store.Path())
	if err != nil {
		fmt.Fprintf(stderr, "paas-runner: %v\n", err)
		return exitUsage
	}

	ctx := context.Background()
	ob := newOps(cfg, systemID, log)
	ob.logErrors = logErrs
	env := executorEnv{StatePath: store.Path(), SystemID: systemID, ops: ob}
	runners, err := buildRunners(ctx, cfg, reg, env, log)
	if err != nil {
		fmt.Fprintln(stderr, prefixLines("paas-runner: ", err.Error()))
		return exitUsage
	}
	guards, err := buildGuards(ctx, cfg, store, systemID, log)
	if err != nil {
		fmt.Fprintf(stderr, "paas-runner: %v\n", err)
		return exitUsage
	}
	dcfg := dispatcherConfig(cfg, o, log)
	if q := cfg.QuotaComputation; q != nil {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		unit, err := executors.FlavorWeight(qctx, runners[q.RunnerIndex].Executor, q.ReferenceFlavor)
		cancel()
		if err != nil {
			fmt.Fprintf(stderr, "paas-runner: %s: quota_computation.reference_flavor: runner %q: %v\n", cfg.Path, q.ReferenceRunner, err)
			return exitUsage
		}
		dcfg.QuotaUnit, dcfg.Quota = unit, unit*float64(q.ReferenceJobsCount)
		log.Info("weighted quota", zap.String("reference_runner", q.ReferenceRunner), zap.String("reference_flavor", q.ReferenceFlavor),
			zap.Float64("reference_weight", unit), zap.Int("reference_jobs_count", q.ReferenceJobsCount), zap.Float64("weight_quota", dcfg.Quota))
	}
	dcfg.Observer = ob
	ob.guardWaits = guardWaiting(guards, systemID)
	pipes, pipeTokens := buildPipelineGuardTokens(cfg, store, systemID, guards.Core(), log)
	// pipeline guards first: a job waiting for other pipelines holds no lock
	dcfg.Guards, dcfg.MaxWaiting = append(dcfg.Guards, pipes, guards), cfg.Guards.MaxWaitingJobs
	d, err := dispatcher.New(dcfg, store, runners)
	if err != nil {
		fmt.Fprintf(stderr, "paas-runner: %v\n", err)
		return exitUsage
	}
	guards.SetGrantHook(d.Granted) // a job granted its locks goes ahead of new acquisitions
	rl := newReloader(cfg, o, reg, env, log, logLevel, d, guards, runners)
	rl.pipeTokens, rl.around, rl.ob = pipeTokens, ob.reloading, ob
	ob.reloader = rl

	if cfg.ListenAddress != "" {
		srv, err := serveMetrics(cfg.ListenAddress, d, guards, pipes, ob, log)
		if err != nil {
			fmt.Fprintf(stderr, "paas-runner: listen_address %s: %v\n", cfg.ListenAddress, err)
			return exitFatal
		}
		defer srv.Close()
	}

	log.Info("starting", zap.String("version", version.Version), zap.String("config", cfg.Path), zap.String("state_file", store.Path()),
		zap.Int("runners", len(runners)), zap.Int("concurrent", cfg.Concurrent), zap.String("system_id", systemID))
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	ob.attach(runCtx, d, store, statusInterval())
	startReloads(runCtx, rl)
	go handleSignals(runCtx, sigs, stop, d, ob, o.debugSignal, log)
	guardsCtx, stopGuards := context.WithCancel(ctx)
	defer stopGuards()
	go guards.Run(guardsCtx)
	if store.Imported() {
		log.Info("imported a Heptapod PAAS Runner state file; it is rewritten in paas-runner's format", zap.String("state_file", store.Path()))
	}
	started = true
	if err := d.Run(runCtx); err != nil {
		log.Error("fatal", zap.Error(err))
		return exitFatal
	}
	waitGuardReleases(guards, 30*time.Second, log)
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := store.Save(sctx); err != nil {
		log.Error("saving state", zap.Error(err))
		return exitFatal
	}
	if err := store.Close(); err != nil {
		log.Error("saving state", zap.Error(err))
		return exitFatal
	}
	log.Info("state saved; exiting", zap.String("state_file", store.Path()))
	return exitOK
}

// handleSignals: the first SIGTERM/SIGINT/SIGQUIT drains; a second one
// stops waiting. SIGUSR1 logs the tracked jobs when asked for. SIGHUP
// reloads the configuration (ob's reloader), except while draining.
func handleSignals(ctx context.Context, sigs <-chan os.Signal, drain context.CancelFunc, d forcer, ob *ops, debug bool, log *zap.Logger) {
	draining := false
	done := ctx.Done()
	for {
		select {
		case <-done:
			if !draining {
				return
			}
			// Draining cancelled ctx itself: from now on only a second
			// signal matters (selecting on a closed channel would spin).
			done = nil
		case s := <-sigs:
			if s == syscall.SIGHUP {
				if draining {
					log.Info("SIGHUP ignored: no reload while draining")
				} else {
					ob.hangup()
				}
				continue
			}
			if s == syscall.SIGUSR1 {
				if debug {
					logSnapshot(d, log)
				}
				continue
			}
			if !draining {
				draining = true
				log.Info("signal received: draining (send it again to stop waiting for in-flight steps)", zap.String("signal", s.String()))
				drain()
				done = nil
				continue
			}
			log.Warn("second signal: stopping now; in-flight steps resume at next start", zap.String("signal", s.String()))
			d.Force()
			return
		}
	}
}

// forcer is what handleSignals needs of the dispatcher.
type forcer interface {
	Force()
	Snapshot() []dispatcher.JobInfo
	Stats() dispatcher.Stats
}

func logSnapshot(d forcer, log *zap.Logger) {
	jobs := d.Snapshot()
	st := d.Stats()
	log.Info("tracked jobs", zap.Int("jobs", st.Jobs), zap.Int("provisioning", st.Provisioning), zap.Int("launched", st.Launched))
	for _, j := range jobs {
		// "runner" as in the dispatcher's lines: the name, else the ID
		name := j.RunnerName
		if name == "" {
			name = j.Runner
		}
		log.Info("tracked job", zap.String("runner", name), zap.String("runner_id", j.Runner), zap.Int64("job_id", j.JobID), zap.String("phase", string(j.Phase)), zap.Time("since", j.Since))
	}
}

func dispatcherConfig(cfg *config.Config, o *options, log *zap.Logger) dispatcher.Config {
	sec := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	dc := dispatcher.Config{
		Concurrent:                 cfg.Concurrent,
		MaxProvisioning:            cfg.PaasMaxConcurrentProvisioning,
		CheckInterval:              sec(cfg.CheckInterval),
		TrackingRPS:                cfg.PaasTrackingRequestsPerSecond,
		KeepFinished:               cfg.PaasFinishedJobsKeepResources,
		DecommissionLaunchFailures: cfg.PaasDecommissionLaunchFailures,
		MinBetweenLaunches:         sec(cfg.PaasMinSecondsBetweenLaunches),
		ShutdownTimeout:            sec(cfg.ShutdownTimeout),
		PollCycles:                 o.pollCycles,
		ReapInterval:               10 * time.Minute,
		Logger:                     log.Named("dispatcher"),
	}
	if cfg.PaasLogStatistics {
		dc.StatsInterval = max(sec(cfg.JobProgressPollInterval), 10*time.Second)
	}
	testOverrides(&dc)
	return dc
}

func buildRunners(ctx context.Context, cfg *config.Config, reg registry, env executorEnv, log *zap.Logger) ([]*dispatcher.Runner, error) {
	systemID := env.SystemID
	var out []*dispatcher.Runner
	var errs []error
	for i := range cfg.Runners {
		rc := &cfg.Runners[i]
		rlog := log.With(zap.String("runner", rc.DisplayName()))
		client, err := coordinator.New(coordinator.Config{
			URL: rc.URL, Token: rc.Token, TLSCAFile: rc.TLSCAFile, SystemID: systemID,
			Info: coordinator.Info{Name: version.Name, Version: version.Version, Revision: version.Revision,
				Platform: runtime.GOOS, Architecture: runtime.GOARCH, Executor: "docker", Shell: "sh", Features: daemonFeatures()},
			UserAgent:     version.UserAgent(),
			Logger:        rlog.Named("coordinator"),
			WrapTransport: env.ops.wrapTransport(rc.ID()),
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: runners[%d]: %w", cfg.Path, i, err))
			continue
		}
		ex, err := reg.build(ctx, rc, env, rlog.Named("executor"))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: runners[%d] (%s executor): %w", cfg.Path, i, rc.Executor, err))
			continue
		}
		out = append(out, &dispatcher.Runner{
			Name: rc.DisplayName(), ID: rc.ID(), LegacyIDs: legacyIDs(rc), ExecutorName: rc.Executor, Executor: ex, Source: client,
			Limit: rc.Limit, UnhealthyLimit: rc.UnhealthyRequestsLimit,
			UnhealthyInterval: time.Duration(rc.UnhealthyInterval * float64(time.Second)),
		})
	}
	return out, errors.Join(errs...)
}

// legacyIDs are the IDs Heptapod PAAS Runner knew rc's jobs by, when they
// differ from rc.ID().
func legacyIDs(rc *config.Runner) []string {
	if l := config.LegacyID(rc.Token); l != rc.ID() {
		return []string{l}
	}
	return nil
}

// features are what jobs run by this runner support, as advertised to
// GitLab: the inner runner's (exec-fetched-job), kept truthful there.
func features() map[string]bool { return jobrunner.Features() }

// daemonFeatures are what the daemon advertises when it requests jobs: the
// inner runner's, plus two-phase job commit, which the daemon itself does
// (it confirms a job with PUT state=running once the job is durable).
func daemonFeatures() map[string]bool {
	f := features()
	f["two_phase_job_commit"] = true
	return f
}

// execFetchedJob is the inner runner: paas-runner exec-fetched-job
// --config runner.toml job.json. Exit 0 once GitLab accepted the job's
// final state, whatever it is; non-zero only when it could not be reported.
func execFetchedJob(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("paas-runner exec-fetched-job", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfgPath := fs.String("config", "", "runner.toml written by the executor")
	fromStdin := fs.Bool(strings.TrimPrefix(localdocker.FilesFromStdin, "--"), false, "read runner.toml and job.json (a tar) from standard input first")
	pos, err := cliflags.Parse(fs, args)
	const usage = "usage: paas-runner exec-fetched-job --config runner.toml job.json"
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprintln(stderr, usage)
		return exitOK
	case err != nil:
		fmt.Fprintf(stderr, "paas-runner: exec-fetched-job: %v (%s)\n", err, usage)
		return exitUsage
	case *cfgPath == "":
		fmt.Fprintf(stderr, "paas-runner: exec-fetched-job: missing --config (%s)\n", usage)
		return exitUsage
	case len(pos) == 0:
		fmt.Fprintf(stderr, "paas-runner: exec-fetched-job: missing job.json (%s)\n", usage)
		return exitUsage
	case len(pos) > 1:
		fmt.Fprintf(stderr, "paas-runner: exec-fetched-job: unexpected arguments after job.json: %s (%s)\n", strings.Join(pos[1:], " "), usage)
		return exitUsage
	}
	if *fromStdin {
		if err := localdocker.ReceiveFiles(os.Stdin, *cfgPath, pos[0]); err != nil {
			fmt.Fprintf(stderr, "paas-runner: exec-fetched-job: the job's files did not arrive on standard input: %v\n", err)
			return localdocker.ExitNoFiles
		}
	}
	log, _ := logging.New(firstOf(os.Getenv("PAAS_RUNNER_LOG_LEVEL"), "info"), "text")
	rc, err := jobrunner.LoadConfig(*cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "paas-runner: %v\n", err)
		return exitUsage
	}
	j, err := jobrunner.LoadJob(pos[0])
	if err != nil {
		fmt.Fprintf(stderr, "paas-runner: %v\n", err)
		return exitUsage
	}
	cli, err := dockerclient.NewClientWithOpts(dockerclient.FromEnv, dockerclient.WithAPIVersionNegotiation())
	if err != nil {
		fmt.Fprintf(stderr, "paas-runner: docker client: %v\n", err)
		return exitFatal
	}
	defer cli.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err = jobrunner.Run(ctx, jobrunner.Options{Config: rc, Job: j, Docker: cli, Logger: log, UserAgent: version.UserAgent(),
		Info: coordinator.Info{Name: version.Name, Version: version.Version, Revision: version.Revision, Platform: runtime.GOOS,
			Architecture: runtime.GOARCH, Executor: "docker", Shell: "sh", Features: features()}})
	if err != nil {
		fmt.Fprintf(stderr, "paas-runner: job %d: %v\n", j.ID, err)
		return exitFatal
	}
	return exitOK
}

func serveMetrics(addr string, d *dispatcher.Dispatcher, guards *guard.Manager, pipes *guard.Pipelines, ob *ops, log *zap.Logger) (*http.Server, error) {
	reg := prometheus.NewRegistry()
	gauge := func(name, help string, f func(dispatcher.Stats) float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "paas_runner", Name: name, Help: help},
			func() float64 { return f(d.Stats()) }))
	}
	counter := func(name, help string, f func(dispatcher.Stats) uint64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "paas_runner", Name: name, Help: help},
			func() float64 { return float64(f(d.Stats())) }))
	}
	gauge("jobs", "Jobs in the daemon's care, from acquisition to host removal.", func(s dispatcher.Stats) float64 { return float64(s.Jobs) })
	gauge("jobs_provisioning", "Jobs acquired but not launched yet.", func(s dispatcher.Stats) float64 { return float64(s.Provisioning) })
	gauge("jobs_launched", "Jobs running on their host.", func(s dispatcher.Stats) float64 { return float64(s.Launched) })
	gauge("jobs_decommissioning", "Hosts waiting for removal.", func(s dispatcher.Stats) float64 { return float64(s.Decommissioning) })
	gauge("hosts_removal_failing", "Hosts whose removal failed and is being retried with backoff (they may be billing).", func(s dispatcher.Stats) float64 { return float64(s.RemovalsFailing) })
	gauge("concurrent_limit", "The concurrent setting.", func(s dispatcher.Stats) float64 { return float64(s.Concurrent) })
	if d.Stats().WeightQuota > 0 {
		gauge("quota_weight_limit", "The weighted quota (quota_computation): reference flavor weight times reference_jobs_count.", func(s dispatcher.Stats) float64 { return s.WeightQuota })
		gauge("quota_weight_used", "Sum of the weights of the jobs in the daemon's care.", func(s dispatcher.Stats) float64 { return s.WeightUsed })
		gauge("quota_weight_available", "Weight left in the weighted quota.", func(s dispatcher.Stats) float64 { return max(0, s.WeightQuota-s.WeightUsed) })
		gauge("jobs_waiting_for_quota", "Jobs acquired that wait for room in the weighted quota before provisioning.", func(s dispatcher.Stats) float64 { return float64(s.WeightWaiting) })
	}
	counter("jobs_acquired_total", "Jobs acquired from GitLab.", func(s dispatcher.Stats) uint64 { return s.Acquired })
	counter("jobs_launched_total", "Jobs launched on a host.", func(s dispatcher.Stats) uint64 { return s.LaunchedTotal })
	counter("launch_failures_total", "Jobs failed before launch.", func(s dispatcher.Stats) uint64 { return s.LaunchFailures })
	counter("jobs_finished_total", "Launched jobs seen finished.", func(s dispatcher.Stats) uint64 { return s.Finished })
	counter("hosts_removed_total", "Hosts decommissioned.", func(s dispatcher.Stats) uint64 { return s.Decommissioned })
	counter("host_removal_errors_total", "Failed host removal attempts.", func(s dispatcher.Stats) uint64 { return s.DecommissionErrors })
	counter("tracking_requests_total", "GitLab requests made to watch jobs.", func(s dispatcher.Stats) uint64 { return s.TrackingRequests })
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	serveGuards(guards, pipes, reg, mux)
	ob.register(reg, mux, d)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", zap.Error(err))
		}
	}()
	log.Info("serving metrics", zap.String("listen_address", ln.Addr().String()))
	return srv, nil
}

// hostImage builds local-docker's default host base image:
// paas-runner host-image [--docker-host URL] [--binary PATH].
func hostImage(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("paas-runner host-image", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	host := fs.String("docker-host", "", "Docker engine (default: $DOCKER_HOST, else unix:///var/run/docker.sock)")
	binary := fs.String("binary", "", "static paas-runner binary to put in the image (default: this one)")
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprintln(stderr, "usage: paas-runner host-image [--docker-host URL] [--binary PATH]\n\nBuilds local-docker's host base image and prints its tag.")
		fs.SetOutput(stderr)
		fs.PrintDefaults()
		return exitOK
	case err != nil:
		fmt.Fprintf(stderr, "paas-runner: host-image: %v (see --help)\n", err)
		return exitUsage
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "paas-runner: host-image: unexpected arguments: %s (see --help)\n", strings.Join(fs.Args(), " "))
		return exitUsage
	}
	log, _ := logging.New("info", "text")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	tag, err := localdocker.BuildBaseImage(ctx, *host, version.Version, *binary, log)
	if err != nil {
		fmt.Fprintf(stderr, "paas-runner: host-image: %v\n", err)
		return exitFatal
	}
	fmt.Fprintln(stdout, tag)
	return exitOK
}

// isCommandTypo tells whether the first of several arguments reads as a
// mistyped command rather than a configuration path: a plain word that
// names no file.
func isCommandTypo(arg string) bool {
	if strings.ContainsAny(arg, "./") {
		return false
	}
	_, err := os.Stat(arg)
	return errors.Is(err, os.ErrNotExist)
}

func firstOf(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

func prefixLines(prefix, s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = prefix + l
	}
	return strings.Join(lines, "\n")
}

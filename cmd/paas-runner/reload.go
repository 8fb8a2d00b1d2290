package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/dispatcher"
	"gitlab.com/paas-runner/paas-runner/guard"
	"gitlab.com/paas-runner/paas-runner/internal/logging"
)

// reloader re-reads the configuration on SIGHUP and when the file changes,
// with the strict loader of the start, and applies what can change live:
// concurrent, check_interval, log_level, paas_tracking_requests_per_second,
// paas_max_concurrent_provisioning, the guards' policy and
// max_waiting_jobs, runners added or removed, runners' limit. The rest is
// reported as needing a restart (see restartKeys). An invalid file changes
// nothing: the daemon keeps the configuration in force.
type reloader struct {
	path  string
	opts  *options
	reg   registry
	env   executorEnv
	log   *zap.Logger
	base  *zap.Logger // the daemon's logger, for new runners
	level zap.AtomicLevel
	d     *dispatcher.Dispatcher
	// guards' policy is replaced (SetPolicy); nil when there are none.
	guards *guard.Manager
	// pipeTokens are the pipeline guard's guard_api_token by runner: a
	// reload replaces them (added runners, changed tokens).
	pipeTokens *runnerTokens

	// around wraps every reload: the daemon sets it to ops.reloading, which
	// tells systemd RELOADING=1 before and READY=1 after (with the error in
	// STATUS= when it failed). By default it only runs fn.
	around func(fn func() error) error
	// ob, when set, is told the configuration in force after a reload
	// (readiness, per-runner metrics).
	ob *ops

	requests chan string

	mu sync.Mutex // serialises reloads
	// started is the configuration the daemon started with: keys that need
	// a restart are compared with it.
	started *config.Config
	// runners are the dispatcher runners built so far, by ID, with the
	// configuration entry they were built from.
	runners map[string]builtRunner
	// removed are runners a reload removed: added back, they are the same
	// (the dispatcher keeps their state while their jobs end).
	removed map[string]builtRunner

	// reloads counts reloads by result: ok (applied) or error (refused, the
	// previous configuration stays in force).
	reloads     *prometheus.CounterVec
	lastSuccess prometheus.Gauge
}

type builtRunner struct {
	r  *dispatcher.Runner
	rc config.Runner
}

func newReloader(cfg *config.Config, o *options, reg registry, env executorEnv, log *zap.Logger, level zap.AtomicLevel,
	d *dispatcher.Dispatcher, guards *guard.Manager, runners []*dispatcher.Runner) *reloader {
	rl := &reloader{path: cfg.Path, opts: o, reg: reg, env: env, log: log.Named("reload"), base: log, level: level, d: d, guards: guards,
		around: func(fn func() error) error { return fn() }, requests: make(chan string, 1), started: cfg,
		runners: map[string]builtRunner{}, removed: map[string]builtRunner{},
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "paas_runner", Name: "config_reloads_total",
			Help: "Configuration reloads (SIGHUP, file change), by result: ok (applied), or error (invalid file, runner that could not be built; the previous configuration stays in force)."},
			[]string{"result"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "paas_runner", Name: "config_last_reload_success_timestamp_seconds",
			Help: "When the configuration in force was loaded (start or last applied reload), Unix seconds."}),
	}
	rl.reloads.WithLabelValues("ok")
	rl.reloads.WithLabelValues("error")
	rl.lastSuccess.SetToCurrentTime()
	byID := map[string]*dispatcher.Runner{}
	for _, r := range runners {
		byID[r.ID] = r
	}
	for _, rc := range cfg.Runners {
		if r, ok := byID[rc.ID()]; ok {
			rl.runners[rc.ID()] = builtRunner{r: r, rc: rc}
		}
	}
	return rl
}

// collectors are the reload metrics.
func (rl *reloader) collectors() []prometheus.Collector {
	return []prometheus.Collector{rl.reloads, rl.lastSuccess}
}

// requestReload asks for a reload; requests made while one is pending are
// one.
func (rl *reloader) requestReload(why string) {
	select {
	case rl.requests <- why:
	default:
	}
}

// run performs the requested reloads until ctx ends.
func (rl *reloader) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case why := <-rl.requests:
			_ = rl.around(func() error { return rl.reload(ctx, why) })
		}
	}
}

// reloadDebounce is how long the watcher waits for a burst of file events
// (an editor's write, rename and chmod) to end before reloading once.
const reloadDebounce = 300 * time.Millisecond

// watch requests a reload when the configuration file changes. It watches
// the directory, not the file: editors and configuration managers replace
// the file by renaming a new one over it, which ends a watch on the file
// itself. A burst of events makes one reload.
func (rl *reloader) watch(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	abs, err := filepath.Abs(rl.path)
	if err != nil {
		return err
	}
	if err := w.Add(filepath.Dir(abs)); err != nil {
		return err
	}
	rl.log.Debug("watching the configuration file", zap.String("config", abs))
	var timer *time.Timer
	var fire <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if filepath.Clean(ev.Name) != abs || ev.Op == fsnotify.Chmod {
				continue
			}
			if timer == nil {
				timer = time.NewTimer(reloadDebounce)
			} else {
				timer.Reset(reloadDebounce)
			}
			fire = timer.C
		case <-fire:
			fire = nil
			rl.requestReload("the configuration file changed")
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			rl.log.Warn("watching the configuration file", zap.Error(err))
		}
	}
}

// reload re-reads the file and applies it, or keeps the configuration in
// force and says why.
func (rl *reloader) reload(ctx context.Context, why string) error {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	rl.log.Info("reloading the configuration", zap.String("config", rl.path), zap.String("reason", why))
	err := rl.apply(ctx)
	if err != nil {
		rl.reloads.WithLabelValues("error").Inc()
		for _, line := range strings.Split(err.Error(), "\n") {
			rl.log.Error("configuration reload: "+line, zap.String("config", rl.path))
		}
		rl.log.Error("configuration reload failed: the previous configuration stays in force", zap.String("config", rl.path))
		return err
	}
	rl.reloads.WithLabelValues("ok").Inc()
	rl.lastSuccess.SetToCurrentTime()
	return nil
}

func (rl *reloader) apply(ctx context.Context) error {
	cfg, err := config.Load(rl.path, config.Options{Executors: rl.reg.names()})
	if err != nil {
		return err
	}
	o := rl.opts
	if o.setPollIntvl {
		cfg.CheckInterval = o.pollInterval
	}
	if o.setProgressInt {
		cfg.JobProgressPollInterval = o.progressPoll
	}
	newLevel := rl.level.Level()
	if o.logLevel == "" { // --log-level wins over the file, as at start
		l, err := logging.ParseLevel(cfg.LogLevel)
		if err != nil {
			return fmt.Errorf("%s: log_level: %w", cfg.Path, err)
		}
		newLevel = l
	}

	// Runners: those already built are kept as they are (executor, job
	// source); only their limit changes. New ones are built now.
	var fresh config.Config = *cfg
	fresh.Runners = nil
	var restart []string
	known := func(id string) (builtRunner, bool) {
		if b, ok := rl.runners[id]; ok {
			return b, true
		}
		b, ok := rl.removed[id]
		return b, ok
	}
	for _, rc := range cfg.Runners {
		if b, ok := known(rc.ID()); ok {
			restart = append(restart, runnerRestartKeys(b.rc, rc)...)
			continue
		}
		fresh.Runners = append(fresh.Runners, rc)
	}
	built, err := buildRunners(ctx, &fresh, rl.reg, rl.env, rl.base)
	if err != nil {
		return err
	}
	byID := map[string]*dispatcher.Runner{}
	for _, r := range built {
		byID[r.ID] = r
	}
	var runners []*dispatcher.Runner
	for _, rc := range cfg.Runners {
		if b, ok := known(rc.ID()); ok {
			r := *b.r
			r.Limit = rc.Limit
			runners = append(runners, &r)
			continue
		}
		runners = append(runners, byID[rc.ID()])
	}

	guardsLive := true
	if keys := guardRestartKeys(rl.started.Guards, cfg.Guards); len(keys) > 0 {
		restart = append(restart, keys...)
		guardsLive = false
	}
	dcfg := dispatcherConfig(cfg, o, rl.log)
	dcfg.MaxWaiting = cfg.Guards.MaxWaitingJobs
	if err := rl.d.Reconfigure(dcfg, runners); err != nil {
		return err
	}
	// Applied: nothing below fails.
	rl.level.SetLevel(newLevel)
	if rl.guards != nil && guardsLive {
		rl.guards.SetPolicy(guardPolicy(cfg.Guards))
	}
	if rl.pipeTokens != nil {
		rl.pipeTokens.set(cfg)
	}
	added, removed := 0, 0
	seen := map[string]bool{}
	for _, rc := range cfg.Runners {
		seen[rc.ID()] = true
		b, ok := known(rc.ID())
		if !ok {
			b = builtRunner{r: byID[rc.ID()], rc: rc}
		}
		if _, running := rl.runners[rc.ID()]; !running {
			added++
		}
		delete(rl.removed, rc.ID())
		b.rc.Limit = rc.Limit
		rl.runners[rc.ID()] = b
	}
	for id, b := range rl.runners {
		if !seen[id] {
			delete(rl.runners, id)
			rl.removed[id] = b
			removed++
		}
	}
	if rl.ob != nil {
		rl.ob.configured(rl.inForce(cfg))
	}
	restart = append(restart, topRestartKeys(rl.started, cfg)...)
	for _, w := range cfg.Warnings {
		rl.log.Warn(w.Msg, zap.String("key", w.Key), zap.String("at", w.String()))
	}
	if len(restart) > 0 {
		sort.Strings(restart)
		rl.log.Warn("configuration changes that need a restart to take effect (the values in force are kept)", zap.Strings("keys", restart))
	}
	rl.log.Debug("configuration in force", zap.Int("concurrent", dcfg.Concurrent), zap.Int("paas_max_concurrent_provisioning", dcfg.MaxProvisioning),
		zap.Duration("check_interval", dcfg.CheckInterval), zap.Float64("paas_tracking_requests_per_second", dcfg.TrackingRPS),
		zap.Int("max_waiting_jobs", dcfg.MaxWaiting), zap.Strings("runners", rl.d.RunnerIDs()), zap.Bool("guards_policy_applied", guardsLive))
	rl.log.Info("configuration reloaded", zap.String("config", cfg.Path), zap.Int("concurrent", cfg.Concurrent),
		zap.String("log_level", newLevel.String()), zap.Int("runners", len(cfg.Runners)), zap.Int("runners_added", added),
		zap.Int("runners_removed", removed))
	return nil
}

// inForce is cfg as the daemon runs it after a reload: the kept runners
// as they were built (with their new limit), the added ones as written.
func (rl *reloader) inForce(cfg *config.Config) *config.Config {
	c := *cfg
	c.Runners = nil
	for _, rc := range cfg.Runners {
		c.Runners = append(c.Runners, rl.runners[rc.ID()].rc)
	}
	c.StateFile, c.ListenAddress = rl.started.StateFile, rl.started.ListenAddress
	return &c
}

// topRestartKeys are the top-level keys that differ between the
// configuration the daemon started with and cfg, and that only a restart
// applies.
func topRestartKeys(old, cfg *config.Config) []string {
	var keys []string
	diff := keyDiffer(&keys, "")
	diff("state_file", old.StateFile, cfg.StateFile)
	diff("listen_address", old.ListenAddress, cfg.ListenAddress)
	diff("log_format", old.LogFormat, cfg.LogFormat)
	diff("shutdown_timeout", old.ShutdownTimeout, cfg.ShutdownTimeout)
	diff("job_progress_poll_interval", old.JobProgressPollInterval, cfg.JobProgressPollInterval)
	diff("paas_finished_jobs_keep_resources", old.PaasFinishedJobsKeepResources, cfg.PaasFinishedJobsKeepResources)
	diff("paas_decommission_launch_failures", old.PaasDecommissionLaunchFailures, cfg.PaasDecommissionLaunchFailures)
	diff("paas_min_seconds_between_launches", old.PaasMinSecondsBetweenLaunches, cfg.PaasMinSecondsBetweenLaunches)
	diff("paas_log_statistics", old.PaasLogStatistics, cfg.PaasLogStatistics)
	quota := func(q *config.QuotaComputation) any {
		if q == nil {
			return nil
		}
		return [3]any{q.ReferenceRunner, q.ReferenceFlavor, q.ReferenceJobsCount}
	}
	diff("quota_computation", quota(old.QuotaComputation), quota(cfg.QuotaComputation))
	return keys
}

// guardRestartKeys are the [guards] keys that only a restart applies: the
// backend and its repository, and lease margins. Modes,
// lock_environments, pools (added, removed, their locks, namespaces,
// process_mode, supersede) and max_waiting_jobs change live.
func guardRestartKeys(old, cfg config.Guards) []string {
	var keys []string
	diff := keyDiffer(&keys, "")
	diff("guards.backend", old.Backend, cfg.Backend)
	diff("guards.lease_margin", old.LeaseMargin, cfg.LeaseMargin)
	diff("guards.git", old.Git, cfg.Git)
	return keys
}

// keyDiffer returns a func adding prefix+key to *keys when a and b differ.
func keyDiffer(keys *[]string, prefix string) func(key string, a, b any) {
	return func(key string, a, b any) {
		if !reflect.DeepEqual(a, b) {
			*keys = append(*keys, prefix+key)
		}
	}
}

// runnerRestartKeys are the keys of a runner kept across the reload (same
// token, so same ID) whose change only a restart applies: its executor and
// job source are kept as they were built. Only limit changes live.
func runnerRestartKeys(old, rc config.Runner) []string {
	var keys []string
	diff := keyDiffer(&keys, fmt.Sprintf("runners[%q].", rc.DisplayName()))
	diff("name", old.Name, rc.Name)
	diff("url", old.URL, rc.URL)
	diff("tls-ca-file", old.TLSCAFile, rc.TLSCAFile)
	diff("executor", old.Executor, rc.Executor)
	diff("unhealthy_requests_limit", old.UnhealthyRequestsLimit, rc.UnhealthyRequestsLimit)
	diff("unhealthy_interval", old.UnhealthyInterval, rc.UnhealthyInterval)
	diff("inner_image", old.InnerImage, rc.InnerImage)
	diff("local_docker", old.LocalDocker, rc.LocalDocker)
	diff("cc_*", old.Clever, rc.Clever)
	// The keys forwarded to the inner runner, each by its name.
	diff("docker", old.Inner["docker"], rc.Inner["docker"])
	diff("cache", old.Inner["cache"], rc.Inner["cache"])
	inner := map[string]bool{}
	for k := range old.Inner {
		inner[k] = true
	}
	for k := range rc.Inner {
		inner[k] = true
	}
	for _, k := range slices.Sorted(maps.Keys(inner)) {
		if k != "docker" && k != "cache" {
			diff(k, old.Inner[k], rc.Inner[k])
		}
	}
	return keys
}

// startReloads runs the reloader and the file watcher until ctx ends.
func startReloads(ctx context.Context, rl *reloader) {
	go rl.run(ctx)
	go func() {
		if err := rl.watch(ctx); err != nil && !errors.Is(err, context.Canceled) {
			rl.log.Warn("cannot watch the configuration file; reload with SIGHUP", zap.Error(err), zap.String("config", rl.path))
		}
	}()
}

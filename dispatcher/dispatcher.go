// Package dispatcher is paas-runner's loop: acquire jobs from GitLab, pass
// them through guards, provision a host per job, launch, track, and remove
// the host when the job ends; drain on shutdown; resume after a restart.
//
// It declares the small interfaces it consumes (JobSource, Store, Guard) and
// knows executors only through the executors.Executor interface.
package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/internal/backoff"
	"gitlab.com/paas-runner/paas-runner/job"
	"gitlab.com/paas-runner/paas-runner/state"
)

// TraceStatusWriter is a JobSource that also tells GitLab's Job-Status
// answer to a log write (running, canceling). Optional: a job waiting for
// a guard is then known canceling from its waiting line's answer.
type TraceStatusWriter interface {
	WriteTraceStatus(ctx context.Context, id int64, jobToken string, offset int64, data []byte) (next int64, jobStatus string, err error)
}

// JobSource is the GitLab side of one [[runners]] entry.
type JobSource interface {
	// RequestJob returns a job, nil when there is none, or an error. An
	// error for a job handed out but unusable (a bad payload) implements
	// UnusableJob, so that the job can be failed in GitLab.
	RequestJob(ctx context.Context) (*job.Acquired, error)
	// ConfirmJob takes a job GitLab handed out (PUT state=running: the
	// second phase of two-phase job commit; a keep-alive on a job already
	// running). It returns the job's status, running or canceling;
	// job.ErrNotRunning when the job is not this runner's to run any more.
	ConfirmJob(ctx context.Context, id int64, jobToken string) (string, error)
	// JobStatus is running or canceling; job.ErrNotRunning once it ended.
	JobStatus(ctx context.Context, jobToken string) (string, error)
	// FailJob reports a job failed, retrying until accepted or ctx ends;
	// a job already final is success.
	FailJob(ctx context.Context, id int64, jobToken, reason string) error
	// WriteTrace appends to the job log at offset and returns the next
	// offset; job.ErrNotRunning when the job ended.
	WriteTrace(ctx context.Context, id int64, jobToken string, offset int64, data []byte) (int64, error)
}

// UnusableJob is implemented by RequestJob errors about a job GitLab
// handed out that cannot be run (its payload is invalid): it tells the job
// (id 0 when even that could not be read).
type UnusableJob interface {
	error
	UnusableJob() (id int64, jobToken string)
}

// Store is where jobs are made durable (package state implements it).
type Store interface {
	Jobs() []state.Job
	Put(state.Job)
	Delete(state.Key)
	// Sync returns once every earlier Put/Delete is durable.
	Sync(ctx context.Context) error
}

// Guard decides, between acquisition and provisioning, whether a job may
// go on (deployment locks, environment pools, pipeline conflicts). It may
// block until the job may proceed.
type Guard interface {
	// Admit returns nil to let the job be provisioned, with variables to
	// add to its payload, or an error carrying the reason the job is
	// failed with (a FailureReason() string method, or executors.Error).
	// jobLog writes a line to the job's log. A guard about to block calls
	// blocking first: the job then gives its concurrency slots back while
	// it waits. Admit must return when ctx ends (cancel, shutdown).
	Admit(ctx context.Context, runnerID string, j *job.Acquired, jobLog func(line string), blocking func()) ([]job.Variable, error)
	// Release frees what the job holds; called once it left the
	// dispatcher's care (its host removed, or none made).
	Release(runnerID string, jobID int64)
}

// Runner is one [[runners]] entry as the dispatcher sees it.
type Runner struct {
	// Name is for logs (the configured name).
	Name string
	// ID keys the runner in the state file and names its hosts: unique
	// per runner and stable (config.Runner.ID).
	ID string
	// LegacyIDs are other IDs this runner's jobs may carry in the state
	// file: Heptapod PAAS Runner keyed them by the token's first 8
	// characters. Such jobs are taken over and re-keyed to ID at resume.
	LegacyIDs    []string
	ExecutorName string
	Executor     executors.Executor
	Source       JobSource
	// Limit is the runner's own cap on jobs (0 = none).
	Limit int
	// UnhealthyLimit consecutive 403 answers disable polling for
	// UnhealthyInterval.
	UnhealthyLimit    int
	UnhealthyInterval time.Duration
}

// Config tunes the dispatcher.
type Config struct {
	// Concurrent caps jobs across runners, from acquisition to removal.
	Concurrent int
	// MaxProvisioning caps jobs acquired but not launched yet.
	MaxProvisioning int
	// CheckInterval is the pause between polls when GitLab has no job,
	// and the shortest interval between two checks of one job.
	CheckInterval time.Duration
	// TrackingRPS caps GitLab requests spent on watching jobs.
	TrackingRPS float64
	// TrackingWorkers is how many job checks may be in flight (default 8).
	TrackingWorkers int
	// SafetyInterval is how often, at most, a launched job whose host end
	// the executor reports (EndWatcher) is checked in GitLab anyway
	// (default 1 min), SafetyPerMinute how many such checks a minute in
	// all (default 100).
	SafetyInterval  time.Duration
	SafetyPerMinute float64
	// WaitingInterval is how often, at most, a job waiting for a guard is
	// checked in GitLab (default 1 min). The guard writes the job's log
	// at least every minute, and GitLab's answer to that write tells a
	// canceled job: each write counts as a check and postpones the next
	// by 1.5 WaitingInterval, so a waiting job costs one request a minute
	// in steady state (its log line).
	WaitingInterval time.Duration
	// LogHold is how long, at most, the daemon holds its progress lines
	// in a job's log to send them together or hand them to the inner
	// runner (default 3 s, GitLab's usual log update interval).
	LogHold time.Duration
	// KeepFinished: do not remove hosts of finished jobs.
	KeepFinished bool
	// DecommissionLaunchFailures: remove hosts of jobs that failed to launch.
	DecommissionLaunchFailures bool
	// MinBetweenLaunches spaces the start of provisioning.
	MinBetweenLaunches time.Duration
	// ShutdownTimeout bounds the wait for in-flight steps when draining.
	ShutdownTimeout time.Duration
	// PollCycles > 0 stops acquiring after that many polling cycles of
	// every runner, then drains (for tests and one-shot use).
	PollCycles int
	// ProvisionAttempts bounds retries of transient executor errors
	// (default 5), spaced by RetryMin doubling up to RetryMax.
	ProvisionAttempts int
	RetryMin          time.Duration
	RetryMax          time.Duration
	// ReapInterval is the period of orphan removal (0: only at start).
	ReapInterval time.Duration
	// ReapGrace spares hosts younger than this in periodic reaps.
	ReapGrace time.Duration
	// StatsInterval > 0 logs a statistics line that often.
	StatsInterval time.Duration
	// Quota > 0 caps the sum of the jobs' weights (quota_computation:
	// the reference flavor's weight times reference_jobs_count); QuotaUnit
	// is the weight reserved before each job request (the reference
	// flavor's; defaults to Quota). See quota.go.
	Quota, QuotaUnit float64
	Logger           *zap.Logger
	Guards           []Guard
	// MaxWaiting jobs waiting for guards give their slots back (default
	// 200); more wait holding theirs, so that acquisition stops.
	MaxWaiting int
	// Observer is told about lifecycle events (metrics, health).
	Observer Observer
}

func (c *Config) defaults() {
	if c.Concurrent <= 0 {
		c.Concurrent = 50
	}
	if c.MaxProvisioning <= 0 {
		c.MaxProvisioning = 10
	}
	if c.CheckInterval <= 0 {
		c.CheckInterval = 3 * time.Second
	}
	if !(c.TrackingRPS > 0) || math.IsInf(c.TrackingRPS, 0) { // NaN too: it would remove the cap
		c.TrackingRPS = 40
	}
	if c.TrackingWorkers <= 0 {
		c.TrackingWorkers = 8
	}
	if c.SafetyInterval <= 0 {
		c.SafetyInterval = time.Minute
	}
	if !(c.SafetyPerMinute > 0) || math.IsInf(c.SafetyPerMinute, 0) {
		c.SafetyPerMinute = 100
	}
	if c.WaitingInterval <= 0 {
		c.WaitingInterval = time.Minute
	}
	if c.LogHold <= 0 {
		c.LogHold = 3 * time.Second
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 60 * time.Second
	}
	if c.ProvisionAttempts <= 0 {
		c.ProvisionAttempts = 5
	}
	if c.RetryMin <= 0 {
		c.RetryMin = time.Second
	}
	if c.RetryMax <= 0 {
		c.RetryMax = 30 * time.Second
	}
	if c.ReapGrace <= 0 {
		c.ReapGrace = 10 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if !(c.Quota > 0) || math.IsInf(c.Quota, 0) {
		c.Quota = 0
	}
	if !(c.QuotaUnit > 0) || c.QuotaUnit > c.Quota {
		c.QuotaUnit = c.Quota
	}
	if c.MaxWaiting <= 0 {
		c.MaxWaiting = 200
	}
}

// Dispatcher runs the runners.
type Dispatcher struct {
	cfg     Config
	log     *zap.Logger
	store   Store
	runners map[string]*runnerState // by ID
	aliases map[string]*runnerState // by legacy (Heptapod) ID
	order   []*runnerState          // guarded by reconf and mu (either to read)
	retired map[string]*runnerState

	// reconf serialises Reconfigure with Run's start (resume, loops).
	reconf        sync.Mutex
	acqCtx        context.Context // set (under mu) once the loops start
	loops         sync.WaitGroup
	liveLoops     int // guarded by mu
	loopsDone     chan struct{}
	loopsDoneOnce sync.Once
	startBG       func(func(context.Context))

	mu           sync.Mutex
	total        int
	provisioning int
	slotFreed    chan struct{}
	reloaded     chan struct{} // closed and replaced by Reconfigure
	jobs         map[state.Key]*tracked
	nextLaunch   time.Time
	quota        quotaState

	work      context.Context // cancelled by Force: stops every step
	forceStop context.CancelFunc
	launches  sync.WaitGroup // provisioning/launch goroutines
	aux       sync.WaitGroup // short-lived helpers (host ends)
	decoms    *decommissioner
	tracker   *tracker

	// stopWaiting ends guard waits when draining: they resume at next start.
	stopWaiting context.Context
	endWaits    context.CancelFunc
	parked      int // guarded by mu: waiting jobs that gave their slots back
	// grantedWaiting (mu): parked jobs granted their guards, waiting for
	// their slots; they go ahead of new acquisitions (reserve).
	grantedWaiting int

	stats stats
	// draining is closed once no more jobs are acquired.
	draining chan struct{}
}

type runnerState struct {
	*Runner
	log      *zap.Logger
	inFlight int // guarded by Dispatcher.mu
	// grantedWaiting: its jobs counted in Dispatcher.grantedWaiting (mu)
	grantedWaiting int
	// reserved: quota weight reserved for the pending request (Dispatcher.mu)
	reserved float64
	limit    int // guarded by Dispatcher.mu: Limit, changed by reloads
	// retired is cancelled when a reload removes the runner: its loop
	// stops acquiring.
	retired      context.Context
	retire       context.CancelFunc
	watchStarted bool // guarded by Dispatcher.mu
	looping      bool // guarded by Dispatcher.mu: its acquisition loop runs
	revived      bool // guarded by Dispatcher.mu: removed and added back while looping
	// watching: the executor's end watch runs (its launched jobs are
	// tracked in GitLab only as a safety net).
	watching atomic.Bool
	// acquisition loop only:
	forbidden     int
	disabledUntil time.Time
}

type stats struct {
	acquired, launched, launchFailures, finished, decommissioned, decommissionErrors, trackingRequests, hostEnds atomic.Uint64
}

// New validates the runners and returns a dispatcher. Nothing starts before Run.
func New(cfg Config, store Store, runners []*Runner) (*Dispatcher, error) {
	cfg.defaults()
	d := &Dispatcher{cfg: cfg, log: cfg.Logger, store: store, runners: map[string]*runnerState{}, retired: map[string]*runnerState{},
		slotFreed: make(chan struct{}), reloaded: make(chan struct{}), jobs: map[state.Key]*tracked{}, draining: make(chan struct{}), loopsDone: make(chan struct{})}
	for _, r := range runners {
		if r.ID == "" || r.Executor == nil || r.Source == nil {
			return nil, fmt.Errorf("runner %q: unique name, executor and job source are required", r.Name)
		}
		if _, dup := d.runners[r.ID]; dup {
			return nil, fmt.Errorf("runners %q and %q share the unique name %q (first 8 characters of the token)", d.runners[r.ID].Name, r.Name, r.ID)
		}
		rs := d.newRunnerState(r)
		d.runners[r.ID] = rs
		d.order = append(d.order, rs)
	}
	// A legacy ID is an alias only where it names no runner of its own;
	// several runners sharing one (glrt- tokens under Heptapod) take the
	// jobs on the first of them, in configuration order: the job's own
	// token and host handle are what tracking and removal use.
	d.aliases = map[string]*runnerState{}
	for _, rs := range d.order {
		for _, l := range rs.LegacyIDs {
			if _, own := d.runners[l]; own || l == "" {
				continue
			}
			if _, taken := d.aliases[l]; !taken {
				d.aliases[l] = rs
			}
		}
	}
	d.work, d.forceStop = context.WithCancel(context.Background())
	d.stopWaiting, d.endWaits = context.WithCancel(d.work)
	d.decoms = newDecommissioner(d)
	d.tracker = newTracker(d)
	return d, nil
}

// Force stops waiting for in-flight steps: they are interrupted and stay
// recorded in the state for the next start. Call it on a second signal.
func (d *Dispatcher) Force() { d.forceStop() }

// Run resumes the jobs in the store, then acquires and runs jobs until ctx
// is cancelled (or the poll cycles are done), then drains: no more
// acquisitions, in-flight provisioning and decommissioning finish (within
// ShutdownTimeout), launched jobs keep running on their hosts. It returns
// nil after a graceful stop.
func (d *Dispatcher) Run(ctx context.Context) error {
	defer d.forceStop()
	d.reconf.Lock()
	locked := true
	defer func() {
		if locked {
			d.reconf.Unlock()
		}
	}()
	d.resume()
	// the start-up reap ends with a drain (SIGTERM) as well as with a
	// forced stop: a PaaS API that does not answer must not hold the drain
	reapCtx, stopReap := context.WithCancel(d.work)
	stopReapOnDrain := context.AfterFunc(ctx, stopReap)
	d.reapAll(reapCtx, 0)
	stopReapOnDrain()
	stopReap()

	var bg sync.WaitGroup
	bgCtx, stopBG := context.WithCancel(d.work)
	startBG := func(f func(context.Context)) {
		bg.Add(1)
		go func() { defer bg.Done(); f(bgCtx) }()
	}
	startBG(d.tracker.run)
	d.decoms.start(bgCtx)
	if d.cfg.ReapInterval > 0 {
		startBG(d.reapLoop)
	}
	if d.cfg.StatsInterval > 0 {
		startBG(d.statsLoop)
	}

	d.obs().Started()
	acqCtx, stopAcq := context.WithCancel(ctx)
	d.mu.Lock()
	d.acqCtx, d.startBG = acqCtx, startBG
	for _, r := range d.order {
		d.startRunnerLocked(r)
	}
	if len(d.order) == 0 && d.cfg.PollCycles > 0 {
		d.loopsDoneOnce.Do(func() { close(d.loopsDone) })
	}
	d.mu.Unlock()
	d.reconf.Unlock()
	locked = false
	select { // ctx cancelled, or every runner did its poll cycles
	case <-acqCtx.Done():
	case <-d.loopsDone:
	}
	// No loop starts any more: a reload now sees draining closed.
	d.reconf.Lock()
	d.mu.Lock()
	close(d.draining)
	d.mu.Unlock()
	d.reconf.Unlock()
	stopAcq()
	d.loops.Wait()
	d.endWaits()
	d.obs().Draining()
	d.log.Info("draining: no more jobs are acquired; waiting for in-flight provisioning and decommissioning",
		zap.Int("provisioning", d.Stats().Provisioning), zap.Duration("shutdown_timeout", d.cfg.ShutdownTimeout))

	// In-flight launches finish first; meanwhile jobs are still watched
	// and the hosts of those that end are removed (they bill by the
	// second). Then the removals already queued are done, and the rest
	// waits for the next start.
	timer := time.NewTimer(d.cfg.ShutdownTimeout)
	waitFor := func(wait func()) {
		done := make(chan struct{})
		go func() { wait(); close(done) }()
		select {
		case <-done:
		case <-timer.C:
			d.log.Warn("shutdown timeout: interrupting in-flight steps; they resume at next start")
			d.forceStop()
			<-done
		case <-d.work.Done():
			<-done
		}
	}
	waitFor(d.launches.Wait)
	d.decoms.drain()
	waitFor(d.decoms.wait)
	timer.Stop()
	stopBG()
	bg.Wait()
	d.aux.Wait()
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.store.Sync(sctx); err != nil {
		return fmt.Errorf("saving state at shutdown: %w", err)
	}
	st := d.Stats()
	d.log.Info("stopped", zap.Int("jobs_tracked", st.Jobs), zap.Int("launched", st.Launched), zap.Int("pending", st.Provisioning))
	return nil
}

// Draining is closed once the dispatcher acquires no more jobs.
func (d *Dispatcher) Draining() <-chan struct{} { return d.draining }

// reserve takes a job slot for r's next request if the limits allow it,
// and no job granted its guards waits for that slot.
func (d *Dispatcher) reserve(r *runnerState) bool { return d.reserveFor(r, &r.reserved, true) }

// reserveInto takes a job slot for r, and the quota's unit into *weight.
func (d *Dispatcher) reserveInto(r *runnerState, weight *float64) bool {
	return d.reserveFor(r, weight, false)
}

func (d *Dispatcher) reserveFor(r *runnerState, weight *float64, acquiring bool) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if acquiring && d.grantedWaiting > 0 && (r.grantedWaiting > 0 || d.quotaOn() ||
		d.total+d.grantedWaiting >= d.cfg.Concurrent || d.provisioning+d.grantedWaiting >= d.cfg.MaxProvisioning) {
		// a job granted its locks waits for a slot this one would take
		return false
	}
	if d.total >= d.cfg.Concurrent || d.provisioning >= d.cfg.MaxProvisioning || (r.limit > 0 && r.inFlight >= r.limit) || !d.quotaRoomLocked() {
		return false
	}
	d.reserveWeightLocked(weight)
	d.total++
	d.provisioning++
	r.inFlight++
	return true
}

// release gives back the slots of a job leaving the dispatcher's care;
// provisioning tells whether it still held a provisioning slot.
func (d *Dispatcher) release(r *runnerState, provisioning bool) {
	d.mu.Lock()
	d.total--
	r.inFlight--
	if provisioning {
		d.provisioning--
	}
	d.signalLocked()
	d.mu.Unlock()
}

// launched moves a job from provisioning to running for accounting.
func (d *Dispatcher) leaveProvisioning() {
	d.mu.Lock()
	d.provisioning--
	d.signalLocked()
	d.mu.Unlock()
}

func (d *Dispatcher) signalLocked() {
	close(d.slotFreed)
	d.slotFreed = make(chan struct{})
}

func (d *Dispatcher) freedChan() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.slotFreed
}

// Stats is a snapshot for metrics and logs.
type Stats struct {
	Jobs, Provisioning, Launched, Decommissioning, Concurrent, MaxProvisioning int
	// RemovalsFailing: hosts whose last removal attempt failed (retried).
	RemovalsFailing int
	// WeightUsed of WeightQuota (0: no weighted quota); WeightWaiting:
	// jobs waiting for room in it.
	WeightUsed, WeightQuota float64
	WeightWaiting           int

	Acquired, LaunchedTotal, LaunchFailures, Finished, Decommissioned, DecommissionErrors, TrackingRequests, HostEnds uint64
}

// Stats returns current counts.
func (d *Dispatcher) Stats() Stats {
	d.mu.Lock()
	s := Stats{Jobs: d.total, Provisioning: d.provisioning, Concurrent: d.cfg.Concurrent, MaxProvisioning: d.cfg.MaxProvisioning,
		WeightUsed: d.quota.used, WeightQuota: d.cfg.Quota, WeightWaiting: len(d.quota.queue)}
	for _, t := range d.jobs {
		switch t.phase() {
		case state.Launched:
			s.Launched++
		case state.Decommissioning:
			s.Decommissioning++
		}
		t.mu.Lock()
		if t.removalFailures > 0 {
			s.RemovalsFailing++
		}
		t.mu.Unlock()
	}
	d.mu.Unlock()
	s.Acquired = d.stats.acquired.Load()
	s.LaunchedTotal = d.stats.launched.Load()
	s.LaunchFailures = d.stats.launchFailures.Load()
	s.Finished = d.stats.finished.Load()
	s.Decommissioned = d.stats.decommissioned.Load()
	s.DecommissionErrors = d.stats.decommissionErrors.Load()
	s.TrackingRequests = d.stats.trackingRequests.Load()
	s.HostEnds = d.stats.hostEnds.Load()
	return s
}

// JobInfo describes a tracked job for the debug signal (no token).
type JobInfo struct {
	Runner     string // the runner's ID
	RunnerName string // its name, "" when it has none
	JobID      int64
	Phase      state.Phase
	Since      time.Time
}

// Snapshot lists the tracked jobs.
func (d *Dispatcher) Snapshot() []JobInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]JobInfo, 0, len(d.jobs))
	for k, t := range d.jobs {
		t.mu.Lock()
		since := t.rec.AcquiredAt
		if !t.rec.LaunchedAt.IsZero() {
			since = t.rec.LaunchedAt
		}
		out = append(out, JobInfo{Runner: k.Runner, RunnerName: t.r.Name, JobID: k.ID, Phase: t.rec.Phase, Since: since})
		t.mu.Unlock()
	}
	return out
}

func (d *Dispatcher) statsLoop(ctx context.Context) {
	t := time.NewTicker(d.cfg.StatsInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s := d.Stats()
			fields := []zap.Field{zap.Int("jobs", s.Jobs), zap.Int("max_concurrent_jobs", s.Concurrent),
				zap.Int("jobs_in_provisioning", s.Provisioning), zap.Int("max_jobs_in_provisioning", s.MaxProvisioning),
				zap.Int("launched", s.Launched), zap.Int("decommissioning", s.Decommissioning),
				zap.Uint64("acquired_total", s.Acquired), zap.Uint64("launch_failures_total", s.LaunchFailures)}
			if s.WeightQuota > 0 {
				fields = append(fields, zap.Float64("weight_quota", s.WeightQuota), zap.Float64("current_weight", s.WeightUsed),
					zap.Int("jobs_waiting_for_weight", s.WeightWaiting))
			}
			d.log.Info("statistics", fields...)
		}
	}
}

// backoff is the wait before retry attempt (0-based).
func (d *Dispatcher) backoff(attempt int) time.Duration {
	return backoff.Policy{Min: d.cfg.RetryMin, Max: d.cfg.RetryMax}.Wait(attempt)
}

func httpStatus(err error) int {
	var hs interface{ HTTPStatus() int }
	if errors.As(err, &hs) {
		return hs.HTTPStatus()
	}
	return 0
}

package jobrunner

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/coordinator"
	"gitlab.com/paas-runner/paas-runner/job"
)

// Features are what this inner runner really supports, advertised to
// GitLab by the daemon. Keep it truthful: GitLab changes behaviour on them.
func Features() map[string]bool {
	return map[string]bool{
		"variables": true, "image": true, "multi_build_steps": true, "return_exit_code": true,
		"artifacts": true, "upload_multiple_artifacts": true, "upload_raw_artifacts": true, "artifacts_exclude": true,
		"services": true, "service_variables": true, "service_multiple_aliases": true,
		"cache": true, "fallback_cache_keys": true,
		"raw_variables": true, "masking": true, "refspecs": true, "cancelable": true,
		"trace_checksum": true, "trace_size": true, "cancel_gracefully": true,
		"image_executor_opts": true,
	}
}

// Options configure one run.
type Options struct {
	Config *RunnerConfig
	Job    *Job
	Docker Docker
	// TraceInterval is the default log update interval (3 s).
	TraceInterval time.Duration
	Logger        *zap.Logger
	UserAgent     string
	Info          coordinator.Info
	// GuardBinary is the static executable put into job containers as
	// gitlab-job-guard (guardbin.go): "" for this one, NoGuardBinary for
	// none.
	GuardBinary string
}

// result of the job's steps
type result struct {
	state    string // success or failed
	reason   string
	exitCode int
}

type runner struct {
	o      Options
	p      *job.Payload
	gl     *coordinator.Client
	docker Docker
	trace  *Trace
	log    *zap.Logger
	name   string        // prefix of everything created for this job
	vars   job.Variables // as given
	// expanded: vars with each value expanded once, what the job's
	// environment gets and what names in the payload expand against
	expanded job.Variables

	mu        sync.Mutex
	canceling bool
	cancelCh  chan struct{} // closed on canceling (graceful)
	abortCh   chan struct{} // closed on canceled / not running (hard)
	created   []string      // containers to remove
	volume    string
	// inHost: volume is the host's builds volume (job.json's
	// builds_volume), mounted in this inner runner's container: the
	// sources are written straight into it, and the daemon removes it
	inHost  bool
	network string // per-job network, when the job has services
	script  string // the script container, for artifacts
	// [runners.docker] volumes as binds, made once (volumeBinds), and the
	// per-job volumes among them (disable_cache) to remove
	binds      []string
	bindsReady bool
	tmpVolumes []string

	debugOnce sync.Once
	debug     bool // CI_DEBUG_TRACE

	guard guardShip // the guard in job containers (guardbin.go)
}

// Run runs the job and reports it. It returns nil once GitLab accepted the
// final state (whatever the job's outcome).
func Run(ctx context.Context, o Options) error {
	if o.TraceInterval <= 0 {
		o.TraceInterval = 3 * time.Second
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	j := o.Job
	if err := checkGitLabTLS(ctx, o.Config.URL, o.Config.TLSCA); err != nil {
		return err
	}
	gl, err := coordinator.New(coordinator.Config{URL: o.Config.URL, Token: j.Token, TLSCAFile: o.Config.TLSCAFile, UserAgent: o.UserAgent, Info: o.Info, Logger: o.Logger})
	if err != nil {
		return err
	}
	r := &runner{o: o, p: j.Payload, gl: gl, docker: o.Docker, log: o.Logger.With(zap.Int64("job_id", j.ID)),
		name: fmt.Sprintf("paas-job-%d-%s", j.ID, randomSuffix()), cancelCh: make(chan struct{}), abortCh: make(chan struct{})}
	r.vars = r.variables()
	r.expanded = r.vars.Expanded()
	var secrets []string
	for i, v := range r.vars {
		if v.Masked {
			secrets = append(secrets, v.Value)
			if e := r.expanded[i].Value; e != v.Value {
				secrets = append(secrets, e)
			}
		}
	}
	secrets = append(secrets, j.Token)
	r.trace = NewTrace(gl, j.ID, j.Token, j.TraceOffset, j.TraceCRC, secrets, tokenPrefixes(j.Payload.Features.TokenMaskPrefixes), o.Config.OutputLimit*1024, o.TraceInterval, r.onStatus)
	r.trace.Lead(j.TraceLead)
	tctx, stopTrace := context.WithCancel(context.Background())
	traceDone := make(chan struct{})
	go func() { r.trace.Run(tctx); close(traceDone) }()

	res := r.runJob(ctx)
	r.cleanup()

	stopTrace()
	<-traceDone
	fctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	size, sum, terr := r.trace.Close(fctx)
	if terr != nil && !errors.Is(terr, job.ErrNotRunning) {
		r.log.Warn("sending the end of the log failed", zap.Error(terr))
	}
	return r.finalUpdate(fctx, res, size, sum)
}

func (r *runner) onStatus(st string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch st {
	case job.StatusCanceling:
		if !r.canceling {
			r.canceling = true
			close(r.cancelCh)
		}
	case job.StatusCanceled, job.StatusFailed, job.StatusSuccess, statusRefused:
		if st == statusRefused {
			r.log.Warn("GitLab refused the job's log or update without a job status (log over its size limit, token refused, or job gone): stopping the job")
		}
		select {
		case <-r.abortCh:
		default:
			close(r.abortCh)
		}
	}
}

func (r *runner) aborted() bool {
	select {
	case <-r.abortCh:
		return true
	default:
		return false
	}
}

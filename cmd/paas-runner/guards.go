package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/guard"
	"gitlab.com/paas-runner/paas-runner/internal/version"
	"gitlab.com/paas-runner/paas-runner/pipeguard"
	"gitlab.com/paas-runner/paas-runner/state"
)

// guardPolicy maps [guards] to the guard package's policy.
func guardPolicy(g config.Guards) *guard.Policy {
	// with the local backend the pools and their locks are these; with
	// git the repository's, which these only restrict
	p := &guard.Policy{DefaultMode: guard.Mode(g.DefaultProcessMode), LockEnvironments: g.LockEnvironments, Pools: map[string]guard.PoolPolicy{},
		Declared: g.Backend == "local"}
	for _, pool := range g.Pools {
		pp := guard.PoolPolicy{Namespaces: pool.Namespaces, Mode: guard.Mode(pool.ProcessMode), Supersede: pool.Supersede}
		if p.Declared {
			pp.Locks = pool.Locks
		}
		p.Pools[pool.Name] = pp
	}
	return p
}

// buildGuards opens the locks and pools guard on its backend and releases
// what jobs no longer in the state file hold.
func buildGuards(ctx context.Context, cfg *config.Config, store *state.Store, systemID string, log *zap.Logger) (*guard.Manager, error) {
	g := cfg.Guards
	opts := guard.Options{Daemon: systemID, Policy: guardPolicy(g), LeaseMargin: g.LeaseMargin,
		Logger: log.Named("guards")}
	var be guard.Backend
	switch g.Backend {
	case "local":
		l, err := guard.OpenLocal(guard.LocalPath(store.Path()), declaredPools(cfg))
		if err != nil {
			return nil, err
		}
		be = l
	case "git":
		gb, err := guard.OpenGit(ctx, guard.GitOptions{URL: g.Git.URL, Branch: g.Git.Branch, Username: g.Git.Username,
			Password: g.Git.Password, RetryDelay: g.Git.RetryDelay, Daemon: systemID})
		if err != nil {
			log.Warn("guards: the lock repository is unreachable; jobs without locks run, jobs with locks wait", zap.Error(err))
		}
		be = gb
		opts.Refresh, opts.AsyncRelease = g.Git.RetryDelay, true
	default:
		return nil, fmt.Errorf("%s: guards.backend: %q is not available in this build", cfg.Path, g.Backend)
	}
	m, err := guard.NewManager(ctx, be, opts)
	if err != nil {
		return nil, err
	}
	if err := m.ForgetUnknown(ctx, func(runnerID string, jobID int64) bool {
		_, ok := store.Get(state.Key{Runner: runnerID, ID: jobID})
		return ok
	}); err != nil {
		log.Warn("guards: could not release the locks of jobs no longer in the state file yet; done once the lock store answers", zap.Error(err))
	}
	return m, nil
}

// buildPipelineGuard makes the pipeline-conflict guard: one watcher (one
// poll loop per project and token) for the whole daemon, on the locks
// guard's waiting machinery. A job resumed after a restart keeps the start
// of its wait: its acquisition time in the state file.
func buildPipelineGuard(cfg *config.Config, store *state.Store, systemID string, core *guard.Core, log *zap.Logger) *guard.Pipelines {
	p, _ := buildPipelineGuardTokens(cfg, store, systemID, core, log)
	return p
}

// buildPipelineGuardTokens is buildPipelineGuard, also returning the
// runners' guard_api_token table that a reload updates.
func buildPipelineGuardTokens(cfg *config.Config, store *state.Store, systemID string, core *guard.Core, log *zap.Logger) (*guard.Pipelines, *runnerTokens) {
	w := &pipeguard.Watcher{UserAgent: version.UserAgent(), HTTP: pipelinesHTTPClient(cfg, log)}
	testPipelineOverrides(w)
	p := guard.NewPipelines(core, w, systemID, log.Named("pipeline_guard"))
	tokens := &runnerTokens{}
	tokens.set(cfg)
	p.Token = tokens.get
	p.Since = func(runnerID string, jobID int64) time.Time {
		rec, _ := store.Get(state.Key{Runner: runnerID, ID: jobID})
		return rec.AcquiredAt
	}
	return p, tokens
}

// runnerTokens are the runners' guard_api_token by runner ID.
type runnerTokens struct {
	mu sync.Mutex
	m  map[string]string
}

func (t *runnerTokens) set(cfg *config.Config) {
	m := map[string]string{}
	for i := range cfg.Runners {
		m[cfg.Runners[i].ID()] = cfg.Runners[i].GuardAPIToken
	}
	t.mu.Lock()
	t.m = m
	t.mu.Unlock()
}

func (t *runnerTokens) get(runnerID string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.m[runnerID]
}

// serveGuards adds the guard metrics and GET /debug/locks (locks, pools
// and pipeline guards).
func serveGuards(m *guard.Manager, p *guard.Pipelines, reg *prometheus.Registry, mux *http.ServeMux) {
	if m == nil {
		return
	}
	reg.MustRegister(m.Collectors()...)
	mux.Handle("/debug/locks", guard.DebugHandler(m, p))
}

// pipelinesHTTPClient is the pipeline guard's client: it trusts the
// runners' tls-ca-file bundles besides the system's (the pipelines API is
// on the same GitLab). nil (the watcher's default) when no runner has one.
func pipelinesHTTPClient(cfg *config.Config, log *zap.Logger) *http.Client {
	var pool *x509.CertPool
	for i := range cfg.Runners {
		f := cfg.Runners[i].TLSCAFile
		if f == "" {
			continue
		}
		pem, err := os.ReadFile(f)
		if err != nil {
			log.Warn("pipeline guard: cannot read tls-ca-file", zap.String("file", f), zap.Error(err))
			continue
		}
		if pool == nil {
			if pool, err = x509.SystemCertPool(); err != nil || pool == nil {
				pool = x509.NewCertPool()
			}
		}
		if !pool.AppendCertsFromPEM(pem) {
			log.Warn("pipeline guard: no PEM certificate in tls-ca-file", zap.String("file", f))
		}
	}
	if pool == nil {
		return nil
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// waitGuardReleases waits, at most limit, for the releases still being
// made durable in the background (the git backend pushes them after the
// job's host is removed): a graceful stop must not leave a finished job's
// lock claimed until its lease expires.
func waitGuardReleases(m *guard.Manager, limit time.Duration, log *zap.Logger) {
	done := make(chan struct{})
	go func() { m.Wait(); close(done) }()
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		log.Warn("guards: stopping with lock releases not pushed yet; their leases free them", zap.Duration("waited", limit))
	}
}

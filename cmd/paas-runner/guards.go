package main

import (
	"context"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/guard"
	"gitlab.com/paas-runner/paas-runner/state"
)

// guardPolicy maps [guards] to the guard package's policy.
func guardPolicy(g config.Guards) *guard.Policy {
	p := &guard.Policy{DefaultMode: guard.Mode(g.DefaultProcessMode), LockEnvironments: g.LockEnvironments, Pools: map[string]guard.PoolPolicy{}}
	for _, pool := range g.Pools {
		p.Pools[pool.Name] = guard.PoolPolicy{Namespaces: pool.Namespaces, Mode: guard.Mode(pool.ProcessMode), Supersede: pool.Supersede}
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
		pools := map[string]map[string]string{}
		for _, p := range g.Pools {
			pools[p.Name] = p.Locks
		}
		l, err := guard.OpenLocal(guard.LocalPath(store.Path()), pools)
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
		log.Warn("guards: could not release the locks of jobs no longer in the state file; their leases free them", zap.Error(err))
	}
	return m, nil
}

// serveGuards adds the guard metrics and GET /debug/locks.
func serveGuards(m *guard.Manager, reg *prometheus.Registry, mux *http.ServeMux) {
	if m == nil {
		return
	}
	reg.MustRegister(m.Collectors()...)
	mux.Handle("/debug/locks", m.DebugHandler())
}

package main

import (
	"context"
	"fmt"
	"sort"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker"
	"gitlab.com/paas-runner/paas-runner/internal/version"
)

// factory builds the executor of one [[runners]] entry.
type factory func(ctx context.Context, r *config.Runner, env executorEnv, log *zap.Logger) (executors.Executor, error)

// executorEnv is what executors learn from the daemon, not the runner entry.
type executorEnv struct {
	StatePath string
	SystemID  string
}

// registry maps executor names, as written in the configuration, to their
// constructor. It is built here, explicitly: no package registers itself.
type registry map[string]factory

func newRegistry() registry {
	reg := registry{
		"local-docker": newLocalDocker,
	}
	addTestExecutors(reg)
	return reg
}

func newLocalDocker(ctx context.Context, r *config.Runner, env executorEnv, log *zap.Logger) (executors.Executor, error) {
	ex, err := localdocker.New(localdocker.Options{
		Host: r.LocalDocker.Host, NetworkMode: r.LocalDocker.NetworkMode, InnerImage: r.InnerImage,
		RunnerID: r.ID(), RunnerLabel: r.Name, RunnerURL: r.URL, Inner: r.Inner,
		StatePath: env.StatePath, InstanceID: env.SystemID, Version: version.Version, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	if err := ex.Check(ctx); err != nil {
		// Not fatal: the engine may come up later; each job retries and
		// fails with this message if it does not.
		log.Error("the Docker engine is not reachable; jobs will fail until it is", zap.Error(err))
	}
	return ex, nil
}

func (r registry) names() []string {
	ns := []string{}
	for n := range r {
		ns = append(ns, n)
	}
	sort.Strings(ns)
	return ns
}

func (r registry) build(ctx context.Context, rc *config.Runner, env executorEnv, log *zap.Logger) (executors.Executor, error) {
	f, ok := r[rc.Executor]
	if !ok {
		return nil, fmt.Errorf("unknown executor %q", rc.Executor)
	}
	return f(ctx, rc, env, log)
}

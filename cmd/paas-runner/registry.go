package main

import (
	"context"
	"fmt"
	"sort"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/executors"
)

// factory builds the executor of one [[runners]] entry.
type factory func(ctx context.Context, r *config.Runner, log *zap.Logger) (executors.Executor, error)

// registry maps executor names, as written in the configuration, to their
// constructor. It is built here, explicitly: no package registers itself.
type registry map[string]factory

func newRegistry() registry {
	reg := registry{}
	addTestExecutors(reg)
	return reg
}

func (r registry) names() []string {
	ns := []string{}
	for n := range r {
		ns = append(ns, n)
	}
	sort.Strings(ns)
	return ns
}

func (r registry) build(ctx context.Context, rc *config.Runner, log *zap.Logger) (executors.Executor, error) {
	f, ok := r[rc.Executor]
	if !ok {
		return nil, fmt.Errorf("unknown executor %q", rc.Executor)
	}
	return f(ctx, rc, log)
}

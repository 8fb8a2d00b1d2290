package main

import (
	"context"
	"fmt"
	"sort"
	"time"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/cleverdocker"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker"
	"gitlab.com/paas-runner/paas-runner/executors/s3cache"
	"gitlab.com/paas-runner/paas-runner/internal/version"
)

// factory builds the executor of one [[runners]] entry.
type factory func(ctx context.Context, r *config.Runner, env executorEnv, log *zap.Logger) (executors.Executor, error)

// executorEnv is what executors learn from the daemon, not the runner entry.
type executorEnv struct {
	StatePath string
	SystemID  string
	// ops observes GitLab requests (metrics); nil in tools.
	ops *ops
}

// registry maps executor names, as written in the configuration, to their
// constructor. It is built here, explicitly: no package registers itself.
type registry map[string]factory

func newRegistry() registry {
	reg := registry{
		"local-docker":  newLocalDocker,
		"clever-docker": newCleverDocker,
	}
	addTestExecutors(reg)
	return reg
}

// s3Presigner presigns the cache URLs of an S3 [runners.cache]; nil
// without one.
func s3Presigner(r *config.Runner) (*s3cache.Presigner, error) {
	c, err := s3cache.FromInner(r.Inner)
	if err != nil || c == nil {
		return nil, err
	}
	return s3cache.New(*c)
}

func newLocalDocker(ctx context.Context, r *config.Runner, env executorEnv, log *zap.Logger) (executors.Executor, error) {
	cache, err := s3Presigner(r)
	if err != nil {
		return nil, err
	}
	ex, err := localdocker.New(localdocker.Options{Cache: cache,
		Host: r.LocalDocker.Host, NetworkMode: r.LocalDocker.NetworkMode, InnerImage: r.InnerImage,
		RunnerID: r.ID(), LegacyRunnerIDs: legacyIDs(r), RunnerLabel: r.Name, RunnerURL: r.URL, Inner: r.Inner, TLSCAFile: r.TLSCAFile,
		SystemID: env.SystemID, Version: version.Version, Logger: log,
		WrapTransport: env.ops.engineTransport(r.Executor), // PaaS API metrics: the engine's
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

func newCleverDocker(ctx context.Context, r *config.Runner, env executorEnv, log *zap.Logger) (executors.Executor, error) {
	c := r.Clever
	sec := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	opts := cleverdocker.Options{
		APIURL: c.APIURL, AuthScheme: c.AuthScheme, Zone: c.Zone, DefaultFlavor: c.DefaultFlavor, MaxFlavor: c.MaxFlavor,
		RepoTimeout: sec(c.DeploymentRepoTimeout), RepoWaitStep: sec(c.DeploymentRepoWaitStep),
		OrgaID: c.OrgaID, Token: c.Token,
		MultiTenant: c.MultiTenant, GitLabURL: r.URL, AttributesToken: c.NamespaceAttributesToken,
		OrgaIDAttribute: c.OrgaIDAttribute, OrgaTokenAttribute: c.OrgaTokenAttribute,
		AuthUser: c.AuthUser, InstanceVariant: c.InstanceVariantUUID, FlavorContext: c.FlavorContext, FlavorNamePrefix: c.FlavorNamePrefix,
		ExtraEnv: c.ExtraEnv, InnerImage: r.InnerImage,
		RunnerID: r.ID(), RunnerLabel: r.Name, RunnerURL: r.URL, Inner: r.Inner, TLSCAFile: r.TLSCAFile, SystemID: env.SystemID,
		UserAgent: version.UserAgent(), Logger: log,
	}
	if !(c.MultiTenant && r.TLSCAFile != "") { // (else the executor's own client trusts the CA for GitLab)
		opts.HTTPClient = env.ops.paasClient(r.Executor, c.APIURL) // PaaS API metrics
	}
	testCleverOverrides(&opts) // test builds only: fast retries
	var err error
	if opts.Cache, err = s3Presigner(r); err != nil {
		return nil, err
	}
	ex, err := cleverdocker.New(opts)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := ex.Check(cctx); err != nil {
		// Not fatal: Clever Cloud may be down now; each job retries and
		// fails with this message if the problem stays.
		log.Error("checking the Clever Cloud products failed; jobs will fail until this is fixed", zap.Error(err))
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

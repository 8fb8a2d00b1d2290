package cleverdocker

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/go-git/go-billy/v5/memfs"
	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	"github.com/go-git/go-git/v5/storage/memory"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker"
	"gitlab.com/paas-runner/paas-runner/executors/s3cache"
)

// BuildContext is what is pushed to the application: the same three files
// as local-docker's host image (Heptapod's shape).
type BuildContext = localdocker.BuildContext

// Context returns the build context of a job: a Dockerfile FROM
// inner_image with Heptapod's exec-fetched-job entry point, job.json (the
// payload after the Dependency Proxy rewrite, with where the daemon left
// the job log, the daemon's system id and runner id, and with an S3 cache
// the presigned URLs of the job's cache keys) and runner.toml (no runner
// token, no cc_* key, no S3 credentials).
func (e *Executor) Context(ctx context.Context, j executors.Job) (BuildContext, error) {
	extra := map[string]any{"system_id": e.opts.SystemID, "runner_id": e.opts.RunnerID}
	// storage credentials never go to a host (an S3 cache works through
	// the presigned URLs)
	inner := s3cache.WithoutCredentials(e.opts.Inner)
	if e.opts.Cache != nil {
		urls, err := e.opts.Cache.ForJob(ctx, e.opts.RunnerID, j.Payload)
		if err != nil {
			return BuildContext{}, err
		}
		if len(urls) > 0 {
			extra["cache"] = urls
		}
	}
	jobJSON, err := localdocker.JobJSONWith(j.Payload, j.TraceOffset, j.TraceCRC, extra)
	if err != nil {
		return BuildContext{}, err
	}
	caPath := ""
	if e.ca != nil {
		caPath = localdocker.CAPath(localdocker.HeptapodRunnerTOML)
	}
	toml, err := localdocker.InnerConfig(e.opts.RunnerLabel, e.opts.RunnerURL, inner, caPath)
	if err != nil {
		return BuildContext{}, err
	}
	return BuildContext{Dockerfile: localdocker.Dockerfile("", e.opts.InnerImage, e.ca != nil), JobJSON: jobJSON, RunnerTOML: toml, CA: e.ca}, nil
}

const pushBranch = plumbing.ReferenceName("refs/heads/master")

// push commits the build context and pushes it to master of deployURL
// (never forced). It returns true when master exists already (launched
// before): the push is then refused as not a fast-forward, or is a no-op
// when the same commit is there. No separate ls-remote: the push reads the
// remote's refs anyway.
func (e *Executor) push(ctx context.Context, deployURL, token string, bc BuildContext, j executors.Job) (bool, error) {
	auth := &githttp.BasicAuth{Username: e.opts.AuthUser, Password: token}
	fs := memfs.New()
	repo, err := git.Init(memory.NewStorage(), fs)
	if err != nil {
		return false, err
	}
	wt, err := repo.Worktree()
	if err != nil {
		return false, err
	}
	files := []struct {
		name string
		data []byte
	}{{"Dockerfile", bc.Dockerfile}, {"job.json", bc.JobJSON}, {"runner.toml", bc.RunnerTOML}}
	if bc.CA != nil {
		files = append(files, struct {
			name string
			data []byte
		}{localdocker.CAFile, bc.CA})
	}
	for _, f := range files {
		w, err := fs.Create(f.name)
		if err != nil {
			return false, err
		}
		if _, err := w.Write(f.data); err != nil {
			return false, err
		}
		if err := w.Close(); err != nil {
			return false, err
		}
		if _, err := wt.Add(f.name); err != nil {
			return false, err
		}
	}
	sig := &object.Signature{Name: "paas-runner", Email: "paas-runner@localhost", When: time.Now()}
	if _, err := wt.Commit(fmt.Sprintf("Job definition (job %d)", j.ID), &git.CommitOptions{Author: sig, Committer: sig}); err != nil {
		return false, err
	}
	head, err := repo.Head()
	if err != nil {
		return false, err
	}
	if _, err := repo.CreateRemote(&config.RemoteConfig{Name: "clever", URLs: []string{deployURL}}); err != nil {
		return false, err
	}
	pctx, cancel := context.WithTimeout(ctx, e.opts.PushTimeout)
	defer cancel()
	err = repo.PushContext(pctx, &git.PushOptions{RemoteName: "clever", Auth: auth,
		RefSpecs: []config.RefSpec{config.RefSpec(head.Name().String() + ":" + pushBranch.String())}})
	if err != nil && ctx.Err() == nil && pctx.Err() != nil {
		return false, executors.Transient("push", fmt.Errorf("git: the push to %s did not finish in %v", redactURL(deployURL), e.opts.PushTimeout))
	}
	switch {
	case err == nil:
		return false, nil
	case errors.Is(err, git.NoErrAlreadyUpToDate), errors.Is(err, git.ErrNonFastForwardUpdate),
		strings.Contains(err.Error(), "non-fast-forward"), strings.Contains(err.Error(), "fetch first"):
		// someone (a previous attempt) pushed master meanwhile
		return true, nil
	}
	err = pushError("push the job", err)
	if executors.IsPermanent(err) {
		err = fmt.Errorf("%w (check cc_auth_user %q and the organisation's token)", err, e.opts.AuthUser)
	}
	return false, err
}

// redactURL drops any user info from a URL for messages.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "the deploy URL"
	}
	u.User = nil
	return u.String()
}

func pushError(what string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	err = fmt.Errorf("git: could not %s: %w", what, err)
	if errors.Is(err, transport.ErrAuthenticationRequired) || errors.Is(err, transport.ErrAuthorizationFailed) {
		return executors.Permanent("push", err)
	}
	return executors.Transient("push", err)
}

// masterExists tells whether deployURL's master branch exists: the job
// was pushed there.
func (e *Executor) masterExists(ctx context.Context, deployURL, token string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, e.opts.PushTimeout)
	defer cancel()
	rem := git.NewRemote(memory.NewStorage(), &config.RemoteConfig{Name: "clever", URLs: []string{deployURL}})
	refs, err := rem.ListContext(ctx, &git.ListOptions{Auth: &githttp.BasicAuth{Username: e.opts.AuthUser, Password: token}})
	if errors.Is(err, transport.ErrEmptyRemoteRepository) {
		return false, nil
	}
	if err != nil {
		return false, pushError("read the refs of "+redactURL(deployURL), err)
	}
	for _, r := range refs {
		if r.Name() == pushBranch {
			return true, nil
		}
	}
	return false, nil
}

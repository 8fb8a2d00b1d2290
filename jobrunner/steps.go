package jobrunner

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/docker/docker/api/types/volume"

	"gitlab.com/paas-runner/paas-runner/job"
)

// The job's steps in order, and what their outcome is.

// runJob prepares, fetches sources, runs the script and after_script.
func (r *runner) runJob(ctx context.Context) result {
	timeout := time.Duration(r.p.RunnerInfo.Timeout) * time.Second
	if timeout <= 0 {
		timeout = time.Hour
	}
	jctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hard, stopHard := context.WithCancel(jctx)
	defer stopHard()
	go func() {
		select {
		case <-r.abortCh:
			stopHard()
		case <-hard.Done():
		}
	}()

	r.printf("%sRunning with %s %s%s\n", ansiBoldGreen, r.o.Info.Name, r.o.Info.Version, ansiReset)
	if r.p.HasRunSteps() {
		// GitLab sends run: jobs to any runner; doing nothing would pass
		r.printf("%sERROR: this job is written with the run: keyword (CI/CD steps), which this runner does not support; use script:%s\n", ansiBoldRed, ansiReset)
		return result{state: "failed", reason: job.RunnerUnsupported}
	}
	img := r.p.Image.Name
	if img == "" {
		img = r.o.Config.Docker.Image
	}
	img = r.expanded.Expand(img)
	if img == "" {
		r.printf("%sERROR: the job has no image and [runners.docker] sets none%s\n", ansiBoldRed, ansiReset)
		return result{state: "failed", reason: job.ConfigurationError}
	}
	r.debugTrace() // its warning, if any, comes first like GitLab Runner's
	platform, err := parsePlatform(r.jobPlatformSpec())
	if err != nil {
		r.printf("%sERROR: %v%s\n", ansiBoldRed, err, ansiReset)
		return result{state: "failed", reason: job.ConfigurationError}
	}
	end := r.section("prepare_executor", "Preparing the docker executor")
	err = r.prepareJobImage(hard, img, platform)
	if err == nil {
		err = r.startServices(hard)
	}
	end()
	if err != nil {
		r.printf("%sERROR: %v%s\n", ansiBoldRed, err, ansiReset)
		return r.failure(jctx, ctx, failureReason(err, job.RunnerSystemFailure), 1)
	}
	srcDir, inHost := r.hostBuildsDir()
	if inHost {
		r.volume, r.inHost = r.o.Job.BuildsVolume.Name, true
	} else {
		vol, err := r.docker.VolumeCreate(hard, volume.CreateOptions{Name: r.name + "-builds", Labels: r.labels()})
		if err != nil {
			r.printf("%sERROR: creating the builds volume: %v%s\n", ansiBoldRed, err, ansiReset)
			return r.failure(jctx, ctx, job.RunnerSystemFailure, 1)
		}
		r.volume = vol.Name
	}

	end = r.section("get_sources", "Getting source from Git repository")
	if code, herr := r.preGetSources(hard, img); herr != nil || code != 0 {
		end()
		if herr != nil {
			r.printf("%sERROR: pre_get_sources_script: %v%s\n", ansiBoldRed, herr, ansiReset)
			return r.failure(jctx, ctx, job.RunnerSystemFailure, 1)
		}
		r.printf("%sERROR: Job failed: pre_get_sources_script: exit code %d%s\n", ansiBoldRed, code, ansiReset)
		return r.failure(jctx, ctx, job.ScriptFailure, code)
	}
	if inHost {
		err = mkdirAllOpen(r.o.Job.BuildsVolume.Path, srcDir)
	} else if srcDir, err = os.MkdirTemp("", "paas-runner-src"); err == nil {
		defer os.RemoveAll(srcDir)
	}
	if err == nil {
		err = fetchSources(hard, r.p, srcDir, r.o.Config.TLSCA, r.trace)
	}
	end()
	if err == nil && len(r.p.Dependencies) > 0 {
		end = r.section("download_artifacts", "Downloading artifacts")
		if derr := r.downloadDependencies(hard, srcDir); derr != nil {
			end()
			r.printf("%sERROR: downloading artifacts: %v%s\n", ansiBoldRed, derr, ansiReset)
			return r.failure(jctx, ctx, "missing_dependency_failure", 1)
		}
		end()
	}
	if err != nil {
		r.printf("%sERROR: getting the sources: %v%s\n", ansiBoldRed, err, ansiReset)
		return r.failure(jctx, ctx, job.ScriptFailure, 1)
	}

	maxAge := r.o.Config.Cache.MaxAge
	if maxAge <= 0 {
		maxAge = DefaultCacheMaxAge
	}
	if len(r.p.Cache) > 0 {
		r.removeStaleCaches(hard, maxAge, time.Now()) // first: a stale cache is not restored
		end = r.section("restore_cache", "Restoring cache")
		r.restoreCaches(hard, img, srcDir)
		end()
	}
	if len(r.p.Cache) == 0 {
		// housekeeping only: done while the script starts, not before
		swept := make(chan struct{})
		go func() { defer close(swept); r.removeStaleCaches(hard, maxAge, time.Now()) }()
		defer func() { <-swept }()
	}
	var script []string
	var after []string
	for _, st := range r.p.Steps {
		switch st.Name {
		case "after_script":
			after = st.Script
		case "script", "release":
			script = append(script, st.Script...)
		}
	}
	end = r.section("step_script", "Executing \"step_script\" stage of the job script")
	code, err := r.runScript(hard, r.cancelCh, img, script, srcDir, nil)
	end()
	res := result{state: "success"}
	switch {
	case jctx.Err() == context.DeadlineExceeded:
		r.printf("%sERROR: Job failed: execution took longer than %v seconds%s\n", ansiBoldRed, timeout.Seconds(), ansiReset)
		res = result{state: "failed", reason: job.JobExecutionTimeout, exitCode: code}
	case r.aborted():
		r.printf("%sERROR: Job failed: canceled%s\n", ansiBoldRed, ansiReset)
		return result{state: "failed", reason: job.UnknownFailure, exitCode: code}
	case r.isCanceling():
		r.printf("%sERROR: Job failed: canceled%s\n", ansiBoldRed, ansiReset)
		res = result{state: "failed", reason: job.UnknownFailure, exitCode: code}
	case err != nil:
		r.printf("%sERROR: Job failed (system failure): %v%s\n", ansiBoldRed, err, ansiReset)
		res = result{state: "failed", reason: job.RunnerSystemFailure}
	case code != 0:
		r.printf("%sERROR: Job failed: exit code %d%s\n", ansiBoldRed, code, ansiReset)
		res = result{state: "failed", reason: job.ScriptFailure, exitCode: code}
	}
	if len(after) > 0 && !r.aborted() {
		status := "success"
		if res.state != "success" {
			status = "failed"
			if r.isCanceling() {
				status = "canceled"
			}
		}
		// after_script has its own timeout, and runs even after a timeout
		actx, acancel := context.WithTimeout(ctx, 5*time.Minute)
		end = r.section("after_script", "Running after_script")
		acode, aerr := r.runScript(actx, nil, img, after, "", []job.Variable{{Key: "CI_JOB_STATUS", Value: status, Public: true}})
		end()
		acancel()
		if aerr == nil && acode != 0 {
			aerr = fmt.Errorf("exit code %d", acode)
		}
		if aerr != nil {
			// GitLab Runner's warning
			r.printf("%sWARNING: after_script failed, but job will continue unaffected: %v%s\n", ansiYellow, aerr, ansiReset)
		}
	}
	if !r.aborted() {
		r.mu.Lock()
		scriptContainer := r.script
		r.mu.Unlock()
		if scriptContainer != "" && len(r.p.Cache) > 0 {
			cctx, ccancel := context.WithTimeout(ctx, time.Hour)
			end = r.section("archive_cache", "Saving cache")
			r.saveCaches(cctx, img, scriptContainer, res.state == "success", srcDir)
			end()
			ccancel()
		}
		if scriptContainer != "" {
			actx, acancel := context.WithTimeout(ctx, time.Hour)
			aerr := r.uploadArtifacts(actx, scriptContainer, res.state == "success", srcDir)
			acancel()
			if aerr != nil {
				r.printf("%sERROR: %v%s\n", ansiBoldRed, aerr, ansiReset)
				if res.state == "success" {
					res = result{state: "failed", reason: job.RunnerSystemFailure}
				}
			}
		}
	}
	if res.state == "success" {
		r.printf("%sJob succeeded%s\n", ansiBoldGreen, ansiReset)
	}
	return res
}

func (r *runner) isCanceling() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.canceling
}

// failure is the result of a failure before the script ran.
func (r *runner) failure(jctx, ctx context.Context, reason string, code int) result {
	if jctx.Err() == context.DeadlineExceeded {
		return result{state: "failed", reason: job.JobExecutionTimeout, exitCode: code}
	}
	if r.aborted() || r.isCanceling() {
		return result{state: "failed", reason: job.UnknownFailure, exitCode: code}
	}
	return result{state: "failed", reason: reason, exitCode: code}
}

// preGetSources runs the hooks: pre_get_sources_script where GitLab Runner
// runs it: before the sources are fetched (here by the inner runner itself,
// so in a container of the job's image, with the job's variables, in the
// project directory), not when GIT_STRATEGY is none or empty. Its exit
// code is returned.
func (r *runner) preGetSources(ctx context.Context, img string) (int, error) {
	var cmds []string
	for _, h := range r.p.Hooks {
		if h.Name == "pre_get_sources_script" {
			cmds = append(cmds, h.Script...)
		}
	}
	if st := r.expanded.Get("GIT_STRATEGY"); len(cmds) == 0 || st == "none" || st == "empty" {
		return 0, nil
	}
	return r.runScript(ctx, r.cancelCh, img, cmds, "", nil)
}

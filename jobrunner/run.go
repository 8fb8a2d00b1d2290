package jobrunner

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
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
	}
}

// Options configure one run.
type Options struct {
	Config *RunnerConfig
	Job    *Job
	Docker *client.Client
	// TraceInterval is the default log update interval (3 s).
	TraceInterval time.Duration
	Logger        *zap.Logger
	UserAgent     string
	Info          coordinator.Info
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
	docker *client.Client
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
	network   string // per-job network, when the job has services
	script    string // the script container, for artifacts
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
	gl, err := coordinator.New(coordinator.Config{URL: o.Config.URL, Token: j.Token, UserAgent: o.UserAgent, Info: o.Info, Logger: o.Logger})
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
	r.trace = NewTrace(gl, j.ID, j.Token, j.TraceOffset, j.TraceCRC, secrets, o.Config.OutputLimit*1024, o.TraceInterval, r.onStatus)
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

// projectDir is where the sources go: <builds_dir>/<project full path>.
func (r *runner) projectDir() string {
	p := r.p.JobInfo.ProjectFullPath
	if p == "" {
		p = fmt.Sprintf("project-%d", r.p.JobInfo.ProjectID)
	}
	return strings.TrimRight(r.o.Config.BuildsDir, "/") + "/" + p
}

// variables: the payload's, the runner's environment, and the predefined
// ones a runner adds.
func (r *runner) variables() job.Variables {
	c := r.o.Config
	vs := job.Variables{
		{Key: "CI_PROJECT_DIR", Value: r.projectDir(), Public: true},
		{Key: "CI_BUILDS_DIR", Value: c.BuildsDir, Public: true},
		{Key: "CI_SERVER", Value: "yes", Public: true},
		{Key: "CI_RUNNER_SHORT_TOKEN", Value: "", Public: true},
		{Key: "CI_RUNNER_EXECUTABLE_ARCH", Value: runtime.GOOS + "/" + runtime.GOARCH, Public: true},
		{Key: "CI_RUNNER_VERSION", Value: r.o.Info.Version, Public: true},
		{Key: "CI_RUNNER_REVISION", Value: r.o.Info.Revision, Public: true},
		{Key: "CI_JOB_TIMEOUT", Value: strconv.Itoa(r.p.RunnerInfo.Timeout), Public: true},
		{Key: "CI_DISPOSABLE_ENVIRONMENT", Value: "true", Public: true},
		{Key: "CI", Value: "true", Public: true},
		{Key: "GITLAB_CI", Value: "true", Public: true},
	}
	for _, e := range c.Environment {
		if k, v, ok := strings.Cut(e, "="); ok {
			vs = append(vs, job.Variable{Key: k, Value: v})
		}
	}
	return append(vs, r.p.Variables...)
}

// env renders variables for a container: each expanded once unless raw
// (job.Variables.Expanded); file variables point at files written under
// dir.
func (r *runner) env(extra ...job.Variable) ([]string, map[string][]byte) {
	vs := append(append(job.Variables{}, r.vars...), extra...).Expanded()
	files := map[string][]byte{}
	seen := map[string]int{}
	var out []string
	for _, v := range vs {
		val := v.Value
		if v.File {
			p := r.projectDir() + ".tmp/" + v.Key
			files[p] = []byte(val)
			val = p
		}
		if i, ok := seen[v.Key]; ok {
			out[i] = v.Key + "=" + val
			continue
		}
		seen[v.Key] = len(out)
		out = append(out, v.Key+"="+val)
	}
	return out, files
}

const (
	ansiBoldGreen = "\x1b[32;1m"
	ansiBoldRed   = "\x1b[31;1m"
	ansiReset     = "\x1b[0;m"
)

func (r *runner) printf(format string, a ...any) { fmt.Fprintf(r.trace, format, a...) }

func (r *runner) section(name, header string) func() {
	start := time.Now().Unix()
	fmt.Fprintf(r.trace, "section_start:%d:%s\r\x1b[0K%s%s%s\n", start, name, ansiBoldGreen, header, ansiReset)
	return func() { fmt.Fprintf(r.trace, "section_end:%d:%s\r\x1b[0K", time.Now().Unix(), name) }
}

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
	img := r.p.Image.Name
	if img == "" {
		img = r.o.Config.Docker.Image
	}
	img = r.expanded.Expand(img)
	if img == "" {
		r.printf("%sERROR: the job has no image and [runners.docker] sets none%s\n", ansiBoldRed, ansiReset)
		return result{state: "failed", reason: job.ConfigurationError}
	}
	end := r.section("prepare_executor", "Preparing the docker executor")
	err := r.pullImage(hard, img, r.p.Image.PullPolicy)
	if err == nil {
		err = r.startServices(hard)
	}
	end()
	if err != nil {
		r.printf("%sERROR: %v%s\n", ansiBoldRed, err, ansiReset)
		return r.failure(jctx, ctx, job.RunnerSystemFailure, 1)
	}
	vol, err := r.docker.VolumeCreate(hard, volume.CreateOptions{Name: r.name + "-builds", Labels: r.labels()})
	if err != nil {
		r.printf("%sERROR: creating the builds volume: %v%s\n", ansiBoldRed, err, ansiReset)
		return r.failure(jctx, ctx, job.RunnerSystemFailure, 1)
	}
	r.volume = vol.Name

	end = r.section("get_sources", "Getting source from Git repository")
	srcDir, err := os.MkdirTemp("", "paas-runner-src")
	if err == nil {
		defer os.RemoveAll(srcDir)
		err = fetchSources(hard, r.p, srcDir, r.trace)
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
	r.removeStaleCaches(hard, maxAge, time.Now())
	if len(r.p.Cache) > 0 {
		end = r.section("restore_cache", "Restoring cache")
		r.restoreCaches(hard, img, srcDir)
		end()
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
		_, aerr := r.runScript(actx, nil, img, after, "", []job.Variable{{Key: "CI_JOB_STATUS", Value: status, Public: true}})
		end()
		acancel()
		if aerr != nil {
			r.printf("%sWARNING: after_script failed: %v%s\n", ansiBoldRed, aerr, ansiReset)
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

// pullImage applies the pull policy (the job's, else the runner's, else
// always): always pulls, if-not-present pulls a missing image, never
// requires it locally.
func (r *runner) pullImage(ctx context.Context, ref string, policies []string) error {
	if len(policies) == 0 {
		policies = r.o.Config.Docker.PullPolicy
	}
	if len(policies) == 0 {
		policies = []string{"always"}
	}
	_, ierr := r.docker.ImageInspect(ctx, ref)
	present := ierr == nil
	var lastErr error
	for _, pol := range policies {
		if pol == "never" || pol == "if-not-present" {
			if present {
				r.printf("Using locally found image %s\n", ref)
				return nil
			}
			if pol == "never" {
				continue
			}
		}
		// always, or if-not-present with the image missing: pull; a
		// failure falls through to the next policy of the list
		r.printf("Pulling docker image %s ...\n", ref)
		rc, err := r.docker.ImagePull(ctx, ref, image.PullOptions{RegistryAuth: r.registryAuth(ref)})
		if err == nil {
			_, err = io.Copy(io.Discard, rc)
			rc.Close()
		}
		if err == nil {
			return nil
		}
		lastErr = fmt.Errorf("pulling %s: %w", ref, err)
	}
	if lastErr != nil {
		return lastErr
	}
	return fmt.Errorf("image %s is not present locally and the pull policy (%s) does not allow pulling it", ref, strings.Join(policies, ", "))
}

// registryAuth picks the payload's credentials for the image's registry.
func (r *runner) registryAuth(ref string) string {
	domain, _ := job.SplitDockerDomain(ref)
	for _, c := range r.p.Credentials {
		if c.Type == "registry" && (c.URL == domain || strings.TrimSuffix(c.URL, ":443") == domain) {
			a, _ := registry.EncodeAuthConfig(registry.AuthConfig{Username: c.Username, Password: c.Password, ServerAddress: c.URL})
			return a
		}
	}
	return ""
}

// shellScript renders commands the way GitLab Runner runs them: each
// printed as "$ command" in green, run with eval, the first failure ending
// the script with its status.
func (r *runner) shellScript(cmds []string) string {
	var b strings.Builder
	b.WriteString("set -e\n")
	fmt.Fprintf(&b, "mkdir -p %s && cd %s\n", shQuote(r.projectDir()), shQuote(r.projectDir()))
	for _, c := range cmds {
		shown := c
		if strings.Contains(shown, "\n") {
			shown = strings.SplitN(shown, "\n", 2)[0] + " # collapsed multi-line command"
		}
		fmt.Fprintf(&b, "printf '%%s\\n' %s\n", shQuote(ansiBoldGreen+"$ "+shown+ansiReset))
		fmt.Fprintf(&b, "eval %s\n", shQuote(c))
	}
	return b.String()
}

func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// runScript runs commands in a new container of img with the builds volume
// at builds_dir; srcDir, when set, is copied into the project directory
// first. graceful, when closed, stops the container (SIGTERM, then KILL).
func (r *runner) runScript(ctx context.Context, graceful <-chan struct{}, img string, cmds []string, srcDir string, extra []job.Variable) (int, error) {
	env, files := r.env(extra...)
	cfg := &container.Config{
		Image: img, Env: env, WorkingDir: "/",
		Cmd:    []string{"sh", "-c", r.shellScript(cmds)},
		Labels: r.labels(),
	}
	if ep := r.p.Image.Entrypoint; len(ep) > 0 {
		cfg.Entrypoint = ep
	} else {
		cfg.Entrypoint = []string{}
	}
	hc := &container.HostConfig{
		NetworkMode: container.NetworkMode(r.o.Config.Docker.NetworkMode),
		Privileged:  r.o.Config.Docker.Privileged,
		Mounts:      []mount.Mount{{Type: mount.TypeVolume, Source: r.volume, Target: r.o.Config.BuildsDir}},
	}
	if r.network != "" {
		hc.NetworkMode = container.NetworkMode(r.network)
	}
	r.mu.Lock()
	n := len(r.created)
	r.mu.Unlock()
	c, err := r.docker.ContainerCreate(ctx, cfg, hc, nil, nil, fmt.Sprintf("%s-%d", r.name, n))
	if err != nil {
		return 0, fmt.Errorf("creating the job container: %w", err)
	}
	r.track(c.ID)
	if srcDir != "" {
		r.mu.Lock()
		r.script = c.ID
		r.mu.Unlock()
	}
	if srcDir != "" {
		t, err := tarDir(srcDir, r.projectDir())
		if err != nil {
			return 0, fmt.Errorf("packing the sources: %w", err)
		}
		if err := r.docker.CopyToContainer(ctx, c.ID, "/", t, container.CopyToContainerOptions{}); err != nil {
			return 0, fmt.Errorf("copying the sources into the job container: %w", err)
		}
	}
	if len(files) > 0 {
		var entries []struct{ name, data string }
		for p, d := range files {
			entries = append(entries, struct{ name, data string }{p, string(d)})
		}
		t, err := tarFiles(entries)
		if err == nil {
			err = r.docker.CopyToContainer(ctx, c.ID, "/", t, container.CopyToContainerOptions{})
		}
		if err != nil {
			return 0, fmt.Errorf("writing file variables: %w", err)
		}
	}
	att, err := r.docker.ContainerAttach(ctx, c.ID, container.AttachOptions{Stream: true, Stdout: true, Stderr: true})
	if err != nil {
		return 0, fmt.Errorf("attaching to the job container: %w", err)
	}
	defer att.Close()
	copied := make(chan struct{})
	go func() {
		_, _ = stdcopy.StdCopy(r.trace, r.trace, att.Reader)
		close(copied)
	}()
	waitC, errC := r.docker.ContainerWait(context.WithoutCancel(ctx), c.ID, container.WaitConditionNextExit)
	if err := r.docker.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		return 0, fmt.Errorf("starting the job container: %w", err)
	}
	stop := func(grace time.Duration) {
		sctx, cancel := context.WithTimeout(context.Background(), grace+10*time.Second)
		defer cancel()
		secs := int(grace.Seconds())
		_ = r.docker.ContainerStop(sctx, c.ID, container.StopOptions{Timeout: &secs})
	}
	for {
		select {
		case w := <-waitC:
			<-copied
			if w.Error != nil {
				return int(w.StatusCode), errors.New(w.Error.Message)
			}
			return int(w.StatusCode), nil
		case err := <-errC:
			return 0, fmt.Errorf("waiting for the job container: %w", err)
		case <-graceful:
			graceful = nil
			go stop(10 * time.Second)
		case <-ctx.Done():
			stop(0)
			w := <-waitC
			<-copied
			return int(w.StatusCode), nil
		}
	}
}

func tarFiles(entries []struct{ name, data string }) (io.Reader, error) {
	var buf bytes.Buffer
	tw := newTar(&buf)
	for _, e := range entries {
		if err := tw.add(e.name, []byte(e.data), 0o600); err != nil {
			return nil, err
		}
	}
	return &buf, tw.Close()
}

// cleanup removes every container and the volume this job created.
func (r *runner) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r.mu.Lock()
	ids := append([]string(nil), r.created...)
	r.mu.Unlock()
	for _, id := range ids {
		if err := r.docker.ContainerRemove(ctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !cerrdefs.IsNotFound(err) {
			r.log.Warn("removing a job container failed", zap.Error(err))
		}
	}
	if r.volume != "" {
		if err := r.docker.VolumeRemove(ctx, r.volume, true); err != nil && !cerrdefs.IsNotFound(err) {
			r.log.Warn("removing the builds volume failed", zap.Error(err))
		}
	}
	if r.network != "" {
		if err := r.docker.NetworkRemove(ctx, r.network); err != nil && !cerrdefs.IsNotFound(err) {
			r.log.Warn("removing the job network failed", zap.Error(err))
		}
	}
}

// finalUpdate reports the result, repeating while GitLab answers 202 or
// fails transiently, until ctx ends.
func (r *runner) finalUpdate(ctx context.Context, res result, size int64, checksum string) error {
	u := coordinator.Update{State: res.state, ExitCode: res.exitCode}
	if res.state == "failed" {
		u.FailureReason = mapReason(res.reason, r.p.Features.FailureReasons)
	}
	u.Output = &struct {
		Checksum string `json:"checksum,omitempty"`
		Bytesize int64  `json:"bytesize"`
	}{checksum, size}
	policy := coordinator.RetryPolicy{Min: time.Second, Max: time.Minute}
	for attempt := 0; ; attempt++ {
		ur, err := r.gl.UpdateJob(ctx, r.p.ID, r.p.Token, u)
		switch {
		case err == nil && ur.Accepted:
			return nil
		case errors.Is(err, job.ErrNotRunning):
			// canceled or already final in GitLab: nothing more to report
			return nil
		case coordinator.StatusOf(err) == http.StatusNotFound:
			// the job is gone (deleted with its project, say): stop
			r.log.Warn("GitLab does not know the job any more (404): its result is not reported", zap.Error(err))
			return nil
		case err != nil && !coordinator.IsTransient(err):
			return fmt.Errorf("reporting the job result: %w", err)
		}
		wait := policy.Backoff(attempt)
		if err == nil && ur.UpdateInterval > 0 {
			wait = ur.UpdateInterval
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = errors.New("GitLab did not accept the final state in time")
			}
			return fmt.Errorf("reporting the job result: %w", err)
		case <-time.After(wait):
		}
	}
}

// mapReason follows GitLab Runner: reasons the server does not list fall
// back to what it knows.
func mapReason(reason string, supported []string) string {
	always := map[string]bool{job.ScriptFailure: true, job.RunnerSystemFailure: true, job.JobExecutionTimeout: true}
	if reason == "" {
		return job.ScriptFailure
	}
	if always[reason] {
		return reason
	}
	for _, s := range supported {
		if s == reason {
			return reason
		}
	}
	switch reason {
	case job.ConfigurationError:
		return job.ScriptFailure
	case job.ExternalDependency:
		return job.RunnerSystemFailure
	}
	return job.UnknownFailure
}

// randomSuffix tells apart the resources of two runs of a same job id on
// one engine (two GitLab instances, a retried job).
func randomSuffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

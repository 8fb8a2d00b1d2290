package jobrunner

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/coordinator"
	"gitlab.com/paas-runner/paas-runner/job"
)

// Reporting the job's result to GitLab.

// finalUpdate reports the result, repeating while GitLab answers 202 or
// fails transiently, until ctx ends.
func (r *runner) finalUpdate(ctx context.Context, res result, size int64, checksum string) error {
	u := coordinator.Update{State: res.state, ExitCode: res.exitCode}
	if res.state == "failed" {
		u.FailureReason = job.MapFailureReason(res.reason, r.p.Features.FailureReasons)
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

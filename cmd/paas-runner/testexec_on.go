//go:build paasrunner_testexec

package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/dispatcher"
	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/cleverdocker"
	"gitlab.com/paas-runner/paas-runner/executors/executortest"
	"gitlab.com/paas-runner/paas-runner/pipeguard"
)

// addTestExecutors adds "test-dir", whose hosts are files, to builds made
// for the process-level tests (go build -tags paasrunner_testexec).
func addTestExecutors(reg registry) {
	// test-dir-watch also reports host ends (<name>.exit files)
	reg["test-dir-watch"] = func(ctx context.Context, rc *config.Runner, env executorEnv, log *zap.Logger) (executors.Executor, error) {
		ex, err := reg["test-dir"](ctx, rc, env, log)
		if err != nil {
			return nil, err
		}
		return &executortest.WatchingDir{Dir: *ex.(*executortest.Dir)}, nil
	}
	reg["test-dir"] = func(_ context.Context, _ *config.Runner, _ executorEnv, _ *zap.Logger) (executors.Executor, error) {
		dir := os.Getenv("PAAS_RUNNER_TEST_EXECUTOR_DIR")
		if dir == "" {
			return nil, fmt.Errorf("PAAS_RUNNER_TEST_EXECUTOR_DIR is not set")
		}
		delay, _ := time.ParseDuration(os.Getenv("PAAS_RUNNER_TEST_EXECUTOR_DELAY"))
		return &executortest.Dir{Path: dir, Hold: os.Getenv("PAAS_RUNNER_TEST_EXECUTOR_HOLD"), Delay: delay}, nil
	}
}

// testOverrides applies the process tests' knobs, only in test builds:
// PAAS_RUNNER_RETRY_MIN makes retries fast.
func testOverrides(dc *dispatcher.Config) {
	if v := os.Getenv("PAAS_RUNNER_RETRY_MIN"); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			dc.RetryMin, dc.RetryMax = d, 10*d
		}
	}
}

// testCleverOverrides makes clever-docker's retries fast in test builds
// (PAAS_RUNNER_RETRY_MIN).
func testCleverOverrides(o *cleverdocker.Options) {
	if v := os.Getenv("PAAS_RUNNER_RETRY_MIN"); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			o.RetryMin, o.RetryMax, o.RetryFor = d, 10*d, 100*d
		}
	}
}

// testPipelineOverrides makes pipeline guards poll every
// PAAS_RUNNER_PIPEGUARD_INTERVAL in test builds.
func testPipelineOverrides(w *pipeguard.Watcher) {
	if v := os.Getenv("PAAS_RUNNER_PIPEGUARD_INTERVAL"); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			w.Interval = func() time.Duration { return d }
			w.MinGap = d
		}
	}
}

//go:build !paasrunner_testexec

package main

import (
	"gitlab.com/paas-runner/paas-runner/dispatcher"
	"gitlab.com/paas-runner/paas-runner/executors/cleverdocker"
	"gitlab.com/paas-runner/paas-runner/pipeguard"
)

// addTestExecutors adds nothing to production builds.
func addTestExecutors(registry) {}

// testOverrides: production builds read no test knob from the environment.
func testOverrides(*dispatcher.Config) {}

// testCleverOverrides: production builds read no test knob.
func testCleverOverrides(*cleverdocker.Options) {}

// testPipelineOverrides: production builds read no test knob.
func testPipelineOverrides(*pipeguard.Watcher) {}

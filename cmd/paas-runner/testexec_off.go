//go:build !paasrunner_testexec

package main

// addTestExecutors adds nothing to production builds.
func addTestExecutors(registry) {}

package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// asHeptapodRunner answers Heptapod Runner's entry point. paas-runner's
// host image links /usr/bin/gitlab-runner to paas-runner, so that an image
// built the way Heptapod PAAS Runner builds job images (ENTRYPOINT
// ["/usr/bin/gitlab-runner", "exec-fetched-job", "--config",
// ".../runner.toml", ".../job.json"], ENV DEBUG="true") runs paas-runner's
// inner runner. Called under that name, only exec-fetched-job (after
// gitlab-runner's global --debug / --log-level flags) is accepted; handled
// is false under any other name.
func asHeptapodRunner(argv []string, stderr io.Writer) (code int, handled bool) {
	if len(argv) == 0 || filepath.Base(argv[0]) != "gitlab-runner" {
		return 0, false
	}
	args, level := argv[1:], ""
flags:
	for len(args) > 0 {
		switch a := args[0]; {
		case a == "--debug" || a == "-debug":
			level, args = "debug", args[1:]
		case (a == "--log-level" || a == "-l") && len(args) > 1:
			level, args = args[1], args[2:]
		default:
			break flags
		}
	}
	if len(args) == 0 || args[0] != "exec-fetched-job" {
		fmt.Fprintln(stderr, "paas-runner (as gitlab-runner): only Heptapod Runner's exec-fetched-job is supported: gitlab-runner exec-fetched-job --config runner.toml job.json")
		return exitUsage, true
	}
	if level == "" && os.Getenv("DEBUG") == "true" {
		level = "debug" // Heptapod's Dockerfile sets DEBUG="true"
	}
	if level != "" && os.Getenv("PAAS_RUNNER_LOG_LEVEL") == "" {
		os.Setenv("PAAS_RUNNER_LOG_LEVEL", level)
	}
	return execFetchedJob(args[1:], stderr), true
}

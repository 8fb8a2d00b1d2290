// Package version holds the build's version, set with -ldflags.
package version

import (
	"fmt"
	"runtime"
)

// Set at build time: -X gitlab.com/paas-runner/paas-runner/internal/version.Version=…
var (
	Version  = "0.1.0-dev"
	Revision = "unknown"
)

// Name is the product name as reported to GitLab.
const Name = "paas-runner"

// UserAgent follows gitlab-runner's shape: name version (revision; go; os/arch).
func UserAgent() string {
	return fmt.Sprintf("%s %s (%s; %s; %s/%s)", Name, Version, Revision, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// String is what --version prints.
func String() string {
	return fmt.Sprintf("%s %s (revision %s, %s, %s/%s)", Name, Version, Revision, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

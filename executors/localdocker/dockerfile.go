package localdocker

import "fmt"

// BuildContext is what a job's host image is built from where the host
// image cannot be given files through the Docker API: clever-docker pushes
// it to the PaaS, which builds it. (local-docker copies HostFiles into the
// created container instead.)
type BuildContext struct {
	Dockerfile []byte
	JobJSON    []byte
	RunnerTOML []byte
}

// Dockerfile for a job host built from a context. With innerImage empty
// the host is baseImage, paas-runner's own image; otherwise innerImage
// takes Heptapod's shape (/usr/bin/gitlab-runner exec-fetched-job), which
// paas-runner's host image answers too: inner_image may name either.
func Dockerfile(baseImage, innerImage string) []byte {
	if innerImage != "" {
		return []byte(fmt.Sprintf(`FROM %s
COPY runner.toml %s/runner.toml
COPY job.json %s/job.json
ENV DEBUG="true"
ENTRYPOINT ["%s", "exec-fetched-job", "--config", "%s/runner.toml", "%s/job.json"]
`, innerImage, heptapodConfDir, heptapodConfDir, heptapodEntry, heptapodConfDir, heptapodConfDir))
	}
	return []byte(fmt.Sprintf(`FROM %s
COPY runner.toml %s/runner.toml
COPY job.json %s/job.json
ENTRYPOINT ["%s", "exec-fetched-job", "--config", "%s/runner.toml", "%s/job.json"]
`, baseImage, confDir, confDir, binaryInImage, confDir, confDir))
}

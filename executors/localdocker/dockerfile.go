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
	// CA is the runner's tls-ca-file, pushed as CAFile (nil: none).
	CA []byte
}

// HeptapodRunnerTOML is where a host of Heptapod's shape (a Dockerfile
// with an inner image) reads runner.toml.
const HeptapodRunnerTOML = heptapodConfDir + "/runner.toml"

// Dockerfile for a job host built from a context. With innerImage empty
// the host is baseImage, paas-runner's own image; otherwise innerImage
// takes Heptapod's shape (/usr/bin/gitlab-runner exec-fetched-job), which
// paas-runner's host image answers too: inner_image may name either. With
// withCA the context's CAFile goes next to runner.toml.
func Dockerfile(baseImage, innerImage string, withCA bool) []byte {
	dir, from, entry, env := confDir, baseImage, binaryInImage, ""
	if innerImage != "" {
		dir, from, entry, env = heptapodConfDir, innerImage, heptapodEntry, "ENV DEBUG=\"true\"\n"
	}
	ca := ""
	if withCA {
		ca = fmt.Sprintf("COPY %s %s/%s\n", CAFile, dir, CAFile)
	}
	return []byte(fmt.Sprintf(`FROM %s
COPY runner.toml %s/runner.toml
COPY job.json %s/job.json
%s%sENTRYPOINT ["%s", "exec-fetched-job", "--config", "%s/runner.toml", "%s/job.json"]
`, from, dir, dir, ca, env, entry, dir, dir))
}

// Package localdockertest prepares Docker test fixtures: a static
// paas-runner binary and a Heptapod-shaped inner image holding
// internal/testinner as /usr/bin/gitlab-runner.
package localdockertest

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
)

// Client returns a client for the engine of the environment, or an error
// when it is not reachable.
func Client() (*client.Client, error) {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx); err != nil {
		return nil, err
	}
	return cli, nil
}

// Required tells whether the environment demands Docker tests run
// (make test sets PAAS_RUNNER_REQUIRE_DOCKER): then a missing engine fails.
func Required() bool { return os.Getenv("PAAS_RUNNER_REQUIRE_DOCKER") != "" }

func repoRoot() string {
	_, f, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(f), "..", "..", "..")
}

// BuildStatic builds a package of this repository as a static binary.
func BuildStatic(pkg, out string) error {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = repoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building %s: %v\n%s", pkg, err, b)
	}
	return nil
}

// BuildInnerImage builds internal/testinner and an image tag FROM scratch
// with it as /usr/bin/gitlab-runner.
func BuildInnerImage(ctx context.Context, cli *client.Client, tag string) error {
	dir, err := os.MkdirTemp("", "testinner")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "testinner")
	if err := BuildStatic("./internal/testinner", bin); err != nil {
		return err
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct {
		name string
		mode int64
		data []byte
	}{{"Dockerfile", 0o644, []byte("FROM scratch\nCOPY gitlab-runner /usr/bin/gitlab-runner\nLABEL paas-runner.test=true\n")}, {"gitlab-runner", 0o755, data}} {
		tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), Typeflag: tar.TypeReg})
		tw.Write(f.data)
	}
	tw.Close()
	resp, err := cli.ImageBuild(ctx, &buf, build.ImageBuildOptions{Tags: []string{tag}, Remove: true})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var m struct{ Error string }
		if err := dec.Decode(&m); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		if m.Error != "" {
			return errors.New(strings.TrimSpace(m.Error))
		}
	}
}

// RemoveImage removes an image and its untagged parents.
func RemoveImage(cli *client.Client, tag string) {
	cli.ImageRemove(context.Background(), tag, image.RemoveOptions{Force: true, PruneChildren: true})
}

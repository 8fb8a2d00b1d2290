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
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/filters"
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
	return buildImage(ctx, cli, tag, map[string][]byte{
		"Dockerfile":    []byte("FROM scratch\nCOPY gitlab-runner /usr/bin/gitlab-runner\nLABEL paas-runner.test=true\n"),
		"gitlab-runner": data,
	})
}

// RemoveImage removes an image and its untagged parents.
func RemoveImage(cli *client.Client, tag string) {
	cli.ImageRemove(context.Background(), tag, image.RemoveOptions{Force: true, PruneChildren: true})
}

// RemoveImagesLabelled removes every image with the label (key=value).
func RemoveImagesLabelled(cli *client.Client, label string) {
	imgs, _ := cli.ImageList(context.Background(), image.ListOptions{Filters: filters.NewArgs(filters.Arg("label", label))})
	for _, im := range imgs {
		cli.ImageRemove(context.Background(), im.ID, image.RemoveOptions{Force: true, PruneChildren: true})
	}
}

// BuildBusyboxImage builds FROM scratch a job image whose /bin/sh is
// Debian's static busybox (its applets run from the shell): the test jobs'
// image, with no registry.
func BuildBusyboxImage(ctx context.Context, cli *client.Client, tag string) error {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("busybox-static (Debian) is needed for the test job image: %w", err)
	}
	return buildImage(ctx, cli, tag, map[string][]byte{
		"Dockerfile": []byte("FROM scratch\nCOPY busybox /bin/sh\nCOPY busybox /bin/busybox\nLABEL paas-runner.test=true\n"),
		"busybox":    bb,
	})
}

func buildImage(ctx context.Context, cli *client.Client, tag string, files map[string][]byte) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, data := range files {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(data)), Typeflag: tar.TypeReg})
		tw.Write(data)
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

// GitServer serves a one-commit repository (README) over smart HTTP with
// git http-backend and basic auth like GitLab: user gitlab-ci-token,
// password token. It returns the clone URL with those credentials, as a
// job payload's repo_url has them, and the commit.
func GitServer(t testing.TB, token string) (repoURL, sha string) {
	return gitServer(t, token, false)
}

// GitServerWithSubmodule is GitServer whose repository has a submodule
// "lib" (file LIBFILE) with a relative URL (../lib.git) on the same server.
func GitServerWithSubmodule(t testing.TB, token string) (repoURL, sha string) {
	return gitServer(t, token, true)
}

func gitServer(t testing.TB, token string, withSub bool) (repoURL, sha string) {
	t.Helper()
	root := t.TempDir()
	work := filepath.Join(root, "work")
	run := func(dir string, args ...string) string {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@t", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@t", "HOME="+root)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	os.MkdirAll(work, 0o755)
	run(work, "init", "-q", "-b", "main")
	os.WriteFile(filepath.Join(work, "README"), []byte("hello from the repository\n"), 0o644)
	if withSub {
		lib := filepath.Join(root, "libwork")
		os.MkdirAll(lib, 0o755)
		run(lib, "init", "-q", "-b", "main")
		os.WriteFile(filepath.Join(lib, "LIBFILE"), []byte("hello from the submodule\n"), 0o644)
		run(lib, "add", ".")
		run(lib, "commit", "-q", "-m", "lib")
		run(root, "clone", "-q", "--bare", lib, filepath.Join(root, "g", "lib.git"))
		run(work, "-c", "protocol.file.allow=always", "submodule", "add", "-q", filepath.Join(root, "g", "lib.git"), "lib")
		run(work, "config", "-f", ".gitmodules", "submodule.lib.url", "../lib.git")
	}
	run(work, "add", ".")
	run(work, "commit", "-q", "-m", "first")
	sha = run(work, "rev-parse", "HEAD")
	run(root, "clone", "-q", "--bare", work, filepath.Join(root, "g", "p.git"))
	h := &cgi.Handler{Path: "/usr/lib/git-core/git-http-backend", Env: []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != "gitlab-ci-token" || p != token {
			w.Header().Set("WWW-Authenticate", `Basic realm="GitLab"`)
			http.Error(w, "HTTP Basic: Access denied", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.Replace(srv.URL, "http://", "http://gitlab-ci-token:"+token+"@", 1) + "/g/p.git", sha
}

// BuildImage builds an image from the files of a build context (one of
// them the Dockerfile).
func BuildImage(ctx context.Context, cli *client.Client, tag string, files map[string][]byte) error {
	return buildImage(ctx, cli, tag, files)
}

package jobrunner

import (
	"context"
	"io"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"gitlab.com/paas-runner/paas-runner/job"
)

// gitRepos makes bare repositories under root/g: "ext" (file EXTFILE), and
// "p" with a submodule "ext" at extURL. It returns p's commit.
func gitRepos(t *testing.T, root, extURL string) string {
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
	ext, work := filepath.Join(root, "extwork"), filepath.Join(root, "work")
	os.MkdirAll(ext, 0o755)
	os.MkdirAll(work, 0o755)
	run(ext, "init", "-q", "-b", "main")
	os.WriteFile(filepath.Join(ext, "EXTFILE"), []byte("hello from elsewhere\n"), 0o644)
	run(ext, "add", ".")
	run(ext, "commit", "-q", "-m", "ext")
	run(root, "clone", "-q", "--bare", ext, filepath.Join(root, "g", "ext.git"))
	run(work, "init", "-q", "-b", "main")
	os.WriteFile(filepath.Join(work, "README"), []byte("main\n"), 0o644)
	run(work, "-c", "protocol.file.allow=always", "submodule", "add", "-q", filepath.Join(root, "g", "ext.git"), "ext")
	run(work, "config", "-f", ".gitmodules", "submodule.ext.url", extURL)
	run(work, "add", ".")
	run(work, "commit", "-q", "-m", "first")
	sha := run(work, "rev-parse", "HEAD")
	run(root, "clone", "-q", "--bare", work, filepath.Join(root, "g", "p.git"))
	return sha
}

// The job token goes to the project's GitLab only: a submodule on another
// host is fetched without it.
func TestSubmoduleOnOtherHostGetsNoToken(t *testing.T) {
	if _, err := os.Stat("/usr/lib/git-core/git-http-backend"); err != nil {
		t.Skip("no git http-backend")
	}
	const token = "glcbt-secret-job-token"
	root := t.TempDir()
	backend := &cgi.Handler{Path: "/usr/lib/git-core/git-http-backend", Env: []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"}}
	var mu sync.Mutex
	var leaked []string
	// the other host serves public repositories and records credentials
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); ok {
			mu.Lock()
			leaked = append(leaked, u+":"+p)
			mu.Unlock()
		}
		backend.ServeHTTP(w, r)
	}))
	defer other.Close()
	gitlab := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "gitlab-ci-token" || p != token {
			w.Header().Set("WWW-Authenticate", `Basic realm="GitLab"`)
			http.Error(w, "denied", http.StatusUnauthorized)
			return
		}
		backend.ServeHTTP(w, r)
	}))
	defer gitlab.Close()
	// same machine, another host name: localhost instead of 127.0.0.1
	otherURL := strings.Replace(other.URL, "127.0.0.1", "localhost", 1) + "/g/ext.git"
	sha := gitRepos(t, root, otherURL)
	p := &job.Payload{
		GitInfo: job.GitInfo{RepoURL: strings.Replace(gitlab.URL, "http://", "http://gitlab-ci-token:"+token+"@", 1) + "/g/p.git",
			Ref: "main", Sha: sha, Refspecs: []string{"+refs/heads/main:refs/remotes/origin/main"}},
		Variables: job.Variables{{Key: "GIT_SUBMODULE_STRATEGY", Value: "recursive"}},
	}
	dir := t.TempDir()
	if err := fetchSources(context.Background(), p, dir, nil, io.Discard); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "ext", "EXTFILE")); err != nil || string(b) != "hello from elsewhere\n" {
		t.Fatalf("submodule not checked out: %q %v", b, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(leaked) > 0 {
		t.Fatalf("credentials sent to another host: %v", leaked)
	}
}

func TestSameGitLab(t *testing.T) {
	origin, _ := url.Parse("https://gitlab.example/g/p.git")
	for raw, want := range map[string]bool{
		"https://gitlab.example/g/lib.git":      true,
		"https://GITLAB.example:443/g/lib.git":  true,
		"https://gitlab.example:8443/g/lib.git": false,
		"http://gitlab.example/g/lib.git":       false,
		"https://gitlab.example.evil/x.git":     false,
		"https://github.com/x/y.git":            false,
		"/srv/git/x.git":                        false,
	} {
		if got := sameGitLab(origin, raw); got != want {
			t.Errorf("%s: %v", raw, got)
		}
	}
}

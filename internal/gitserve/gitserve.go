// Package gitserve serves git repositories over smart HTTP the way GitLab
// and Clever Cloud do: git http-backend behind HTTP basic auth. It is for
// tests and the demo (`make demo`), never for production use.
package gitserve

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Backend is where Debian's git package puts git http-backend.
const Backend = "/usr/lib/git-core/git-http-backend"

// Server serves the bare repositories below Root.
type Server struct {
	*httptest.Server
	Root string
}

// New serves the repositories below root to clients whose basic-auth
// credentials auth accepts; pushes are allowed (git http-backend allows
// receive-pack for an authenticated REMOTE_USER).
func New(root string, auth func(user, password string) bool) (*Server, error) {
	return newServer(root, auth, nil)
}

// NewTLS is New serving HTTPS with tlsConfig (a certificate signed by a
// test CA: internal/testca), as a GitLab behind a private CA.
func NewTLS(root string, auth func(user, password string) bool, tlsConfig *tls.Config) (*Server, error) {
	if tlsConfig == nil {
		return nil, fmt.Errorf("gitserve: NewTLS needs a TLS configuration")
	}
	return newServer(root, auth, tlsConfig)
}

func newServer(root string, auth func(user, password string) bool, tlsConfig *tls.Config) (*Server, error) {
	if _, err := os.Stat(Backend); err != nil {
		return nil, fmt.Errorf("git http-backend is needed (Debian package git): %w", err)
	}
	s := &Server{Root: root}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || !auth(u, p) {
			w.Header().Set("WWW-Authenticate", `Basic realm="git"`)
			http.Error(w, "HTTP Basic: Access denied", http.StatusUnauthorized)
			return
		}
		h := &cgi.Handler{Path: Backend, Env: []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1", "REMOTE_USER=" + u}}
		h.ServeHTTP(w, r)
	}))
	if tlsConfig != nil {
		s.Server.TLS = tlsConfig
		s.Server.StartTLS()
	} else {
		s.Server.Start()
	}
	return s, nil
}

// URLWith returns the clone URL of repository path (e.g. "g/p.git") with the
// credentials in it, as a GitLab job payload's repo_url has them.
func (s *Server) URLWith(path, user, password string) string {
	scheme, rest, _ := strings.Cut(s.Server.URL, "://")
	return scheme + "://" + url.UserPassword(user, password).String() + "@" + rest + "/" + path
}

// MakeRepo creates the bare repository root/path with one commit of files
// on branch main and returns the commit's sha.
func MakeRepo(root, path string, files map[string]string) (string, error) {
	work, err := os.MkdirTemp("", "gitserve-work")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	run := func(dir string, args ...string) (string, error) {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=paas-runner", "GIT_AUTHOR_EMAIL=demo@paas-runner.invalid",
			"GIT_COMMITTER_NAME=paas-runner", "GIT_COMMITTER_EMAIL=demo@paas-runner.invalid", "HOME="+work, "GIT_CONFIG_NOSYSTEM=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return strings.TrimSpace(string(out)), nil
	}
	if _, err := run(work, "init", "-q", "-b", "main"); err != nil {
		return "", err
	}
	for name, body := range files {
		p := filepath.Join(work, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			return "", err
		}
	}
	if _, err := run(work, "add", "."); err != nil {
		return "", err
	}
	if _, err := run(work, "commit", "-q", "-m", "sample"); err != nil {
		return "", err
	}
	sha, err := run(work, "rev-parse", "HEAD")
	if err != nil {
		return "", err
	}
	dest := filepath.Join(root, path)
	if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
		return "", err
	}
	if _, err := run(work, "clone", "-q", "--bare", work, dest); err != nil {
		return "", err
	}
	return sha, nil
}

package cleverdockertest

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"sync"
)

// GitLab fronts a fake GitLab (upstream) and answers the group custom
// attributes endpoint itself, as research gitlab-runner-api.md §7.1 says:
// GET /api/v4/groups/:id/custom_attributes with an administrator's
// PRIVATE-TOKEN → 200 [{key, value}]; a missing or unknown token → 401; a
// known non-admin token → 403; an unknown group → 404. Everything else is
// proxied to upstream. Use its URL as the runner's url.
type GitLab struct {
	*httptest.Server
	mu       sync.Mutex
	admin    map[string]bool // token → is admin
	groups   map[string]map[string]string
	requests int
}

var reGroupAttrs = regexp.MustCompile(`^/api/v4/groups/([^/]+)/custom_attributes$`)

// NewGitLab starts the front for the duration of the test; adminToken may
// read custom attributes.
func NewGitLab(t TB, upstream, adminToken string) *GitLab {
	return newGitLab(t, upstream, adminToken, nil)
}

// NewGitLabTLS is NewGitLab serving HTTPS with tlsConfig (a GitLab behind
// a private CA: internal/testca).
func NewGitLabTLS(t TB, upstream, adminToken string, tlsConfig *tls.Config) *GitLab {
	return newGitLab(t, upstream, adminToken, tlsConfig)
}

func newGitLab(t TB, upstream, adminToken string, tlsConfig *tls.Config) *GitLab {
	u, err := url.Parse(upstream)
	if err != nil {
		t.Fatalf("upstream %q: %v", upstream, err)
	}
	g := &GitLab{admin: map[string]bool{adminToken: true}, groups: map[string]map[string]string{}}
	proxy := httputil.NewSingleHostReverseProxy(u)
	g.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m := reGroupAttrs.FindStringSubmatch(r.URL.EscapedPath())
		if m == nil {
			proxy.ServeHTTP(w, r)
			return
		}
		g.attributes(w, r, m[1])
	}))
	if tlsConfig != nil {
		g.Server.TLS = tlsConfig
		g.Server.StartTLS()
	} else {
		g.Server.Start()
	}
	t.Cleanup(g.Close)
	return g
}

// AddToken adds a token that is valid but not an administrator's.
func (g *GitLab) AddToken(tok string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.admin[tok] = false
}

// SetGroup creates or replaces a group (by full path) with its attributes.
func (g *GitLab) SetGroup(path string, attrs map[string]string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.groups[path] = attrs
}

// Requests is the number of custom attribute requests so far.
func (g *GitLab) Requests() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.requests
}

func (g *GitLab) attributes(w http.ResponseWriter, r *http.Request, escaped string) {
	id, err := url.PathUnescape(escaped)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.requests++
	tok := r.Header.Get("Private-Token")
	admin, known := g.admin[tok]
	switch {
	case r.Method != http.MethodGet:
		writeJSON(w, http.StatusMethodNotAllowed, `{"error":"405 Not Allowed"}`)
	case tok == "" || !known:
		writeJSON(w, http.StatusUnauthorized, `{"message":"401 Unauthorized"}`)
	case !admin:
		writeJSON(w, http.StatusForbidden, `{"message":"403 Forbidden"}`)
	case err != nil || g.groups[id] == nil:
		writeJSON(w, http.StatusNotFound, `{"message":"404 Group Not Found"}`)
	default:
		out := []map[string]string{}
		for _, k := range sortedKeys(g.groups[id]) {
			out = append(out, map[string]string{"key": k, "value": g.groups[id][k]})
		}
		writeObj(w, http.StatusOK, out)
	}
}

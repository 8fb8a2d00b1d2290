// Package cleverdockertest is an in-process Clever Cloud API double for the
// clever-docker executor, following ../shared/research/heptapod-and-clever.md
// §6 and §10: product lists, application create/get/list/delete, the env
// PUT, Message error bodies ({id, message, type}), repoState going from
// CREATING to CREATED, and a real git server (git http-backend over smart
// HTTP with basic auth) behind each application's deployment.httpUrl. Faults
// (500 id 5001, 429, slow answers) are injected per route. A fake GitLab
// front (Groups) serves group custom attributes for multi-tenant tests.
//
// Values the research could not confirm are marked "assumed" below.
package cleverdockertest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// TB is what the server needs of a test or benchmark.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

// Flavor is a product flavor as GET /v2/products/flavors returns it.
type Flavor struct {
	Name            string  `json:"name"`
	Mem             int     `json:"mem"`
	CPUs            int     `json:"cpus"`
	GPUs            int     `json:"gpus"`
	Disk            *int    `json:"disk"`
	Price           float64 `json:"price"`
	Available       bool    `json:"available"`
	Microservice    bool    `json:"microservice"`
	MachineLearning bool    `json:"machine_learning"`
	Nice            int     `json:"nice"`
	PriceID         string  `json:"price_id"`
	Memory          struct {
		Unit      string `json:"unit"`
		Value     int    `json:"value"`
		Formatted string `json:"formatted"`
	} `json:"memory"`
	CPUFactor float64 `json:"cpuFactor"`
	MemFactor float64 `json:"memFactor"`
}

func flavor(name string, memMiB, cpus int, available bool) Flavor {
	f := Flavor{Name: name, Mem: memMiB, CPUs: cpus, Available: available, Price: float64(memMiB) / 10000, PriceID: "apps." + name, CPUFactor: 1, MemFactor: 1}
	f.Memory.Unit, f.Memory.Value, f.Memory.Formatted = "B", memMiB<<20, fmt.Sprintf("%d MiB", memMiB)
	return f
}

// HeptapodFlavors is the flavor list of context "heptapod-runner" (names
// and sizes after Heptapod's tests and docs; the real payload was not
// seen): XS to 3XL plus an unavailable 4XL, and a generic "M" without the
// prefix that the executor must ignore.
func HeptapodFlavors() []Flavor {
	return []Flavor{
		flavor("heptapod-runner-XS", 2048, 1, true),
		flavor("heptapod-runner-S", 4096, 2, true),
		flavor("heptapod-runner-M", 8192, 4, true),
		flavor("heptapod-runner-L", 16384, 6, true),
		flavor("heptapod-runner-XL", 32768, 8, true),
		flavor("heptapod-runner-2XL", 65536, 12, true),
		flavor("heptapod-runner-3XL", 131072, 16, true),
		flavor("heptapod-runner-4XL", 262144, 32, false),
		flavor("M", 4096, 2, true),
	}
}

// DockerVariantID is the variant of the Docker runtime in Instances().
const DockerVariantID = "d3a7f2a8-0c6f-4f2b-9c3e-6a1f3c1b2d4e"

// App is an application as the fake holds it.
type App struct {
	ID           string
	OwnerID      string
	Name         string
	Description  string
	Zone         string
	Tags         []string
	InstanceType string
	Version      string
	Variant      string
	Lifetime     string
	MinFlavor    string
	MaxFlavor    string
	MinInstances int
	MaxInstances int
	Env          map[string]string
	EnvPuts      int
	Created      time.Time
	RepoState    string // CREATING, CREATED
	Gets         int
	// Pushes counts receive-pack requests that changed master.
	Pushes int
	hold   bool
}

// Request is one API request, recorded for assertions.
type Request struct {
	Method, Path, Route, RawQuery string
	Auth                          string
	Body                          []byte
	Status                        int
}

type fault struct {
	pattern *regexp.Regexp
	status  int
	delay   time.Duration
	remain  int // <0: forever
	header  http.Header
	body    string
}

// Server is the fake Clever Cloud API (URL + "/v2" is cc_api_url) with its
// git push host (GitURL).
type Server struct {
	*httptest.Server
	Git *httptest.Server
	t   TB

	mu sync.Mutex
	// AuthScheme the API accepts: "token" (Authorization: token X, as
	// Heptapod sends it) or "bearer". Default token.
	AuthScheme string
	// GitUser, when set, is the only basic-auth user the git host
	// accepts (Heptapod sends "Jenkins"); the password is the token of
	// the application's organisation.
	GitUser string
	// RepoCreatingGets is how many GETs of a new application still say
	// repoState CREATING (default 0: the first GET after the create says
	// CREATED; the create answer itself always says CREATING).
	RepoCreatingGets int
	// HoldRepos keeps new repositories CREATING until ReleaseRepos.
	HoldRepos bool
	// DockerVersion is the Docker runtime's current version: creating
	// with another instanceVersion fails with 400 id 9017.
	DockerVersion string
	// ProductsNeedAuth makes the product lists want an organisation's
	// token (as a proxy such as the API bridge may); the main API serves
	// them without credentials.
	ProductsNeedAuth bool
	// OmitHTTPURL leaves deployment.httpUrl out of the application's
	// view (deployUrl and deployment.url remain): a client must cope.
	OmitHTTPURL bool
	// CreateAnswer, if set, may change the view a create answers (the
	// application is made as usual).
	CreateAnswer func(view map[string]any)
	// OnPush is called (in its own goroutine) after a push changed an
	// application's master, with the pushed tree.
	OnPush func(app App, files map[string][]byte)

	flavors  map[string][]Flavor // by context
	orgs     map[string]string   // org id → token
	apps     map[string]*App
	order    []string
	requests []Request
	faults   []*fault
	counts   map[string]int
	repoRoot string
	changed  chan struct{}
}

// New starts the fake API and its git host for the duration of the test.
func New(t TB) *Server {
	t.Helper()
	if _, err := os.Stat(httpBackend()); err != nil {
		t.Fatalf("git http-backend is needed by the fake Clever git host: %v", err)
	}
	s := &Server{t: t, AuthScheme: "token", DockerVersion: "20231020",
		flavors: map[string][]Flavor{"heptapod-runner": HeptapodFlavors(), "": {flavor("pico", 256, 1, true), flavor("M", 4096, 2, true)}},
		orgs:    map[string]string{}, apps: map[string]*App{}, counts: map[string]int{},
		repoRoot: t.TempDir(), changed: make(chan struct{})}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serveAPI))
	s.Git = httptest.NewServer(http.HandlerFunc(s.serveGit))
	t.Cleanup(s.Git.Close)
	t.Cleanup(s.Server.Close)
	return s
}

func httpBackend() string {
	if out, err := exec.Command("git", "--exec-path").Output(); err == nil {
		return filepath.Join(strings.TrimSpace(string(out)), "git-http-backend")
	}
	return "/usr/lib/git-core/git-http-backend"
}

// APIURL is the cc_api_url of this fake.
func (s *Server) APIURL() string { return s.URL + "/v2" }

// AddOrg creates an organisation whose API token is token.
func (s *Server) AddOrg(id, token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.orgs[id] = token
}

// SetToken changes (or, with "", revokes) an organisation's token.
func (s *Server) SetToken(id, token string) { s.AddOrg(id, token) }

// SetFlavors replaces the flavors of a context.
func (s *Server) SetFlavors(context string, fs []Flavor) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.flavors[context] = fs
}

// SetDockerVersion changes the Docker runtime's version (an outdated
// cached instanceVersion is then refused with 400 id 9017).
func (s *Server) SetDockerVersion(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.DockerVersion = v
}

// ReleaseRepos ends HoldRepos: held repositories become CREATED at their
// next GET.
func (s *Server) ReleaseRepos() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.HoldRepos = false
	for _, a := range s.apps {
		a.hold = false
	}
}

// Fail makes the next count requests whose "METHOD route" matches pattern
// (routes as in Count) answer status with Clever's error body: 500 → id
// 5001; 429 → Retry-After: 1. count < 0: until ClearFaults.
func (s *Server) Fail(pattern string, status, count int) {
	body := fmt.Sprintf(`{"id":%d,"message":"%s","type":"error"}`, status, http.StatusText(status))
	h := http.Header{}
	switch status {
	case http.StatusInternalServerError:
		body = `{"id":5001,"message":"Internal server error","type":"error"}`
	case http.StatusTooManyRequests:
		h.Set("Retry-After", "1")
		body = `{"id":429,"message":"Too many requests","type":"error"}` // assumed body
	}
	s.addFault(&fault{pattern: regexp.MustCompile(pattern), status: status, remain: count, header: h, body: body})
}

// FailWith is Fail with a given Clever error id and message.
func (s *Server) FailWith(pattern string, status, id int, msg string, count int) {
	b, _ := json.Marshal(map[string]any{"id": id, "message": msg, "type": "error"})
	s.addFault(&fault{pattern: regexp.MustCompile(pattern), status: status, remain: count, header: http.Header{}, body: string(b)})
}

// Slow delays the next count matching requests by d (or until the client
// gives up), then answers them normally.
func (s *Server) Slow(pattern string, d time.Duration, count int) {
	s.addFault(&fault{pattern: regexp.MustCompile(pattern), delay: d, remain: count})
}

func (s *Server) addFault(f *fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, f)
}

// ClearFaults removes every injected fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// Count is the number of requests to a route, such as
// "POST /organisations/:id/applications" (routes: /products/instances,
// /products/flavors, /organisations/:id/applications[/:app[/env]]).
func (s *Server) Count(route string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[route]
}

// Total is the number of API requests so far.
func (s *Server) Total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.requests)
}

// Requests returns a copy of every API request so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Apps returns the existing applications of an organisation, oldest first.
func (s *Server) Apps(org string) []App {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []App
	for _, id := range s.order {
		if a, ok := s.apps[id]; ok && (org == "" || a.OwnerID == org) {
			c := *a
			c.Env = copyEnv(a.Env)
			out = append(out, c)
		}
	}
	return out
}

// AppNamed returns the applications called name (Clever allows several).
func (s *Server) AppNamed(name string) []App {
	var out []App
	for _, a := range s.Apps("") {
		if a.Name == name {
			out = append(out, a)
		}
	}
	return out
}

// AddApp creates an application directly (a leftover, another tool's app),
// created at the given time, with its repository CREATED.
func (s *Server) AddApp(org, name string, tags []string, created time.Time) App {
	return s.AddAppDescribed(org, name, "", tags, created)
}

// AddAppDescribed is AddApp with a description.
func (s *Server) AddAppDescribed(org, name, description string, tags []string, created time.Time) App {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := &App{ID: newAppID(), OwnerID: org, Name: name, Description: description, Tags: tags, Zone: "par", InstanceType: "docker", Version: s.DockerVersion,
		Lifetime: "TASK", MinFlavor: "heptapod-runner-M", MaxFlavor: "heptapod-runner-M", MinInstances: 1, MaxInstances: 1,
		Env: map[string]string{}, Created: created, RepoState: "CREATING"}
	s.apps[a.ID] = a
	s.order = append(s.order, a.ID)
	if err := s.makeRepoLocked(a); err != nil {
		s.t.Fatalf("%v", err)
	}
	return *a
}

// WaitFor waits until cond holds (checked after each request), or fails
// the test after timeout.
func (s *Server) WaitFor(timeout time.Duration, what string, cond func() bool) {
	s.t.Helper()
	deadline := time.After(timeout)
	for {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			s.t.Fatalf("timed out after %v waiting for %s", timeout, what)
			return
		}
	}
}

// notify wakes WaitFor; s.mu held.
func (s *Server) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Pushed reads the tree of an application's master: files by name, the
// number of commits, and the commit message.
func (s *Server) Pushed(appID string) (files map[string][]byte, commits int, msg string, err error) {
	repo, err := git.PlainOpen(filepath.Join(s.repoRoot, appID+".git"))
	if err != nil {
		return nil, 0, "", err
	}
	ref, err := repo.Reference(plumbing.NewBranchReferenceName("master"), true)
	if err != nil {
		return nil, 0, "", err
	}
	c, err := repo.CommitObject(ref.Hash())
	if err != nil {
		return nil, 0, "", err
	}
	files = map[string][]byte{}
	tree, err := c.Tree()
	if err != nil {
		return nil, 0, "", err
	}
	err = tree.Files().ForEach(func(f *object.File) error {
		r, err := f.Reader()
		if err != nil {
			return err
		}
		defer r.Close()
		b, err := io.ReadAll(r)
		files[f.Name] = b
		return err
	})
	if err != nil {
		return nil, 0, "", err
	}
	iter, err := repo.Log(&git.LogOptions{From: ref.Hash()})
	if err != nil {
		return nil, 0, "", err
	}
	_ = iter.ForEach(func(*object.Commit) error { commits++; return nil })
	return files, commits, c.Message, nil
}

// RepoDir is the bare repository of an application (for secret greps).
func (s *Server) RepoDir(appID string) string { return filepath.Join(s.repoRoot, appID+".git") }

func newAppID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	h := hex.EncodeToString(b)
	return "app_" + h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func copyEnv(m map[string]string) map[string]string {
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// ---- API ----

var (
	reApps    = regexp.MustCompile(`^/v2/organisations/([^/]+)/applications$`)
	reApp     = regexp.MustCompile(`^/v2/organisations/([^/]+)/applications/([^/]+)$`)
	reAppEnv  = regexp.MustCompile(`^/v2/organisations/([^/]+)/applications/([^/]+)/env$`)
	reAppTags = regexp.MustCompile(`^/v2/organisations/([^/]+)/applications/([^/]+)/tags$`)
)

func route(method, path string) string {
	switch {
	case path == "/v2/products/instances", path == "/v2/products/flavors", path == "/v2/products/zones":
		return method + " " + strings.TrimPrefix(path, "/v2")
	case reApps.MatchString(path):
		return method + " /organisations/:id/applications"
	case reApp.MatchString(path):
		return method + " /organisations/:id/applications/:app"
	case reAppEnv.MatchString(path):
		return method + " /organisations/:id/applications/:app/env"
	case reAppTags.MatchString(path):
		return method + " /organisations/:id/applications/:app/tags"
	}
	return method + " " + path
}

type recorder struct {
	http.ResponseWriter
	status int
}

func (r *recorder) WriteHeader(code int) { r.status = code; r.ResponseWriter.WriteHeader(code) }

func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	rt := route(r.Method, r.URL.Path)
	rec := &recorder{ResponseWriter: w, status: 200}
	s.mu.Lock()
	s.counts[rt]++
	idx := len(s.requests)
	s.requests = append(s.requests, Request{Method: r.Method, Path: r.URL.Path, Route: rt, RawQuery: r.URL.RawQuery, Auth: r.Header.Get("Authorization"), Body: body})
	var f *fault
	for i, x := range s.faults {
		if x.remain != 0 && x.pattern.MatchString(rt) {
			f = x
			if x.remain > 0 {
				x.remain--
			}
			if x.remain == 0 {
				s.faults = append(s.faults[:i], s.faults[i+1:]...)
			}
			break
		}
	}
	s.notify()
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.requests[idx].Status = rec.status
		s.notify()
		s.mu.Unlock()
	}()
	if f != nil && f.delay > 0 {
		select {
		case <-time.After(f.delay):
		case <-r.Context().Done():
			return
		}
	}
	if f != nil && f.status != 0 {
		for k, v := range f.header {
			rec.Header()[k] = v
		}
		writeJSON(rec, f.status, f.body)
		return
	}
	s.handle(rec, r, body)
}

func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

func writeObj(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	writeJSON(w, status, string(b))
}

func message(w http.ResponseWriter, status, id int, msg string) {
	t := "error"
	if status < 400 {
		t = "success"
	}
	writeObj(w, status, map[string]any{"id": id, "message": msg, "type": t})
}

// authorize checks the Authorization header against org's token. Assumed:
// Clever's exact 401 body was not seen; it is a Message with type error.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request, org string) bool {
	if !s.checkAuth(r, org) {
		message(w, http.StatusUnauthorized, 401, "Not authorized: invalid or missing credentials") // assumed id
		return false
	}
	return true
}

func (s *Server) checkAuth(r *http.Request, org string) bool {
	s.mu.Lock()
	tok, known := s.orgs[org]
	scheme := s.AuthScheme
	s.mu.Unlock()
	prefix := "token "
	if scheme == "bearer" {
		prefix = "Bearer "
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), prefix)
	return ok && got != "" && known && tok != "" && got == tok
}

func boolKeys(m map[string]bool) map[string]string {
	out := make(map[string]string, len(m))
	for k := range m {
		out[k] = k
	}
	return out
}

// authorizeAny checks the Authorization header against any
// organisation's token.
func (s *Server) authorizeAny(w http.ResponseWriter, r *http.Request) bool {
	s.mu.Lock()
	var orgs []string
	for id := range s.orgs {
		orgs = append(orgs, id)
	}
	s.mu.Unlock()
	for _, o := range orgs {
		if s.checkAuth(r, o) {
			return true
		}
	}
	message(w, http.StatusUnauthorized, 401, "Not authorized: invalid or missing credentials") // assumed id
	return false
}

func (s *Server) handle(w http.ResponseWriter, r *http.Request, body []byte) {
	p := r.URL.Path
	if len(body) > 0 && !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		// a JSON API: a body of another type is refused (assumed status
		// and body)
		message(w, http.StatusUnsupportedMediaType, 415, "Unsupported media type: want application/json")
		return
	}
	s.mu.Lock()
	needAuth := s.ProductsNeedAuth
	s.mu.Unlock()
	if needAuth && strings.HasPrefix(p, "/v2/products/") && !s.authorizeAny(w, r) {
		return
	}
	switch {
	case r.Method == http.MethodGet && p == "/v2/products/zones":
		zs := []map[string]any{}
		for _, z := range sortedKeys(boolKeys(knownZones)) {
			zs = append(zs, map[string]any{"name": z, "internal": false, "correspondingRegion": z})
		}
		writeObj(w, 200, zs)
	case r.Method == http.MethodGet && p == "/v2/products/instances":
		s.mu.Lock()
		v := s.DockerVersion
		s.mu.Unlock()
		writeObj(w, 200, instances(v))
	case r.Method == http.MethodGet && p == "/v2/products/flavors":
		s.mu.Lock()
		fs, ok := s.flavors[r.URL.Query().Get("context")]
		if !ok {
			fs = s.flavors[""]
		}
		s.mu.Unlock()
		writeObj(w, 200, fs)
	case reApps.MatchString(p):
		org := reApps.FindStringSubmatch(p)[1]
		if !s.authorize(w, r, org) {
			return
		}
		switch r.Method {
		case http.MethodGet:
			s.listApps(w, org)
		case http.MethodPost:
			s.createApp(w, org, body)
		default:
			message(w, http.StatusMethodNotAllowed, 405, "Method not allowed")
		}
	case reApp.MatchString(p):
		m := reApp.FindStringSubmatch(p)
		if !s.authorize(w, r, m[1]) {
			return
		}
		switch r.Method {
		case http.MethodGet:
			s.getApp(w, m[1], m[2])
		case http.MethodDelete:
			s.deleteApp(w, m[1], m[2])
		default:
			message(w, http.StatusMethodNotAllowed, 405, "Method not allowed")
		}
	case reAppEnv.MatchString(p):
		m := reAppEnv.FindStringSubmatch(p)
		if !s.authorize(w, r, m[1]) {
			return
		}
		switch r.Method {
		case http.MethodPut:
			s.putEnv(w, m[1], m[2], body)
		case http.MethodGet:
			s.mu.Lock()
			a, ok := s.apps[m[2]]
			var env []map[string]string
			if ok && a.OwnerID == m[1] {
				env = envList(a.Env)
			}
			s.mu.Unlock()
			if !ok || a.OwnerID != m[1] {
				message(w, 404, 4004, "Application not found")
				return
			}
			writeObj(w, 200, env)
		default:
			message(w, http.StatusMethodNotAllowed, 405, "Method not allowed")
		}
	case reAppTags.MatchString(p):
		// listOrganisationApplicationTags: the tags are not in the
		// application's view, only here
		m := reAppTags.FindStringSubmatch(p)
		if !s.authorize(w, r, m[1]) {
			return
		}
		if r.Method != http.MethodGet {
			message(w, http.StatusMethodNotAllowed, 405, "Method not allowed")
			return
		}
		s.mu.Lock()
		a, ok := s.apps[m[2]]
		tags := []string{}
		if ok && a.OwnerID == m[1] {
			tags = append(tags, a.Tags...)
		}
		s.mu.Unlock()
		if !ok || a.OwnerID != m[1] {
			message(w, 404, 4004, "Application not found")
			return
		}
		writeObj(w, 200, tags)
	default:
		message(w, 404, 404, "Not Found") // assumed
	}
}

func instances(dockerVersion string) []map[string]any {
	rt := func(typ, version, name, variantID, slug string) map[string]any {
		return map[string]any{
			"type": typ, "version": version, "name": name, "description": name + " runtime",
			"variant": map[string]any{"id": variantID, "slug": slug, "name": name, "deployType": slug, "logo": ""},
			"enabled": true, "comingSoon": false, "maxInstances": 40, "tags": []string{}, "deployments": []string{"git"},
			"flavors": []any{}, "defaultFlavor": map[string]any{"name": "S"}, "buildFlavor": map[string]any{"name": "M"},
		}
	}
	return []map[string]any{
		rt("node", "20250101", "Node", "395b6e9c-1a58-4c6d-a8a8-2a3f0e0a5b01", "node"),
		rt("docker", dockerVersion, "Docker", DockerVariantID, "docker"),
		rt("python", "20250101", "Python", "6ab5a1a0-2f3e-4c1f-9d5b-3f7d0e0a5b02", "python"),
	}
}

var knownZones = map[string]bool{"par": true, "parhds": true, "grahds": true, "rbx": true, "rbxhds": true, "scw": true, "ldn": true, "mtl": true, "sgp": true, "syd": true, "wsw": true}

// createBody is the schema of POST …/applications (research §10.3):
// unknown fields are refused, so that a typo in the executor shows.
type createBody struct {
	Name             *string           `json:"name"`
	Description      string            `json:"description"`
	Zone             string            `json:"zone"`
	Deploy           string            `json:"deploy"`
	Shutdownable     *bool             `json:"shutdownable"`
	InstanceType     string            `json:"instanceType"`
	InstanceVersion  string            `json:"instanceVersion"`
	InstanceVariant  string            `json:"instanceVariant"`
	InstanceLifetime string            `json:"instanceLifetime"`
	MinInstances     *int32            `json:"minInstances"`
	MaxInstances     *int32            `json:"maxInstances"`
	MinFlavor        string            `json:"minFlavor"`
	MaxFlavor        string            `json:"maxFlavor"`
	Tags             []string          `json:"tags"`
	Archived         *bool             `json:"archived"`
	StickySessions   *bool             `json:"stickySessions"`
	Homogeneous      *bool             `json:"homogeneous"`
	Favourite        *bool             `json:"favourite"`
	CancelOnPush     *bool             `json:"cancelOnPush"`
	SeparateBuild    *bool             `json:"separateBuild"`
	BuildFlavor      *string           `json:"buildFlavor"`
	OauthService     *string           `json:"oauthService"`
	OauthAppID       *string           `json:"oauthAppId"`
	OauthApp         json.RawMessage   `json:"oauthApp"`
	ApplianceID      *string           `json:"applianceId"`
	Branch           string            `json:"branch"`
	ForceHTTPS       string            `json:"forceHttps"`
	Env              map[string]string `json:"env"`
}

func (s *Server) flavorByName(name string) (Flavor, bool) {
	for _, fs := range s.flavors {
		for _, f := range fs {
			if f.Name == name && f.Available {
				return f, true
			}
		}
	}
	return Flavor{}, false
}

func (s *Server) createApp(w http.ResponseWriter, org string, body []byte) {
	var b createBody
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		message(w, 400, 400, "Invalid JSON body: "+err.Error()) // assumed id
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case b.Name == nil || *b.Name == "":
		message(w, 400, 400, "The application name is required") // assumed id
		return
	case b.InstanceType == "" || b.InstanceVersion == "":
		message(w, 400, 9017, "The specified instance does not exist")
		return
	case b.InstanceType != "docker" || b.InstanceVersion != s.DockerVersion:
		message(w, 400, 9017, "The specified instance does not exist")
		return
	case b.InstanceVariant != "" && b.InstanceVariant != DockerVariantID && !uuidRe.MatchString(b.InstanceVariant):
		message(w, 400, 400, "Invalid instance variant") // assumed
		return
	case b.Zone != "" && !knownZones[b.Zone]:
		message(w, 400, 400, "Unknown zone "+b.Zone) // assumed
		return
	case b.InstanceLifetime != "" && b.InstanceLifetime != "REGULAR" && b.InstanceLifetime != "MIGRATION" && b.InstanceLifetime != "TASK":
		message(w, 400, 400, "Invalid instanceLifetime") // assumed
		return
	case b.Deploy != "" && b.Deploy != "git":
		message(w, 400, 400, "Invalid deploy type") // assumed
		return
	}
	if b.MaxFlavor == "" {
		b.MaxFlavor = b.MinFlavor
	}
	for _, fl := range []string{b.MinFlavor, b.MaxFlavor} {
		if fl == "" {
			continue
		}
		if _, ok := s.flavorByName(fl); !ok {
			message(w, 400, 400, "The flavor "+fl+" does not exist") // assumed
			return
		}
	}
	minI, maxI := 1, 1
	if b.MinInstances != nil {
		minI = int(*b.MinInstances)
	}
	if b.MaxInstances != nil {
		maxI = int(*b.MaxInstances)
	}
	if minI < 1 || maxI < minI {
		message(w, 400, 400, "Invalid instance counts") // assumed
		return
	}
	zone := b.Zone
	if zone == "" {
		zone = "par"
	}
	lifetime := b.InstanceLifetime
	if lifetime == "" {
		lifetime = "REGULAR"
	}
	a := &App{ID: newAppID(), OwnerID: org, Name: *b.Name, Description: b.Description, Zone: zone, Tags: b.Tags,
		InstanceType: b.InstanceType, Version: b.InstanceVersion, Variant: b.InstanceVariant, Lifetime: lifetime,
		MinFlavor: b.MinFlavor, MaxFlavor: b.MaxFlavor, MinInstances: minI, MaxInstances: maxI,
		Env: copyEnv(b.Env), Created: time.Now(), RepoState: "CREATING", hold: s.HoldRepos}
	s.apps[a.ID] = a
	s.order = append(s.order, a.ID)
	view := s.appJSON(a)
	if s.CreateAnswer != nil {
		s.CreateAnswer(view)
	}
	writeObj(w, 200, view)
}

// RemoveApp deletes an application directly (removed in the console, or
// by someone else).
func (s *Server) RemoveApp(appID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.apps, appID)
	os.RemoveAll(filepath.Join(s.repoRoot, appID+".git"))
	s.notify()
}

// MarkDeleted leaves an application listed with its repository DELETED
// (being removed), as a server may for a while after the DELETE.
func (s *Server) MarkDeleted(appID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a, ok := s.apps[appID]; ok {
		a.RepoState = "DELETED"
	}
}

var uuidRe = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func (s *Server) appJSON(a *App) map[string]any {
	fl := func(name string) map[string]any {
		f, _ := s.flavorByName(name)
		return map[string]any{"name": name, "mem": f.Mem, "cpus": f.CPUs, "gpus": 0, "price": f.Price, "available": f.Available}
	}
	host := strings.TrimPrefix(s.Git.URL, "http://")
	view := map[string]any{
		"id": a.ID, "name": a.Name, "description": a.Description, "zone": a.Zone, "zoneId": a.Zone, "ownerId": a.OwnerID,
		"instance": map[string]any{
			"type": a.InstanceType, "version": a.Version,
			"variant":      map[string]any{"id": a.Variant, "slug": "docker", "name": "Docker", "deployType": "docker"},
			"minInstances": a.MinInstances, "maxInstances": a.MaxInstances, "maxAllowedInstances": 40,
			"minFlavor": fl(a.MinFlavor), "maxFlavor": fl(a.MaxFlavor), "flavors": []any{}, "defaultEnv": map[string]string{},
			"lifetime": a.Lifetime, "instanceAndVersion": a.InstanceType + "-" + a.Version,
		},
		"deployment": map[string]any{
			"shutdownable": false, "type": "GIT", "repoState": a.RepoState,
			"url":     "git+ssh://git@" + host + "/" + a.ID + ".git",
			"httpUrl": s.Git.URL + "/" + a.ID + ".git",
		},
		"vhosts": []any{}, "creationDate": a.Created.UnixMilli(), "last_deploy": 0, "archived": false,
		"stickySessions": false, "homogeneous": false, "favourite": false, "cancelOnPush": false,
		"webhookUrl": nil, "webhookSecret": nil, "separateBuild": false, "buildFlavor": nil,
		"state": "SHOULD_BE_DOWN", "commitId": nil, "appliance": nil, "branch": "master", "forceHttps": "DISABLED",
		// no "tags": Clever's ApplicationView has none (GET …/tags has them)
		"env":       envList(a.Env),
		"deployUrl": s.Git.URL + "/" + a.ID + ".git",
	}
	if s.OmitHTTPURL {
		delete(view["deployment"].(map[string]any), "httpUrl")
	}
	return view
}

func envList(m map[string]string) []map[string]string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]map[string]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, map[string]string{"name": k, "value": m[k]})
	}
	return out
}

func (s *Server) listApps(w http.ResponseWriter, org string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []map[string]any{}
	for _, id := range s.order {
		if a, ok := s.apps[id]; ok && a.OwnerID == org {
			out = append(out, s.appJSON(a))
		}
	}
	writeObj(w, 200, out)
}

func (s *Server) getApp(w http.ResponseWriter, org, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.apps[id]
	if !ok || a.OwnerID != org {
		message(w, 404, 4004, "Application not found")
		return
	}
	a.Gets++
	if a.RepoState == "CREATING" && !a.hold && !s.HoldRepos && a.Gets > s.RepoCreatingGets {
		if err := s.makeRepoLocked(a); err != nil {
			message(w, 500, 5001, "Internal server error")
			return
		}
	}
	writeObj(w, 200, s.appJSON(a))
}

// makeRepoLocked creates the application's bare repository: CREATED.
func (s *Server) makeRepoLocked(a *App) error {
	dir := filepath.Join(s.repoRoot, a.ID+".git")
	if out, err := exec.Command("git", "init", "-q", "--bare", dir).CombinedOutput(); err != nil {
		return fmt.Errorf("git init --bare: %v: %s", err, out)
	}
	if out, err := exec.Command("git", "-C", dir, "config", "http.receivepack", "true").CombinedOutput(); err != nil {
		return fmt.Errorf("git config: %v: %s", err, out)
	}
	a.RepoState = "CREATED"
	return nil
}

func (s *Server) deleteApp(w http.ResponseWriter, org, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.apps[id]
	if !ok || a.OwnerID != org {
		message(w, 404, 4004, "Application not found")
		return
	}
	delete(s.apps, id)
	os.RemoveAll(filepath.Join(s.repoRoot, a.ID+".git"))
	message(w, 200, 302, "deleted")
}

func (s *Server) putEnv(w http.ResponseWriter, org, id string, body []byte) {
	var env map[string]string
	if err := json.Unmarshal(body, &env); err != nil {
		message(w, 400, 400, "The body must be an object of string values: "+err.Error()) // assumed id
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.apps[id]
	if !ok || a.OwnerID != org {
		message(w, 404, 4004, "Application not found")
		return
	}
	a.Env = env
	a.EnvPuts++
	writeObj(w, 200, s.appJSON(a))
}

// ---- git host ----

func (s *Server) serveGit(w http.ResponseWriter, r *http.Request) {
	parts := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 2)
	appID := strings.TrimSuffix(parts[0], ".git")
	s.mu.Lock()
	a, ok := s.apps[appID]
	var tok, user, state string
	if ok {
		tok, state = s.orgs[a.OwnerID], a.RepoState
	}
	user = s.GitUser
	s.mu.Unlock()
	u, p, hasAuth := r.BasicAuth()
	if !hasAuth || p == "" || p != tok || (user != "" && u != user) || u == "" {
		w.Header().Set("WWW-Authenticate", `Basic realm="Clever Cloud"`)
		http.Error(w, "Authentication required", http.StatusUnauthorized)
		return
	}
	if !ok || state != "CREATED" {
		http.Error(w, "Repository not found", http.StatusNotFound)
		return
	}
	before := s.masterHash(appID)
	h := &cgi.Handler{Path: httpBackend(), Env: []string{"GIT_PROJECT_ROOT=" + s.repoRoot, "GIT_HTTP_EXPORT_ALL=1", "REMOTE_USER=" + u}}
	h.ServeHTTP(w, r)
	if !strings.HasSuffix(r.URL.Path, "/git-receive-pack") {
		return
	}
	after := s.masterHash(appID)
	if after == "" || after == before {
		return
	}
	s.mu.Lock()
	a, ok = s.apps[appID]
	var snapshot App
	if ok {
		a.Pushes++
		snapshot = *a
		snapshot.Env = copyEnv(a.Env)
	}
	hook := s.OnPush
	s.notify()
	s.mu.Unlock()
	if ok && hook != nil {
		files, _, _, err := s.Pushed(appID)
		if err == nil {
			go hook(snapshot, files)
		}
	}
}

func (s *Server) masterHash(appID string) string {
	repo, err := git.PlainOpen(filepath.Join(s.repoRoot, appID+".git"))
	if err != nil {
		return ""
	}
	ref, err := repo.Reference(plumbing.NewBranchReferenceName("master"), true)
	if err != nil {
		return ""
	}
	return ref.Hash().String()
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

package cleverdockertest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5/memfs"
	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing/object"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	"github.com/go-git/go-git/v5/storage/memory"
)

type call struct {
	status int
	body   map[string]any
	list   []map[string]any
	header http.Header
}

func do(t *testing.T, method, url, auth string, body any) call {
	t.Helper()
	var rd io.Reader
	if body != nil {
		if s, ok := body.(string); ok {
			rd = strings.NewReader(s)
		} else {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
	}
	req, _ := http.NewRequest(method, url, rd)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	c := call{status: resp.StatusCode, header: resp.Header}
	if len(raw) > 0 && raw[0] == '[' {
		if err := json.Unmarshal(raw, &c.list); err != nil {
			t.Fatalf("%s %s: %v: %s", method, url, err, raw)
		}
	} else if err := json.Unmarshal(raw, &c.body); err != nil {
		t.Fatalf("%s %s: %v: %s", method, url, err, raw)
	}
	return c
}

func validCreate() map[string]any {
	return map[string]any{"name": "hpd-job-abc-1", "zone": "par", "instanceLifetime": "TASK", "instanceType": "docker", "deploy": "git",
		"instanceVariant": "70d676a0-a775-4dc9-a43d-3121036e8515", "maxInstances": 1, "minInstances": 1,
		"instanceVersion": "20231020", "minFlavor": "heptapod-runner-M", "maxFlavor": "heptapod-runner-M"}
}

func errID(c call) float64 { v, _ := c.body["id"].(float64); return v }

func TestProducts(t *testing.T) {
	s := New(t)
	c := do(t, "GET", s.APIURL()+"/products/instances", "", nil)
	var docker map[string]any
	for _, it := range c.list {
		if it["name"] == "Docker" {
			docker = it
		}
	}
	if c.status != 200 || docker == nil || docker["type"] != "docker" || docker["version"] != "20231020" {
		t.Fatalf("instances: %d %v", c.status, c.list)
	}
	c = do(t, "GET", s.APIURL()+"/products/flavors?context=heptapod-runner", "", nil)
	if c.status != 200 || len(c.list) != len(HeptapodFlavors()) || c.list[2]["name"] != "heptapod-runner-M" || c.list[2]["mem"] != float64(8192) {
		t.Fatalf("flavors: %d %v", c.status, c.list)
	}
	if s.Count("GET /products/flavors") != 1 {
		t.Fatalf("count %d", s.Count("GET /products/flavors"))
	}
}

func TestApplicationLifecycle(t *testing.T) {
	s := New(t)
	s.AddOrg("orga_1", "tok1")
	s.AddOrg("orga_2", "tok2")
	apps := s.APIURL() + "/organisations/orga_1/applications"
	if c := do(t, "POST", apps, "", validCreate()); c.status != 401 {
		t.Fatalf("no auth: %d", c.status)
	}
	if c := do(t, "POST", apps, "token tok2", validCreate()); c.status != 401 {
		t.Fatalf("other org's token: %d", c.status)
	}
	if c := do(t, "POST", apps, "Bearer tok1", validCreate()); c.status != 401 {
		t.Fatalf("wrong scheme: %d", c.status)
	}
	b := validCreate()
	delete(b, "instanceVersion")
	if c := do(t, "POST", apps, "token tok1", b); c.status != 400 || errID(c) != 9017 || c.body["type"] != "error" ||
		c.body["message"] != "The specified instance does not exist" {
		t.Fatalf("missing instanceVersion: %d %v", c.status, c.body)
	}
	b = validCreate()
	b["instanceVersion"] = "20200101"
	if c := do(t, "POST", apps, "token tok1", b); c.status != 400 || errID(c) != 9017 {
		t.Fatalf("outdated instanceVersion: %d %v", c.status, c.body)
	}
	req, _ := http.NewRequest("POST", apps, strings.NewReader(`{"name":"x"}`))
	req.Header.Set("Authorization", "token tok1")
	req.Header.Set("Content-Type", "text/plain")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 415 {
		t.Fatalf("a body that is not JSON: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	b = validCreate()
	b["minFlavr"] = "M"
	if c := do(t, "POST", apps, "token tok1", b); c.status != 400 {
		t.Fatalf("unknown field: %d %v", c.status, c.body)
	}
	b = validCreate()
	b["maxFlavor"], b["minFlavor"] = "heptapod-runner-4XL", "heptapod-runner-4XL"
	if c := do(t, "POST", apps, "token tok1", b); c.status != 400 {
		t.Fatalf("unavailable flavor: %d %v", c.status, c.body)
	}
	if n := len(s.Apps("")); n != 0 {
		t.Fatalf("refused creates made %d apps", n)
	}
	c := do(t, "POST", apps, "token tok1", validCreate())
	if c.status != 200 {
		t.Fatalf("create: %d %v", c.status, c.body)
	}
	id, _ := c.body["id"].(string)
	dep, _ := c.body["deployment"].(map[string]any)
	if !strings.HasPrefix(id, "app_") || dep["repoState"] != "CREATING" || dep["httpUrl"] != s.Git.URL+"/"+id+".git" {
		t.Fatalf("create answer: %v", c.body)
	}
	// Clever accepts a second app with the same name
	if c := do(t, "POST", apps, "token tok1", validCreate()); c.status != 200 {
		t.Fatalf("second create: %d", c.status)
	}
	if n := len(s.AppNamed("hpd-job-abc-1")); n != 2 {
		t.Fatalf("%d apps named", n)
	}
	if c := do(t, "GET", apps, "token tok1", nil); c.status != 200 || len(c.list) != 2 {
		t.Fatalf("list: %d %v", c.status, c.list)
	}
	if c := do(t, "GET", s.APIURL()+"/organisations/orga_2/applications", "token tok2", nil); c.status != 200 || len(c.list) != 0 {
		t.Fatalf("other org list: %d %v", c.status, c.list)
	}
	app := apps + "/" + id
	c = do(t, "GET", app, "token tok1", nil)
	if dep, _ := c.body["deployment"].(map[string]any); c.status != 200 || dep["repoState"] != "CREATED" {
		t.Fatalf("get: %d %v", c.status, c.body)
	}
	// Clever's ApplicationView has no tags; GET …/tags has them
	if _, ok := c.body["tags"]; ok {
		t.Fatalf("tags in the application's view: %v", c.body)
	}
	b = validCreate()
	b["tags"] = []string{"t1", "t2"}
	tagged := do(t, "POST", apps, "token tok1", b)
	req, _ = http.NewRequest("GET", apps+"/"+tagged.body["id"].(string)+"/tags", nil)
	req.Header.Set("Authorization", "token tok1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var tags []string
	err = json.NewDecoder(resp.Body).Decode(&tags)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || strings.Join(tags, ",") != "t1,t2" {
		t.Fatalf("tags: %d %v %v", resp.StatusCode, tags, err)
	}
	if c := do(t, "PUT", app+"/env", "token tok1", `{"A": 1}`); c.status != 400 {
		t.Fatalf("env with a number: %d", c.status)
	}
	c = do(t, "PUT", app+"/env", "token tok1", map[string]string{"CC_MOUNT_DOCKER_SOCKET": "true"})
	env, _ := c.body["env"].([]any)
	if c.status != 200 || len(env) != 1 {
		t.Fatalf("env: %d %v", c.status, c.body)
	}
	if c := do(t, "GET", apps+"/app_nope", "token tok1", nil); c.status != 404 || errID(c) != 4004 {
		t.Fatalf("unknown app: %d %v", c.status, c.body)
	}
	if c := do(t, "PUT", apps+"/app_nope/env", "token tok1", map[string]string{}); c.status != 404 || errID(c) != 4004 {
		t.Fatalf("env of unknown app: %d %v", c.status, c.body)
	}
	if c := do(t, "DELETE", app, "token tok1", nil); c.status != 200 || errID(c) != 302 || c.body["type"] != "success" {
		t.Fatalf("delete: %d %v", c.status, c.body)
	}
	if c := do(t, "DELETE", app, "token tok1", nil); c.status != 404 || errID(c) != 4004 {
		t.Fatalf("delete again: %d %v", c.status, c.body)
	}
}

func TestRepoStateDrivenByTest(t *testing.T) {
	s := New(t)
	s.AddOrg("o", "t")
	s.RepoCreatingGets = 2
	c := do(t, "POST", s.APIURL()+"/organisations/o/applications", "token t", validCreate())
	url := s.APIURL() + "/organisations/o/applications/" + c.body["id"].(string)
	state := func() any { return do(t, "GET", url, "token t", nil).body["deployment"].(map[string]any)["repoState"] }
	for i, want := range []string{"CREATING", "CREATING", "CREATED"} {
		if got := state(); got != want {
			t.Fatalf("GET %d: %v, want %s", i+1, got, want)
		}
	}
	s.HoldRepos = true
	c = do(t, "POST", s.APIURL()+"/organisations/o/applications", "token t", validCreate())
	url = s.APIURL() + "/organisations/o/applications/" + c.body["id"].(string)
	for i := 0; i < 4; i++ {
		if got := state(); got != "CREATING" {
			t.Fatalf("held: %v", got)
		}
	}
	s.ReleaseRepos()
	if got := state(); got != "CREATED" {
		t.Fatalf("released: %v", got)
	}
}

func TestFaults(t *testing.T) {
	s := New(t)
	s.Fail("^GET /products/flavors$", 500, 1)
	s.Fail("^GET /products/instances$", 429, 2)
	if c := do(t, "GET", s.APIURL()+"/products/flavors", "", nil); c.status != 500 || errID(c) != 5001 {
		t.Fatalf("500: %d %v", c.status, c.body)
	}
	if c := do(t, "GET", s.APIURL()+"/products/flavors", "", nil); c.status != 200 {
		t.Fatalf("after the fault: %d", c.status)
	}
	for i := 0; i < 2; i++ {
		if c := do(t, "GET", s.APIURL()+"/products/instances", "", nil); c.status != 429 || c.header.Get("Retry-After") == "" {
			t.Fatalf("429: %d %v", c.status, c.header)
		}
	}
	if c := do(t, "GET", s.APIURL()+"/products/instances", "", nil); c.status != 200 {
		t.Fatalf("after 429s: %d", c.status)
	}
	s.Slow("^GET /products/instances$", time.Hour, -1)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", s.APIURL()+"/products/instances", nil)
	if _, err := http.DefaultClient.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow answer: %v", err)
	}
	s.ClearFaults()
	if c := do(t, "GET", s.APIURL()+"/products/instances", "", nil); c.status != 200 {
		t.Fatalf("cleared: %d", c.status)
	}
}

func push(url, user, pass string, files map[string]string) error {
	fs := memfs.New()
	repo, err := git.Init(memory.NewStorage(), fs)
	if err != nil {
		return err
	}
	wt, _ := repo.Worktree()
	for n, c := range files {
		f, _ := fs.Create(n)
		f.Write([]byte(c))
		f.Close()
		wt.Add(n)
	}
	if _, err := wt.Commit("Job definition", &git.CommitOptions{Author: &object.Signature{Name: "t", Email: "t@t", When: time.Now()}}); err != nil {
		return err
	}
	repo.CreateRemote(&config.RemoteConfig{Name: "paas", URLs: []string{url}})
	return repo.Push(&git.PushOptions{RemoteName: "paas", RefSpecs: []config.RefSpec{"refs/heads/master:refs/heads/master"},
		Auth: &githttp.BasicAuth{Username: user, Password: pass}})
}

func TestGitHost(t *testing.T) {
	s := New(t)
	s.AddOrg("o", "secret-tok")
	s.GitUser = "Jenkins"
	s.RepoCreatingGets = 1
	pushed := make(chan map[string][]byte, 1)
	s.OnPush = func(a App, files map[string][]byte) { pushed <- files }
	c := do(t, "POST", s.APIURL()+"/organisations/o/applications", "token secret-tok", validCreate())
	id := c.body["id"].(string)
	httpURL := c.body["deployment"].(map[string]any)["httpUrl"].(string)
	files := map[string]string{"Dockerfile": "FROM x\n", "job.json": "{}\n"}
	if err := push(httpURL, "Jenkins", "secret-tok", files); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("push while CREATING: %v", err)
	}
	do(t, "GET", s.APIURL()+"/organisations/o/applications/"+id, "token secret-tok", nil)
	do(t, "GET", s.APIURL()+"/organisations/o/applications/"+id, "token secret-tok", nil) // CREATED
	if err := push(httpURL, "Jenkins", "wrong", files); err == nil || !strings.Contains(err.Error(), "authentication") {
		t.Fatalf("push with a wrong password: %v", err)
	}
	if err := push(httpURL, "someone", "secret-tok", files); err == nil {
		t.Fatal("push with another user name succeeded")
	}
	if err := push(httpURL, "Jenkins", "secret-tok", files); err != nil {
		t.Fatalf("push: %v", err)
	}
	got, commits, msg, err := s.Pushed(id)
	if err != nil || commits != 1 || msg != "Job definition" || string(got["Dockerfile"]) != "FROM x\n" || string(got["job.json"]) != "{}\n" || len(got) != 2 {
		t.Fatalf("pushed: %v %d %q %v", err, commits, msg, got)
	}
	select {
	case f := <-pushed:
		if string(f["Dockerfile"]) != "FROM x\n" {
			t.Fatalf("hook got %v", f)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("OnPush not called")
	}
	if a := s.Apps("o"); len(a) != 1 || a[0].Pushes != 1 {
		t.Fatalf("apps %+v", a)
	}
	// a second, unrelated push is not a fast-forward: refused
	if err := push(httpURL, "Jenkins", "secret-tok", map[string]string{"x": "y"}); err == nil {
		t.Fatal("non-fast-forward push accepted")
	}
	do(t, "DELETE", s.APIURL()+"/organisations/o/applications/"+id, "token secret-tok", nil)
	if err := push(httpURL, "Jenkins", "secret-tok", files); err == nil {
		t.Fatal("push to a deleted app succeeded")
	}
}

func TestGitLabAttributes(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, `{"upstream":"`+r.URL.Path+`"}`)
	}))
	defer upstream.Close()
	g := NewGitLab(t, upstream.URL, "admin-tok")
	g.AddToken("user-tok")
	g.SetGroup("acme", map[string]string{"cc_orga_id": "orga_acme", "cc_orga_token": "acme-secret"})
	get := func(path, tok string) call {
		req, _ := http.NewRequest("GET", g.URL+path, nil)
		if tok != "" {
			req.Header.Set("PRIVATE-TOKEN", tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		c := call{status: resp.StatusCode}
		if raw[0] == '[' {
			json.Unmarshal(raw, &c.list)
		} else {
			json.Unmarshal(raw, &c.body)
		}
		return c
	}
	c := get("/api/v4/groups/acme/custom_attributes", "admin-tok")
	if c.status != 200 || len(c.list) != 2 || c.list[0]["key"] != "cc_orga_id" || c.list[1]["value"] != "acme-secret" {
		t.Fatalf("attributes: %d %v", c.status, c.list)
	}
	for tok, want := range map[string]int{"": 401, "bad": 401, "user-tok": 403} {
		if c := get("/api/v4/groups/acme/custom_attributes", tok); c.status != want {
			t.Fatalf("token %q: %d, want %d", tok, c.status, want)
		}
	}
	if c := get("/api/v4/groups/nope/custom_attributes", "admin-tok"); c.status != 404 || c.body["message"] != "404 Group Not Found" {
		t.Fatalf("unknown group: %d %v", c.status, c.body)
	}
	if c := get("/api/v4/jobs/request", ""); c.status != 200 || c.body["upstream"] != "/api/v4/jobs/request" {
		t.Fatalf("proxy: %d %v", c.status, c.body)
	}
	if g.Requests() != 5 {
		t.Fatalf("requests %d", g.Requests())
	}
}

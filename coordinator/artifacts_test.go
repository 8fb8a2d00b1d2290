package coordinator

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// An artifact download redirected to another host (object storage) does
// not carry the job token there; a redirect on the same host does.
func TestDownloadArtifactsRedirectKeepsTokenHome(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]string{} // server → Job-Token/Authorization it got
	record := func(name string, r *http.Request) {
		mu.Lock()
		seen[name] = r.Header.Get("Job-Token") + r.Header.Get("Authorization")
		mu.Unlock()
	}
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		record("storage", r)
		w.Write([]byte("zip bytes"))
	}))
	defer storage.Close()
	// another host name for the same machine
	storageURL := strings.Replace(storage.URL, "127.0.0.1", "localhost", 1)
	var gitlab *httptest.Server
	gitlab = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/v4/jobs/7/artifacts":
			record("gitlab", r)
			http.Redirect(w, r, gitlab.URL+"/moved/7", http.StatusFound)
		case "/moved/7":
			record("gitlab-moved", r)
			http.Redirect(w, r, storageURL+"/bucket/7?X-Amz-Signature=abc", http.StatusTemporaryRedirect)
		}
	}))
	defer gitlab.Close()
	c, err := New(Config{URL: gitlab.URL, Token: "glrt-x"})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := c.DownloadArtifacts(context.Background(), 7, "glcbt-job-token", &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != "zip bytes" {
		t.Fatalf("got %q", out.String())
	}
	mu.Lock()
	defer mu.Unlock()
	if seen["gitlab"] != "glcbt-job-token" || seen["gitlab-moved"] != "glcbt-job-token" {
		t.Errorf("the token must reach GitLab's own URLs: %v", seen)
	}
	if v, ok := seen["storage"]; !ok || v != "" {
		t.Errorf("object storage got credentials %q (visited %v)", v, ok)
	}
}

package coordinator

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

func testCtx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func artifactClient(t *testing.T, url string) *Client {
	t.Helper()
	c, err := New(Config{URL: url, Token: "glrt-artifacts-0123456789", ArtifactRetryMin: time.Millisecond, ArtifactRetryMax: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func bodyOf(b []byte) ArtifactBody {
	return func() (io.Reader, error) { return bytes.NewReader(b), nil }
}

func tempFile(t *testing.T) *os.File {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "dl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func fileData(t *testing.T, f *os.File) string {
	t.Helper()
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var zipUpload = ArtifactUpload{Filename: "artifacts.zip", Type: "archive", Format: "zip"}

// Uploads are tried 3 times in all on a 5xx (or any failure but 403 and
// 413), 6 times while GitLab answers 503, like gitlab-runner; the body
// is sent whole each time.
func TestUploadRetries(t *testing.T) {
	for _, tc := range []struct {
		status, fails, attempts int
		ok                      bool
	}{
		{502, 2, 3, true},
		{502, 3, 3, false},
		{500, 5, 3, false},
		{503, 5, 6, true},
		{503, 6, 6, false},
		{429, 2, 3, true},
		{400, 3, 3, false}, // gitlab-runner retries any other answer too
		{403, 1, 1, false},
		{413, 1, 1, false},
	} {
		gl := coordinatortest.New(t)
		j := gl.AddRunning("")
		c := artifactClient(t, gl.URL)
		gl.FailArtifactUploads(tc.status, tc.fails)
		var heard int
		up := zipUpload
		up.Retrying = func(error, time.Duration) { heard++ }
		err := c.UploadArtifacts(testCtx(t), j.ID, j.Token, up, bodyOf([]byte("PK zip bytes")))
		route := "POST /api/v4/jobs/" + itoa(j.ID) + "/artifacts"
		if (err == nil) != tc.ok || gl.Count(route) != tc.attempts || heard != tc.attempts-1 {
			t.Errorf("%d ×%d: err %v after %d attempts (%d retries heard), want ok=%v after %d", tc.status, tc.fails, err, gl.Count(route), heard, tc.ok, tc.attempts)
		}
		if tc.ok && string(gl.Job(j.ID).Artifacts["archive"].Data) != "PK zip bytes" {
			t.Errorf("%d: stored %q", tc.status, gl.Job(j.ID).Artifacts["archive"].Data)
		}
		if !tc.ok && StatusOf(err) != tc.status {
			t.Errorf("%d: error %v", tc.status, err)
		}
	}
}

// A connection cut before the answer is a failed attempt, tried again,
// for uploads and downloads alike.
func TestTransfersRetryTransportErrors(t *testing.T) {
	var mu sync.Mutex
	requests := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		mu.Lock()
		requests++
		first := requests%2 == 1
		mu.Unlock()
		if first {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusCreated)
			io.WriteString(w, "201")
			return
		}
		io.WriteString(w, "PK data")
	}))
	defer srv.Close()
	// fresh connections: Go's transport itself retries a GET on a reused one
	c, err := New(Config{URL: srv.URL, Token: "glrt-x", ArtifactRetryMin: time.Millisecond, ArtifactRetryMax: time.Millisecond,
		HTTPClient: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.UploadArtifacts(testCtx(t), 5, "glcbt-x", zipUpload, bodyOf([]byte("PK"))); err != nil {
		t.Fatalf("upload: %v", err)
	}
	f := tempFile(t)
	if err := c.DownloadArtifacts(testCtx(t), 5, "glcbt-x", DownloadOptions{}, f); err != nil || fileData(t, f) != "PK data" {
		t.Fatalf("download: %v %q", err, fileData(t, f))
	}
	mu.Lock()
	defer mu.Unlock()
	if requests != 4 {
		t.Errorf("%d requests", requests)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// A 307 moves the upload to the Location's scheme and host, same API
// path, and the body is sent again, with the job token on GitLab's host.
func TestUploadFollows307WithBody(t *testing.T) {
	gl := coordinatortest.New(t)
	j := gl.AddRunning("")
	c := artifactClient(t, gl.URL)
	gl.RedirectArtifactUploads(gl.URL+"/some/where?sig=1", 1)
	if err := c.UploadArtifacts(testCtx(t), j.ID, j.Token, zipUpload, bodyOf([]byte("PK again"))); err != nil {
		t.Fatal(err)
	}
	if n := gl.Count("POST /api/v4/jobs/" + itoa(j.ID) + "/artifacts"); n != 2 {
		t.Errorf("%d requests", n)
	}
	if got := string(gl.Job(j.ID).Artifacts["archive"].Data); got != "PK again" {
		t.Errorf("stored %q", got)
	}
}

// A 307 or 308 to another server: the body follows, the job token does not.
func TestUploadRedirectToAnotherHostKeepsToken(t *testing.T) {
	for _, code := range []int{http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		var mu sync.Mutex
		var gotToken, gotPath, gotFile string
		other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			f, _, err := r.FormFile("file")
			var b []byte
			if err == nil {
				b, _ = io.ReadAll(f)
			}
			mu.Lock()
			gotToken, gotPath, gotFile = r.Header.Get("Job-Token"), r.URL.Path, string(b)
			mu.Unlock()
			w.WriteHeader(http.StatusCreated)
			io.WriteString(w, "201")
		}))
		gl := coordinatortest.New(t)
		j := gl.AddRunning("")
		gl.Inject(`artifacts$`, code, 1, http.Header{"Location": {other.URL + "/elsewhere/upload?X-Sig=abc"}})
		c := artifactClient(t, gl.URL)
		err := c.UploadArtifacts(testCtx(t), j.ID, j.Token, zipUpload, bodyOf([]byte("PK body")))
		other.Close()
		mu.Lock()
		if err != nil || gotFile != "PK body" || gotToken != "" || gotPath != "/api/v4/jobs/"+itoa(j.ID)+"/artifacts" {
			t.Errorf("%d: err %v; the other host got file %q token %q at %s", code, err, gotFile, gotToken, gotPath)
		}
		mu.Unlock()
	}
}

// Another fake GitLab as the redirect target refuses the token-less
// upload; the error says why.
func TestUploadRedirectRefusedElsewhereSaysWhy(t *testing.T) {
	gl := coordinatortest.New(t)
	second := coordinatortest.New(t)
	j := gl.AddRunning("")
	gl.RedirectArtifactUploads(second.URL+"/api/v4/jobs/1/artifacts", 1)
	c := artifactClient(t, gl.URL)
	err := c.UploadArtifacts(testCtx(t), j.ID, j.Token, zipUpload, bodyOf([]byte("PK")))
	if StatusOf(err) != 403 || !strings.Contains(err.Error(), "job token is not sent") {
		t.Fatalf("got %v", err)
	}
	if n := second.Count("POST /api/v4/jobs/" + itoa(j.ID) + "/artifacts"); n != 1 {
		t.Errorf("the second server got %d uploads", n)
	}
}

func TestTokenMayGo(t *testing.T) {
	for _, tc := range []struct {
		from, to string
		ok       bool
	}{
		{"https://gitlab.example.com/api/v4/", "https://GITLAB.example.com:443/x", true},
		{"http://gitlab.example.com/api/v4/", "https://gitlab.example.com/api/v4/", true},
		{"http://gitlab.example.com:8080/", "https://gitlab.example.com:8443/", false},
		{"https://gitlab.example.com/", "http://gitlab.example.com/", false},
		{"https://gitlab.example.com/", "https://storage.example.com/", false},
		{"https://gitlab.example.com/", "https://gitlab.example.com:8443/", false},
	} {
		f, _ := url.Parse(tc.from)
		to, _ := url.Parse(tc.to)
		if tokenMayGo(f, to) != tc.ok {
			t.Errorf("%s → %s: want %v", tc.from, tc.to, tc.ok)
		}
	}
}

// The fake GitLab validates artifact_type and artifact_format like Grape
// and the model do; the client reports GitLab's message.
func TestUploadInvalidTypeOrFormat(t *testing.T) {
	gl := coordinatortest.New(t)
	j := gl.AddRunning("")
	c := artifactClient(t, gl.URL)
	for _, tc := range []struct {
		typ, format, msg string
	}{
		{"bogus", "zip", "artifact_type does not have a valid value"},
		{"archive", "tar", "artifact_format does not have a valid value"},
		{"bogus", "tar", "artifact_type does not have a valid value, artifact_format does not have a valid value"},
		{"junit", "zip", "Validation failed: Invalid file format with specified file type"},
	} {
		err := c.UploadArtifacts(testCtx(t), j.ID, j.Token, ArtifactUpload{Filename: "x", Type: tc.typ, Format: tc.format}, bodyOf([]byte("x")))
		if StatusOf(err) != 400 || !strings.Contains(err.Error(), ": 400 "+tc.msg) {
			t.Errorf("%s/%s: %v", tc.typ, tc.format, err)
		}
	}
	if len(gl.Job(j.ID).Artifacts) != 0 {
		t.Error("an invalid upload was stored")
	}
}

// Without a file field, Grape's "file is missing" comes first.
func TestFakeGitLabUploadWithoutFile(t *testing.T) {
	gl := coordinatortest.New(t)
	j := gl.AddRunning("")
	req, _ := http.NewRequest(http.MethodPost, gl.URL+"/api/v4/jobs/"+itoa(j.ID)+"/artifacts?artifact_type=nope", strings.NewReader("--b--\r\n"))
	req.Header.Set("Content-Type", "multipart/form-data; boundary=b")
	req.Header.Set("Job-Token", j.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 400 || string(b) != `{"error":"file is missing, artifact_type does not have a valid value"}` {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
}

// An upload retried after GitLab stored it (a lost 201) is a success; a
// different file of the same type is refused.
func TestUploadSameTypeTwice(t *testing.T) {
	gl := coordinatortest.New(t)
	j := gl.AddRunning("")
	c := artifactClient(t, gl.URL)
	if err := c.UploadArtifacts(testCtx(t), j.ID, j.Token, zipUpload, bodyOf([]byte("one"))); err != nil {
		t.Fatal(err)
	}
	if err := c.UploadArtifacts(testCtx(t), j.ID, j.Token, zipUpload, bodyOf([]byte("one"))); err != nil {
		t.Fatalf("same file again: %v", err)
	}
	err := c.UploadArtifacts(testCtx(t), j.ID, j.Token, zipUpload, bodyOf([]byte("two")))
	if StatusOf(err) != 400 || !strings.Contains(err.Error(), "another artifact of the same type already exists") {
		t.Fatalf("other file: %v", err)
	}
}

func TestGzipMembers(t *testing.T) {
	var buf bytes.Buffer
	for _, f := range []struct{ name, data string }{{"a.xml", "<a/>"}, {"b.xml", "<b/>"}} {
		zw := gzip.NewWriter(&buf)
		zw.Name, zw.Comment = f.name, "reports/"+f.name
		io.WriteString(zw, f.data)
		zw.Close()
	}
	ms, err := coordinatortest.GzipMembers(buf.Bytes())
	if err != nil || len(ms) != 2 || ms[0].Name != "a.xml" || ms[1].Comment != "reports/b.xml" || string(ms[1].Data) != "<b/>" {
		t.Fatalf("%v %+v", err, ms)
	}
	if ms, err := coordinatortest.GzipMembers(nil); err != nil || len(ms) != 0 {
		t.Fatalf("empty: %v %v", ms, err)
	}
	if _, err := coordinatortest.GzipMembers(append(buf.Bytes(), "junk"...)); err == nil {
		t.Fatal("trailing junk accepted")
	}
}

// The fake GitLab reads junit uploads like GitLab's parser: each gzip
// member one XML document. Two reports in one member do not parse.
func TestFakeGitLabParsesJUnitMembers(t *testing.T) {
	gz := func(docs ...string) []byte {
		var buf bytes.Buffer
		for _, d := range docs {
			zw := gzip.NewWriter(&buf)
			io.WriteString(zw, d)
			zw.Close()
		}
		return buf.Bytes()
	}
	up := ArtifactUpload{Filename: "junit.xml.gz", Type: "junit", Format: "gzip"}
	for _, tc := range []struct {
		body   []byte
		errors int
	}{
		{gz("<testsuites/>\n", "<?xml version=\"1.0\"?>\n<testsuite name=\"b\"></testsuite>"), 0},
		{gz("<testsuites/>\n<testsuites/>\n"), 1},
		{gz("<testsuites>"), 1},
	} {
		gl := coordinatortest.New(t)
		j := gl.AddRunning("")
		if err := artifactClient(t, gl.URL).UploadArtifacts(testCtx(t), j.ID, j.Token, up, bodyOf(tc.body)); err != nil {
			t.Fatal(err)
		}
		if got := gl.Job(j.ID).Artifacts["junit"].ReportErrors; len(got) != tc.errors {
			t.Errorf("%q: report errors %q", tc.body, got)
		}
	}
}

// Downloads are tried 3 times; 401, 403 and 404 are final.
func TestDownloadRetries(t *testing.T) {
	for _, tc := range []struct {
		status, fails, attempts int
		ok                      bool
	}{
		{502, 2, 3, true},
		{503, 3, 3, false},
		{404, 1, 1, false},
		{403, 1, 1, false},
	} {
		gl := coordinatortest.New(t)
		caller, dep := gl.AddRunning(""), gl.AddRunning("")
		gl.SetArtifacts(dep.ID, []byte("PK dependency"))
		route := "GET /api/v4/jobs/" + itoa(dep.ID) + "/artifacts"
		gl.Inject("^"+route+"$", tc.status, tc.fails, nil)
		c := artifactClient(t, gl.URL)
		f := tempFile(t)
		f.WriteString("left over from a failed attempt")
		err := c.DownloadArtifacts(testCtx(t), dep.ID, caller.Token, DownloadOptions{}, f)
		if (err == nil) != tc.ok || gl.Count(route) != tc.attempts {
			t.Errorf("%d ×%d: %v after %d attempts", tc.status, tc.fails, err, gl.Count(route))
		}
		if tc.ok && fileData(t, f) != "PK dependency" {
			t.Errorf("got %q", fileData(t, f))
		}
	}
}

// direct_download=true: GitLab redirects to its object storage, which
// gets no job token; if the storage fails, the next attempt goes through
// GitLab (no direct_download), as gitlab-runner does.
func TestDownloadDirect(t *testing.T) {
	gl := coordinatortest.New(t)
	storage := gl.UseObjectStorage()
	caller, dep := gl.AddRunning(""), gl.AddRunning("")
	gl.SetArtifacts(dep.ID, []byte("PK stored"))
	c := artifactClient(t, gl.URL)
	route := "GET /api/v4/jobs/" + itoa(dep.ID) + "/artifacts"

	f := tempFile(t)
	if err := c.DownloadArtifacts(testCtx(t), dep.ID, caller.Token, DownloadOptions{DirectDownload: true}, f); err != nil {
		t.Fatal(err)
	}
	reqs := storage.Requests()
	if fileData(t, f) != "PK stored" || len(reqs) != 1 || gl.Count(route) != 1 {
		t.Fatalf("got %q, %d storage requests, %d GitLab requests", fileData(t, f), len(reqs), gl.Count(route))
	}
	if reqs[0].Get("Job-Token") != "" || reqs[0].Get("Authorization") != "" {
		t.Errorf("the object storage got credentials: %v", reqs[0])
	}

	storage.Fail(1)
	var heard []string
	f = tempFile(t)
	err := c.DownloadArtifacts(testCtx(t), dep.ID, caller.Token, DownloadOptions{DirectDownload: true,
		Retrying: func(err error, _ time.Duration) { heard = append(heard, err.Error()) }}, f)
	if err != nil || fileData(t, f) != "PK stored" {
		t.Fatalf("%v %q", err, fileData(t, f))
	}
	if len(storage.Requests()) != 2 || gl.Count(route) != 3 || len(heard) != 1 || !strings.Contains(heard[0], "500 object storage: code: InternalError, message: We encountered an internal error") {
		t.Errorf("%d storage requests, %d GitLab requests, retries heard %q", len(storage.Requests()), gl.Count(route), heard)
	}

	// without direct download, GitLab sends the file itself
	f = tempFile(t)
	if err := c.DownloadArtifacts(testCtx(t), dep.ID, caller.Token, DownloadOptions{}, f); err != nil || fileData(t, f) != "PK stored" {
		t.Fatalf("%v %q", err, fileData(t, f))
	}
	if len(storage.Requests()) != 2 {
		t.Error("a proxied download went to the storage")
	}
}

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
	f := tempFile(t)
	if err := c.DownloadArtifacts(context.Background(), 7, "glcbt-job-token", DownloadOptions{}, f); err != nil {
		t.Fatal(err)
	}
	if got := fileData(t, f); got != "zip bytes" {
		t.Fatalf("got %q", got)
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

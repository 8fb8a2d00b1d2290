package coordinatortest

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Artifact is one upload.
type Artifact struct {
	Filename string
	Data     []byte
	Format   string
	ExpireIn string
	// Members are the gzip members of a gzip upload, as GitLab reads them
	// (Gitlab::Ci::Build::Artifacts::Adapters::GzipStream: one document
	// per member); MembersErr says why the stream did not read whole.
	Members    []GzipMember
	MembersErr error
	// ReportErrors are what GitLab's report parser would say of a junit
	// upload: each member must be one XML document (a member holding two
	// files' reports does not parse). GitLab accepts the upload and shows
	// these on the pipeline's test report.
	ReportErrors []string
}

// GzipMember is one member of a multi-member gzip stream.
type GzipMember struct {
	Name    string // header name (gitlab-runner: the file's base name)
	Comment string // header comment (gitlab-runner: the file's path)
	Data    []byte
}

// GzipMembers splits a gzip stream into its members, each one read on
// its own like GitLab's GzipStream adapter does. An empty stream has none.
func GzipMembers(data []byte) ([]GzipMember, error) {
	var out []GzipMember
	br := bufio.NewReader(bytes.NewReader(data))
	zr, err := gzip.NewReader(br)
	if errors.Is(err, io.EOF) {
		return nil, nil
	}
	for err == nil {
		zr.Multistream(false)
		var b []byte
		b, err = io.ReadAll(zr)
		if err != nil {
			break
		}
		out = append(out, GzipMember{Name: zr.Name, Comment: zr.Comment, Data: b})
		if err = zr.Reset(br); errors.Is(err, io.EOF) {
			return out, nil
		}
	}
	return out, fmt.Errorf("gzip member %d: %w", len(out)+1, err)
}

// The values GitLab accepts for artifact_type (Ci::JobArtifact.file_types)
// with the artifact_format each one must have
// (Enums::Ci::JobArtifact.type_and_format_pairs).
var artifactFormatOf = map[string]string{
	"archive": "zip", "metadata": "gzip", "trace": "raw",
	"junit": "gzip", "metrics": "gzip", "metrics_referee": "gzip", "network_referee": "gzip", "dotenv": "gzip",
	"cobertura": "gzip", "jacoco": "gzip", "cluster_applications": "gzip", "cyclonedx": "gzip", "annotations": "gzip",
	"repository_xray": "gzip", "lsif": "zip", "scip": "zip",
	"sast": "raw", "secret_detection": "raw", "dependency_scanning": "raw", "container_scanning": "raw",
	"cluster_image_scanning": "raw", "dast": "raw", "license_scanning": "raw", "accessibility": "raw",
	"codequality": "raw", "performance": "raw", "browser_performance": "raw", "load_performance": "raw",
	"terraform": "raw", "requirements": "raw", "requirements_v2": "raw", "coverage_fuzzing": "raw",
	"api_fuzzing": "raw", "sarif": "raw",
}

// artifactFormats: Ci::JobArtifact.file_formats.
var artifactFormats = []string{"raw", "zip", "gzip"}

// FailArtifactUploads makes the next count artifact uploads answer status
// (502, 503, …) with GitLab's JSON error body.
func (s *Server) FailArtifactUploads(status, count int) {
	s.Inject(`^POST /api/v4/jobs/\d+/artifacts$`, status, count, nil)
}

// RedirectArtifactUploads makes the next count artifact uploads answer
// 307 Temporary Redirect to location (another server, say).
func (s *Server) RedirectArtifactUploads(location string, count int) {
	s.Inject(`^POST /api/v4/jobs/\d+/artifacts$`, http.StatusTemporaryRedirect, count, http.Header{"Location": {location}})
}

// uploadArtifacts accepts the multipart upload directly (no Workhorse),
// with GitLab's checks: Grape's parameter validation first, then
// authenticate_job!, then the model's (type and format go together; one
// artifact per type, the same file again being a success).
func (s *Server) uploadArtifacts(w http.ResponseWriter, r *http.Request, id int64) {
	q := r.URL.Query()
	typ, format := q.Get("artifact_type"), q.Get("artifact_format")
	if !q.Has("artifact_type") {
		typ = "archive"
	}
	if !q.Has("artifact_format") {
		format = "zip"
	}
	// Rack reads the form before Grape validates the parameters, in
	// their declared order (file, …, artifact_type, artifact_format)
	f, hdr, ferr := r.FormFile("file")
	var invalid []string
	if ferr != nil {
		invalid = append(invalid, "file is missing")
	}
	if _, ok := artifactFormatOf[typ]; !ok {
		invalid = append(invalid, "artifact_type does not have a valid value")
	}
	if !slices.Contains(artifactFormats, format) {
		invalid = append(invalid, "artifact_format does not have a valid value")
	}
	if len(invalid) > 0 {
		writeJSON(w, http.StatusBadRequest, jsonObject("error", strings.Join(invalid, ", ")))
		return
	}
	data, _ := io.ReadAll(f)
	s.mu.Lock()
	_, ok := s.authJob(w, id, jobToken(r))
	s.mu.Unlock()
	if !ok {
		return
	}
	if artifactFormatOf[typ] != format {
		writeJSON(w, http.StatusBadRequest, `{"message":"Validation failed: Invalid file format with specified file type"}`)
		return
	}
	a := Artifact{Filename: hdr.Filename, Data: data, Format: format, ExpireIn: q.Get("expire_in")}
	if format == "gzip" {
		a.Members, a.MembersErr = GzipMembers(data)
	}
	if typ == "junit" {
		for i, m := range a.Members {
			if err := oneXMLDocument(m.Data); err != nil {
				a.ReportErrors = append(a.ReportErrors, fmt.Sprintf("JUnit XML parsing failed: member %d (%s): %v", i+1, m.Name, err))
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[id]
	if prev, ok := j.Artifacts[typ]; ok {
		if sha256.Sum256(prev.Data) == sha256.Sum256(data) {
			writeJSON(w, http.StatusCreated, `201`)
			return
		}
		writeJSON(w, http.StatusBadRequest, `{"message":"another artifact of the same type already exists"}`)
		return
	}
	if j.Artifacts == nil {
		j.Artifacts = map[string]Artifact{}
	}
	j.Artifacts[typ] = a
	s.notify()
	writeJSON(w, http.StatusCreated, `201`)
}

// downloadArtifacts serves a job's archive to a running job's token. With
// object storage (UseObjectStorage) and ?direct_download=true it answers
// 302 to a presigned URL there, as GitLab does; otherwise it sends the
// file itself.
func (s *Server) downloadArtifacts(w http.ResponseWriter, r *http.Request, id int64) {
	direct := false
	if v := r.URL.Query().Get("direct_download"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, `{"error":"direct_download is invalid"}`)
			return
		}
		direct = b
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	caller, ok := s.byToken[jobToken(r)]
	if !ok || (caller.Status != "running" && caller.Status != "canceling") {
		writeJSON(w, http.StatusUnauthorized, `{"message":"401 Unauthorized"}`)
		return
	}
	j, ok := s.jobs[id]
	if !ok || j.Artifacts["archive"].Data == nil {
		writeJSON(w, http.StatusNotFound, `{"message":"404 Not Found"}`)
		return
	}
	data := j.Artifacts["archive"].Data
	if direct && s.storage != nil {
		http.Redirect(w, r, s.storage.presign(id, data), http.StatusFound)
		return
	}
	w.Header().Set("Content-Type", "application/zip")
	w.Write(data)
}

// SetArtifacts gives a job an artifacts archive (as if an earlier job had
// uploaded it).
func (s *Server) SetArtifacts(id int64, zip []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[id]
	if j.Artifacts == nil {
		j.Artifacts = map[string]Artifact{}
	}
	j.Artifacts["archive"] = Artifact{Filename: "artifacts.zip", Data: zip, Format: "zip"}
}

// ObjectStorage is the fake object storage behind a fake GitLab: it serves
// the presigned URLs GitLab redirects direct downloads to, and records the
// headers of each request it gets.
type ObjectStorage struct {
	srv      *httptest.Server
	mu       sync.Mutex
	objects  map[string][]byte // signed path?query → data
	requests []http.Header
	fail     int // answer the next fail requests 500
}

// UseObjectStorage puts the server's artifacts on an object storage of
// their own (on host name "localhost", the server being on 127.0.0.1:
// another host), for direct downloads.
func (s *Server) UseObjectStorage() *ObjectStorage {
	st := &ObjectStorage{objects: map[string][]byte{}}
	st.srv = httptest.NewServer(http.HandlerFunc(st.serve))
	s.t.Cleanup(st.srv.Close)
	s.mu.Lock()
	s.storage = st
	s.mu.Unlock()
	return st
}

// URL is the storage's base URL, on a host name other than GitLab's.
func (o *ObjectStorage) URL() string { return strings.Replace(o.srv.URL, "127.0.0.1", "localhost", 1) }

// Requests returns the headers of every request the storage got.
func (o *ObjectStorage) Requests() []http.Header {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.requests)
}

// Fail makes the next n requests answer 500 with an S3-style XML error.
func (o *ObjectStorage) Fail(n int) {
	o.mu.Lock()
	o.fail = n
	o.mu.Unlock()
}

func (o *ObjectStorage) presign(id int64, data []byte) string {
	var b [8]byte
	rand.Read(b[:])
	key := fmt.Sprintf("/artifacts/%d/artifacts.zip?X-Amz-Expires=300&X-Amz-Signature=%s", id, hex.EncodeToString(b[:]))
	o.mu.Lock()
	o.objects[key] = data
	o.mu.Unlock()
	return o.URL() + key
}

func (o *ObjectStorage) serve(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	o.requests = append(o.requests, r.Header.Clone())
	data, ok := o.objects[r.URL.RequestURI()]
	fail := o.fail > 0
	if fail {
		o.fail--
	}
	o.mu.Unlock()
	w.Header().Set("Content-Type", "application/xml")
	switch {
	case fail:
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>We encountered an internal error. Please try again.</Message></Error>`)
	case !ok || r.Method != http.MethodGet:
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided.</Message></Error>`)
	default:
		w.Header().Set("Content-Type", "application/zip")
		w.Write(data)
	}
}

// oneXMLDocument checks that b is one well-formed XML document: one root
// element, nothing but space, comments and processing instructions
// around it.
func oneXMLDocument(b []byte) error {
	dec := xml.NewDecoder(bytes.NewReader(b))
	roots, depth := 0, 0
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if depth == 0 {
				roots++
			}
			depth++
		case xml.EndElement:
			depth--
		case xml.CharData:
			if depth == 0 && len(bytes.TrimSpace(t)) > 0 {
				return errors.New("text outside the root element")
			}
		}
	}
	switch {
	case roots == 0:
		return errors.New("no root element")
	case roots > 1:
		return fmt.Errorf("%d root elements: more than one document", roots)
	}
	return nil
}

func jsonObject(k, v string) string {
	b, _ := json.Marshal(map[string]string{k: v})
	return string(b)
}

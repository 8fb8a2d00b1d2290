// Package coordinatortest is an in-process GitLab double for the runner API,
// faithful to ../shared/research/gitlab-runner-api.md: job states, 403 with
// Job-Status when a job is not running, 416 with Range on trace offsets,
// 401 on GET /job after the end, last_update caching, and injectable
// failures (409, 429 with Retry-After, 502, …). It closes itself at the end
// of the test.
package coordinatortest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"gitlab.com/paas-runner/paas-runner/job"
)

// Job is a job as the fake GitLab knows it.
type Job struct {
	ID          int64
	Token       string
	RunnerToken string // the runner it is queued for ("" = any)
	Status      string // pending, running, canceling, canceled, success, failed
	// FailureReason is what GitLab stored: a reason outside its enum
	// (FailureReasons) is stored as unknown_failure; the reason as sent
	// is in Updates.
	FailureReason string
	ExitCode      int
	Trace         []byte
	Acquisitions  int // how many times it was handed out (must stay ≤ 1)
	Payload       map[string]any
	Updates       []map[string]any
	// Artifacts uploaded, by artifact_type: the file and the query.
	Artifacts map[string]Artifact
	// AcquiredAt is when the job was handed out (just before the 201 is
	// written), for latency measurements.
	AcquiredAt time.Time
	// FinishedAt is when the job reached a final state.
	FinishedAt time.Time
	// WaitingAck: handed out to a runner that advertised
	// two_phase_job_commit, still pending until it confirms with
	// PUT state=running (see twophase.go).
	WaitingAck bool
	// AckDeadline is when an unconfirmed job is given up on (pushed back
	// by each PUT state=pending keep-alive).
	AckDeadline time.Time
	// StatusChecks counts the GET /api/v4/job answered for this job.
	StatusChecks int
	// RetryOf is the job this one is an automatic retry of (0: none), and
	// RetriedAs the retry created when this one was dropped.
	RetryOf, RetriedAs int64
	// FinalWaits are when final updates were answered 202 (see
	// Server.FinalUpdatePending).
	FinalWaits []time.Time
}

// Runner is a registered runner.
type Runner struct {
	Token            string
	ID               int64
	Paused           bool
	CancelGracefully bool
	TwoPhase         bool // advertised two_phase_job_commit
	SystemIDs        map[string]bool
	Requests         int
}

type injection struct {
	status  int
	header  http.Header
	body    string
	remain  int
	pattern *regexp.Regexp
}

// TB is what the server needs of a test: testing.TB fits, and so does a
// benchmark program's own implementation.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// Server is the fake GitLab.
type Server struct {
	*httptest.Server
	t TB

	mu         sync.Mutex
	runners    map[string]*Runner
	jobs       map[int64]*Job
	byToken    map[string]*Job
	queue      []int64
	nextID     int64
	lastUpdate int
	holding    int // job requests being held (long poll)
	// queueTick is closed when lastUpdate changes: what lets a held job
	// request go, as Workhorse watches the runner's queue key only
	queueTick   chan struct{}
	injections  []*injection
	counts      map[string]int // "METHOD route" → requests
	changed     chan struct{}
	TraceUpdate int // X-GitLab-Trace-Update-Interval value (seconds)
	regTokens   map[string]bool
	registered  map[string]map[string]any
	// TraceSizeOnly: keep only the length of job logs (for memory tests
	// with huge logs); Trace stays empty.
	TraceSizeOnly bool
	traceLen      map[int64]int
	// RegistrationDisabled: POST /runners answers 410 Gone.
	RegistrationDisabled bool
	// TraceLimit: a PATCH that would make a job's log longer than this
	// drops the job (failed, trace_size_exceeded) and is answered 403
	// without Job-Status, as GitLab does over its trace size limit.
	TraceLimit int
	// FinalUpdatePending: this many final updates (PUT success/failed with
	// an output checksum) of each job are answered 202 with
	// X-GitLab-Trace-Update-Interval 1, 2, 4… s, as GitLab does while the
	// log's live chunks are still being persisted; the next is applied.
	FinalUpdatePending int
	loseTrace          int
	// FailureReasons is this GitLab's failure_reason enum, listed in each
	// job's features.failure_reasons (default job.FailureReasons; an
	// older GitLab knows fewer).
	FailureReasons []string
	// StrictFailureReasons: a PUT state=failed whose failure_reason is not
	// in FailureReasons is answered 400 instead of being stored as
	// unknown_failure like GitLab does: for tests that check the runner
	// only ever sends reasons this GitLab knows.
	StrictFailureReasons bool
	// HoldRequests makes POST /jobs/request wait until the job queue
	// changes or this long passes when last_update is current (long poll).
	LongPoll time.Duration
	// AckTimeout is how long a job handed out with two-phase commit waits
	// for the runner's PUT state=pending or running before GitLab drops it
	// (runner_provisioning_timeout) and queues a retry: Rails'
	// RUNNER_ACK_QUEUE_EXPIRY_TIME, 2 minutes (default).
	AckTimeout time.Duration
	// storage is the object storage of artifacts, when UseObjectStorage
	// made one (artifacts.go).
	storage *ObjectStorage
	// pipelines: the projects pipelines API (pipelines.go).
	pipelines *pipelineState
	observer  atomic.Pointer[Observer] // see Observe
}

// New starts a fake GitLab for the duration of the test.
func New(t TB) *Server {
	return newServer(t, (*httptest.Server).Start)
}

// newServer makes the fake GitLab and starts it with start (plain HTTP,
// or TLS: tls.go).
func newServer(t TB, start func(*httptest.Server)) *Server {
	s := &Server{t: t, runners: map[string]*Runner{}, jobs: map[int64]*Job{}, byToken: map[string]*Job{},
		counts: map[string]int{}, changed: make(chan struct{}), queueTick: make(chan struct{}), nextID: idBase(), TraceUpdate: 3, AckTimeout: 2 * time.Minute,
		FailureReasons: slices.Clone(job.FailureReasons)}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	start(s.Server)
	t.Cleanup(s.Close)
	return s
}

// AddRunner registers a runner authentication token.
func (s *Server) AddRunner(token string) *Runner {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := &Runner{Token: token, ID: int64(len(s.runners) + 1), SystemIDs: map[string]bool{}}
	s.runners[token] = r
	return r
}

// SetPaused pauses or resumes a runner.
func (s *Server) SetPaused(token string, paused bool) {
	s.mu.Lock()
	s.runners[token].Paused = paused
	s.notify()
	s.mu.Unlock()
}

// RemoveRunner deletes a runner: its requests get 403 from now on.
func (s *Server) RemoveRunner(token string) {
	s.mu.Lock()
	delete(s.runners, token)
	s.notify()
	s.mu.Unlock()
}

// Enqueue queues a job for runnerToken ("" = any runner) and returns it.
// extra fields are merged into the payload.
func (s *Server) Enqueue(runnerToken string, extra map[string]any) *Job {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.enqueueLocked(runnerToken, extra)
}

func (s *Server) enqueueLocked(runnerToken string, extra map[string]any) *Job {
	s.nextID++
	id := s.nextID
	tok := fmt.Sprintf("glcbt-job%d-%s", id, strconv.FormatInt(time.Now().UnixNano()%1e9, 36))
	if t, ok := extra["token"].(string); ok && t != "" {
		tok = t // a test that needs the token beforehand (e.g. for a git server)
	}
	payload := map[string]any{
		"id": id, "token": tok, "allow_git_fetch": true,
		"job_info": map[string]any{"id": id, "name": "test", "stage": "test", "pipeline_id": id, "project_id": 1, "project_name": "p", "project_full_path": "g/p",
			"time_in_queue_seconds": 0.25, "project_jobs_running_on_instance_runners_count": "+Inf"},
		"git_info":    map[string]any{"repo_url": s.URL + "/g/p.git", "ref": "main", "sha": strings.Repeat("a", 40), "before_sha": strings.Repeat("0", 40), "ref_type": "branch", "refspecs": []string{}, "depth": 20, "repo_object_format": "sha1", "protected": false},
		"runner_info": map[string]any{"uuid": nil, "timeout": 3600, "runner_session_url": nil},
		"variables": []map[string]any{
			{"key": "CI_JOB_ID", "value": strconv.FormatInt(id, 10), "public": true, "masked": false},
			{"key": "CI_JOB_TOKEN", "value": tok, "public": false, "masked": true},
			{"key": "CI_SERVER_URL", "value": s.URL, "public": true, "masked": false},
		},
		"steps":        []map[string]any{{"name": "script", "script": []string{"true"}, "timeout": 3600, "when": "on_success", "allow_failure": false}},
		"image":        map[string]any{"name": "busybox", "entrypoint": nil, "ports": []any{}, "executor_opts": map[string]any{}, "pull_policy": nil},
		"hooks":        []any{},
		"services":     []any{},
		"artifacts":    []any{},
		"cache":        []any{},
		"credentials":  []any{},
		"dependencies": []any{},
		"features":     map[string]any{"trace_sections": true, "failure_reasons": slices.Clone(s.FailureReasons)},
		// a key of a newer GitLab: runners must ignore it
		"policy_options": map[string]any{"execution_policy_job": false},
	}
	for k, v := range extra {
		payload[k] = v
	}
	j := &Job{ID: id, Token: tok, RunnerToken: runnerToken, Status: "pending", Payload: payload}
	s.jobs[id] = j
	s.byToken[tok] = j
	s.queue = append(s.queue, id)
	s.lastUpdate++
	close(s.queueTick)
	s.queueTick = make(chan struct{})
	s.notify()
	return j
}

// AddRunning creates a job already running for runnerToken, as if it had
// been acquired before (for restart scenarios and benchmarks).
func (s *Server) AddRunning(runnerToken string) *Job {
	j := s.Enqueue(runnerToken, nil)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dequeue(j.ID)
	j.Status = "running"
	j.Acquisitions = 1
	return j
}

// Job returns a snapshot of job id.
func (s *Server) Job(id int64) Job {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := *s.jobs[id]
	j.Trace = append([]byte(nil), j.Trace...)
	return j
}

// Jobs returns snapshots of every job.
func (s *Server) Jobs() []Job {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Job, 0, len(s.jobs))
	for _, j := range s.jobs {
		c := *j
		c.Trace = append([]byte(nil), j.Trace...)
		out = append(out, c)
	}
	return out
}

// Finish ends a running job as its inner runner would (success or failed).
func (s *Server) Finish(id int64, status string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[id]
	if j.Status == "running" || j.Status == "canceling" {
		j.Status = status
		if j.Status == "failed" && j.FailureReason == "" {
			j.FailureReason = "script_failure"
		}
	}
	s.notify()
}

// AppendTrace writes to a job's log as the inner runner would.
func (s *Server) AppendTrace(id int64, data string) {
	s.mu.Lock()
	s.jobs[id].Trace = append(s.jobs[id].Trace, data...)
	s.notify()
	s.mu.Unlock()
}

// Cancel cancels a job like a user pressing "Cancel": a running job moves to
// canceling when its runner advertised cancel_gracefully, else to canceled;
// a pending one to canceled.
func (s *Server) Cancel(id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[id]
	switch j.Status {
	case "pending":
		j.Status = "canceled"
		j.WaitingAck = false
		s.dequeue(id)
	case "running":
		j.Status = "canceled"
		if r := s.runnerOf(j); r != nil && r.CancelGracefully {
			j.Status = "canceling"
		}
	case "canceling":
		j.Status = "canceled"
	}
	s.notify()
}

// ForceCancel moves a job straight to canceled.
func (s *Server) ForceCancel(id int64) {
	s.mu.Lock()
	j := s.jobs[id]
	if j.Status == "pending" {
		s.dequeue(id)
	}
	if !isFinal(j.Status) {
		j.Status = "canceled"
		j.WaitingAck = false
	}
	s.notify()
	s.mu.Unlock()
}

func (s *Server) dequeue(id int64) {
	for i, q := range s.queue {
		if q == id {
			s.queue = append(s.queue[:i], s.queue[i+1:]...)
			return
		}
	}
}

func (s *Server) runnerOf(j *Job) *Runner {
	for _, r := range s.runners {
		if r.Token == j.RunnerToken || (j.RunnerToken == "" && r.Requests > 0) {
			return r
		}
	}
	return nil
}

// Inject makes the next count requests whose "METHOD path" matches pattern
// (a regexp over e.g. "POST /api/v4/jobs/request") answer status with
// header and a JSON {"message": …} body. count < 0 means forever.
func (s *Server) Inject(pattern string, status int, count int, header http.Header) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.injections = append(s.injections, &injection{pattern: regexp.MustCompile(pattern), status: status, remain: count, header: header,
		body: fmt.Sprintf(`{"message":"%d %s"}`, status, http.StatusText(status))})
}

// ClearInjections removes every pending injection.
func (s *Server) ClearInjections() {
	s.mu.Lock()
	s.injections = nil
	s.mu.Unlock()
}

// Count returns how many requests matched route (e.g. "GET /api/v4/job").
func (s *Server) Count(route string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[route]
}

// WaitFor blocks until cond (called with the server locked) holds, or fails
// the test after timeout. It wakes on every change, never polls.
func (s *Server) WaitFor(timeout time.Duration, what string, cond func(s *Server) bool) {
	s.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		ok := cond(s)
		ch := s.changed
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			s.t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
	}
}

// Locked helpers for WaitFor conditions.

// StatusOf is a job's status (call inside WaitFor).
func (s *Server) StatusOf(id int64) string { return s.jobs[id].Status }

// TraceOf is a job's log (call inside WaitFor).
func (s *Server) TraceOf(id int64) string { return string(s.jobs[id].Trace) }

// Holding is how many job requests are being held (long poll; call
// inside WaitFor).
func (s *Server) Holding() int { return s.holding }

// Held is Holding for use outside WaitFor.
func (s *Server) Held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holding
}

// CountOf is Count for use inside WaitFor.
func (s *Server) CountOf(route string) int { return s.counts[route] }

// Each calls fn for every job (inside WaitFor).
func (s *Server) Each(fn func(j *Job)) {
	for _, j := range s.jobs {
		fn(j)
	}
}

func (s *Server) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func isFinal(st string) bool { return st == "success" || st == "failed" || st == "canceled" }

var (
	reJobPUT       = regexp.MustCompile(`^/api/v4/jobs/(\d+)$`)
	reJobTrace     = regexp.MustCompile(`^/api/v4/jobs/(\d+)/trace$`)
	reJobArtifacts = regexp.MustCompile(`^/api/v4/jobs/(\d+)/artifacts$`)
)

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.observeRequest(r)
	route := r.Method + " " + r.URL.Path
	s.mu.Lock()
	s.counts[route]++
	for i, inj := range s.injections {
		if inj.remain != 0 && inj.pattern.MatchString(route) {
			if inj.remain > 0 {
				inj.remain--
			}
			if inj.remain == 0 {
				s.injections = append(s.injections[:i], s.injections[i+1:]...)
			}
			s.notify()
			s.mu.Unlock()
			// read the body first, as GitLab does: a client still
			// sending it gets the answer, not a reset connection
			io.Copy(io.Discard, io.LimitReader(r.Body, 64<<20))
			for k, vs := range inj.header {
				w.Header()[k] = vs
			}
			writeJSON(w, inj.status, inj.body)
			return
		}
	}
	s.notify()
	s.mu.Unlock()

	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/api/v4/jobs/request":
		s.requestJob(w, r)
	case r.Method == http.MethodGet && r.URL.Path == "/api/v4/job":
		s.getJob(w, r)
	case r.Method == http.MethodPut && reJobPUT.MatchString(r.URL.Path):
		id, _ := strconv.ParseInt(reJobPUT.FindStringSubmatch(r.URL.Path)[1], 10, 64)
		s.updateJob(w, r, id)
	case r.Method == http.MethodPatch && reJobTrace.MatchString(r.URL.Path):
		id, _ := strconv.ParseInt(reJobTrace.FindStringSubmatch(r.URL.Path)[1], 10, 64)
		s.patchTrace(w, r, id)
	case reJobArtifacts.MatchString(r.URL.Path) && (r.Method == http.MethodPost || r.Method == http.MethodGet):
		id, _ := strconv.ParseInt(reJobArtifacts.FindStringSubmatch(r.URL.Path)[1], 10, 64)
		if r.Method == http.MethodPost {
			s.uploadArtifacts(w, r, id)
		} else {
			s.downloadArtifacts(w, r, id)
		}
	case r.Method == http.MethodPost && r.URL.Path == "/api/v4/runners/verify":
		s.verifyRunner(w, r)
	case r.Method == http.MethodPost && r.URL.Path == "/api/v4/runners":
		s.registerRunner(w, r)
	case r.Method == http.MethodDelete && r.URL.Path == "/api/v4/runners":
		s.deleteRunner(w, r, false)
	case r.Method == http.MethodDelete && r.URL.Path == "/api/v4/runners/managers":
		s.deleteRunner(w, r, true)
	case strings.HasPrefix(r.URL.Path, "/api/v4/projects/"):
		s.servePipelines(w, r)
	default:
		writeJSON(w, http.StatusNotFound, `{"message":"404 Not Found"}`)
	}
}

// AddRegistrationToken accepts a legacy registration token; RegistrationDisabled
// makes POST /runners answer 410 like GitLab 17+ by default.
func (s *Server) AddRegistrationToken(tok string) {
	s.mu.Lock()
	if s.regTokens == nil {
		s.regTokens = map[string]bool{}
	}
	s.regTokens[tok] = true
	s.mu.Unlock()
}

// Registered returns what a legacy registration sent, by new runner token.
func (s *Server) Registered(runnerToken string) map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.registered[runnerToken]
}

// decodeBody reads a JSON request body as Grape does: only when its
// Content-Type says JSON (otherwise the parameters are empty, and the
// required token is missing).
func decodeBody(r *http.Request) map[string]any {
	var m map[string]any
	if jsonContent(r) {
		json.NewDecoder(r.Body).Decode(&m)
	}
	return m
}

func jsonContent(r *http.Request) bool {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return err == nil && mt == "application/json"
}

func (s *Server) verifyRunner(w http.ResponseWriter, r *http.Request) {
	req := decodeBody(r)
	tok, _ := req["token"].(string)
	if tok == "" {
		writeJSON(w, http.StatusBadRequest, `{"error":"token is missing"}`)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rn, ok := s.runners[tok]
	if !ok {
		writeJSON(w, http.StatusForbidden, `{"message":"403 Forbidden"}`)
		return
	}
	if sid, _ := req["system_id"].(string); sid != "" {
		rn.SystemIDs[sid] = true
	}
	body, _ := json.Marshal(map[string]any{"id": rn.ID, "token": rn.Token, "token_expires_at": nil})
	writeJSON(w, http.StatusOK, string(body))
}

func (s *Server) registerRunner(w http.ResponseWriter, r *http.Request) {
	req := decodeBody(r)
	tok, _ := req["token"].(string)
	if tok == "" {
		writeJSON(w, http.StatusBadRequest, `{"error":"token is missing"}`)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.RegistrationDisabled {
		writeJSON(w, http.StatusGone, `{"message":"410 Gone"}`)
		return
	}
	if !s.regTokens[tok] {
		writeJSON(w, http.StatusForbidden, `{"message":"403 Forbidden"}`)
		return
	}
	id := int64(len(s.runners) + 1)
	newTok := fmt.Sprintf("glrt-reg%d-%s", id, strconv.FormatInt(time.Now().UnixNano()%1e12, 36))
	s.runners[newTok] = &Runner{Token: newTok, ID: id, SystemIDs: map[string]bool{}}
	if s.registered == nil {
		s.registered = map[string]map[string]any{}
	}
	s.registered[newTok] = req
	body, _ := json.Marshal(map[string]any{"id": id, "token": newTok, "token_expires_at": nil})
	writeJSON(w, http.StatusCreated, string(body))
}

func (s *Server) deleteRunner(w http.ResponseWriter, r *http.Request, manager bool) {
	req := decodeBody(r)
	tok, _ := req["token"].(string)
	if tok == "" {
		writeJSON(w, http.StatusBadRequest, `{"error":"token is missing"}`)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rn, ok := s.runners[tok]
	if !ok {
		writeJSON(w, http.StatusForbidden, `{"message":"403 Forbidden"}`)
		return
	}
	if manager {
		sid, _ := req["system_id"].(string)
		if sid == "" {
			writeJSON(w, http.StatusBadRequest, `{"error":"system_id is missing"}`)
			return
		}
		if !rn.SystemIDs[sid] {
			writeJSON(w, http.StatusNotFound, `{"message":"404 Runner manager not found"}`)
			return
		}
		delete(rn.SystemIDs, sid)
	} else {
		delete(s.runners, tok)
	}
	s.notify()
	w.WriteHeader(http.StatusNoContent)
}

func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	io.WriteString(w, body)
}

func (s *Server) requestJob(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Token      string `json:"token"`
		SystemID   string `json:"system_id"`
		LastUpdate string `json:"last_update"`
		Info       struct {
			Features map[string]bool `json:"features"`
		} `json:"info"`
	}
	if !jsonContent(r) || json.NewDecoder(r.Body).Decode(&req) != nil || req.Token == "" {
		writeJSON(w, http.StatusBadRequest, `{"error":"token is missing"}`)
		return
	}
	s.mu.Lock()
	rn, ok := s.runners[req.Token]
	if !ok {
		s.counts["403 "+req.Token]++
		s.mu.Unlock()
		writeJSON(w, http.StatusForbidden, `{"message":"403 Forbidden"}`)
		return
	}
	rn.Requests++
	rn.CancelGracefully = req.Info.Features["cancel_gracefully"]
	rn.TwoPhase = req.Info.Features["two_phase_job_commit"]
	if req.SystemID != "" {
		rn.SystemIDs[req.SystemID] = true
	}
	lu := strconv.Itoa(s.lastUpdate)
	if rn.Paused || (req.LastUpdate == lu && s.LongPoll == 0) {
		s.mu.Unlock()
		w.Header().Set("X-GitLab-Last-Update", lu)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if req.LastUpdate == lu {
		s.holding++
		s.notify()
		ch := s.queueTick
		s.mu.Unlock()
		select {
		case <-ch:
		case <-time.After(s.LongPoll):
		case <-r.Context().Done():
		}
		s.mu.Lock()
		s.holding--
		s.mu.Unlock()
		w.Header().Set("Gitlab-Ci-Builds-Polling", "yes") // Workhorse's, on what it intercepts
		w.WriteHeader(http.StatusNoContent)
		return
	}
	for i, id := range s.queue {
		j := s.jobs[id]
		if j.RunnerToken != "" && j.RunnerToken != req.Token {
			continue
		}
		s.queue = append(s.queue[:i], s.queue[i+1:]...)
		if req.Info.Features["two_phase_job_commit"] {
			s.awaitAckLocked(j)
		} else {
			j.Status = "running"
		}
		j.Acquisitions++
		j.AcquiredAt = time.Now()
		if j.RunnerToken == "" {
			j.RunnerToken = req.Token
		}
		body, _ := json.Marshal(j.Payload)
		s.notify()
		s.mu.Unlock()
		writeJSON(w, http.StatusCreated, string(body))
		return
	}
	s.mu.Unlock()
	w.Header().Set("X-GitLab-Last-Update", lu)
	w.WriteHeader(http.StatusNoContent)
}

func jobToken(r *http.Request) string {
	if t := r.Header.Get("Job-Token"); t != "" {
		return t
	}
	if t := r.URL.Query().Get("job_token"); t != "" {
		return t
	}
	return r.URL.Query().Get("token")
}

func (s *Server) getJob(w http.ResponseWriter, r *http.Request) {
	tok := jobToken(r)
	s.mu.Lock()
	j, ok := s.byToken[tok]
	if !ok || (j.Status != "running" && j.Status != "canceling") {
		s.mu.Unlock()
		writeJSON(w, http.StatusUnauthorized, `{"message":"401 Unauthorized"}`)
		return
	}
	j.StatusChecks++
	body, _ := json.Marshal(map[string]any{"id": j.ID, "status": j.Status, "name": "test", "stage": "test", "ref": "main",
		"pipeline": map[string]any{"id": 1, "status": "running"}, "web_url": s.URL + "/g/p/-/jobs/" + strconv.FormatInt(j.ID, 10)})
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, string(body))
}

// authJob applies authenticate_job!: the job must exist, the token match,
// and the job be running or canceling (Ci::AuthJobFinder's
// EXECUTING_STATUSES); otherwise 403 with Job-Status. Only PUT /jobs/:id
// also takes a job still waiting for its runner's acknowledgement
// (two-phase commit): its trace and artifacts wait for PUT state=running.
func (s *Server) authJob(w http.ResponseWriter, id int64, tok string) (*Job, bool) {
	return s.authJobAck(w, id, tok, false)
}

func (s *Server) authJobAck(w http.ResponseWriter, id int64, tok string, ackOK bool) (*Job, bool) {
	j, ok := s.jobs[id]
	if !ok || j.Token != tok || tok == "" {
		writeJSON(w, http.StatusForbidden, `{"message":"403 Forbidden"}`)
		return nil, false
	}
	if j.Status != "running" && j.Status != "canceling" && !(ackOK && j.WaitingAck) {
		w.Header().Set("Job-Status", j.Status)
		writeJSON(w, http.StatusForbidden, `{"message":"403 Forbidden - Job is not processing on runner"}`)
		return nil, false
	}
	return j, true
}

func (s *Server) updateJob(w http.ResponseWriter, r *http.Request, id int64) {
	var req map[string]any
	if !jsonContent(r) {
		req = map[string]any{} // Grape reads no JSON params: the token is missing
	} else if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, `{"error":"invalid json"}`)
		return
	}
	tok, _ := req["token"].(string)
	if tok == "" {
		// Grape's requires :token: the Job-Token header alone does not do
		writeJSON(w, http.StatusBadRequest, `{"error":"token is missing"}`)
		return
	}
	if msg := invalidUpdateParams(req); msg != "" {
		writeJSON(w, http.StatusBadRequest, jsonObject("error", msg))
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.authJobAck(w, id, tok, true)
	if !ok {
		return
	}
	if reason, _ := req["failure_reason"].(string); req["state"] == "failed" && reason != "" && !slices.Contains(s.FailureReasons, reason) && s.StrictFailureReasons {
		writeJSON(w, http.StatusBadRequest, jsonObject("error", "failure_reason "+strconv.Quote(reason)+" is not in this GitLab's enum"))
		return
	}
	j.Updates = append(j.Updates, req)
	state, _ := req["state"].(string)
	if j.WaitingAck {
		if status, done := s.ackWorkflowLocked(j, state); done {
			w.Header().Set("Job-Status", j.Status)
			writeJSON(w, status, strconv.Itoa(status))
			return
		}
	}
	if s.holdFinalUpdate(w, j, state, req) {
		return
	}
	switch state {
	case "running":
	case "success":
		j.Status = "success"
		j.FinishedAt = time.Now()
	case "failed":
		reason, _ := req["failure_reason"].(string)
		if !slices.Contains(s.FailureReasons, reason) {
			reason = "unknown_failure" // as drop_with_exit_code! does
		}
		j.FailureReason = reason
		if ec, ok := req["exit_code"].(float64); ok {
			j.ExitCode = int(ec)
		}
		if j.Status == "canceling" {
			j.Status = "canceled"
		} else {
			j.Status = "failed"
		}
		j.FinishedAt = time.Now()
	default:
		writeJSON(w, http.StatusBadRequest, `{"error":"state does not have a valid value"}`)
		return
	}
	s.notify()
	w.Header().Set("Job-Status", j.Status)
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, "200")
}

// invalidUpdateParams applies Grape's coercion of PUT /jobs/:id's declared
// params: exit_code and output.bytesize are integers, output a hash.
func invalidUpdateParams(req map[string]any) string {
	isInt := func(v any) bool {
		switch n := v.(type) {
		case float64:
			return n == math.Trunc(n)
		case string:
			_, err := strconv.Atoi(n)
			return err == nil
		}
		return false
	}
	if v, ok := req["exit_code"]; ok && v != nil && !isInt(v) {
		return "exit_code is invalid"
	}
	if v, ok := req["output"]; ok && v != nil {
		out, isMap := v.(map[string]any)
		if !isMap {
			return "output is invalid"
		}
		if b, ok := out["bytesize"]; ok && b != nil && !isInt(b) {
			return "output[bytesize] is invalid"
		}
	}
	return ""
}

var contentRangeRe = regexp.MustCompile(`^(\d+)-(\d+)(/\d+)?$`)

func (s *Server) patchTrace(w http.ResponseWriter, r *http.Request, id int64) {
	body, _ := io.ReadAll(r.Body)
	cr := r.Header.Get("Content-Range")
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.authJob(w, id, jobToken(r))
	if !ok {
		return
	}
	if cr == "" {
		writeJSON(w, http.StatusBadRequest, `{"message":"400 Missing header Content-Range"}`)
		return
	}
	m := contentRangeRe.FindStringSubmatch(cr)
	if m == nil {
		writeJSON(w, http.StatusBadRequest, `{"message":"400 Bad Request"}`)
		return
	}
	start, _ := strconv.Atoi(m[1])
	if end, _ := strconv.Atoi(m[2]); len(body) > 0 && end != start+len(body)-1 {
		// GitLab itself reads only the start; this double also checks the
		// end is the last byte's offset, as gitlab-runner sends it
		writeJSON(w, http.StatusBadRequest, jsonObject("message", fmt.Sprintf("400 Content-Range %q does not cover the %d bytes sent", cr, len(body))))
		return
	}
	cur := len(j.Trace)
	if s.TraceSizeOnly {
		if s.traceLen == nil {
			s.traceLen = map[int64]int{}
		}
		cur = s.traceLen[id]
	}
	if start != cur {
		w.Header().Set("Range", fmt.Sprintf("0-%d", cur))
		writeJSON(w, http.StatusRequestedRangeNotSatisfiable, `{"message":"416 Range Not Satisfiable"}`)
		return
	}
	if s.TraceLimit > 0 && cur+len(body) > s.TraceLimit {
		j.Status, j.FailureReason, j.FinishedAt = "failed", "trace_size_exceeded", time.Now()
		s.notify()
		writeJSON(w, http.StatusForbidden, `{"message":"403 Forbidden"}`)
		return
	}
	if s.TraceSizeOnly {
		s.traceLen[id] += len(body)
	} else {
		j.Trace = append(j.Trace, body...)
	}
	s.observeTrace(id, cur, body)
	s.notify()
	if s.loseTrace > 0 {
		s.loseTrace--
		writeJSON(w, http.StatusBadGateway, `{"message":"502 Bad Gateway"}`)
		return
	}
	w.Header().Set("Job-Status", j.Status)
	w.Header().Set("Range", fmt.Sprintf("0-%d", cur+len(body)))
	w.Header().Set("X-GitLab-Trace-Update-Interval", strconv.Itoa(s.TraceUpdate))
	w.WriteHeader(http.StatusAccepted)
}

// LoseTraceAnswers makes the next n trace PATCHes append to the log but
// answer 502, as when a proxy loses GitLab's 202: the runner's retry then
// gets a 416.
func (s *Server) LoseTraceAnswers(n int) {
	s.mu.Lock()
	s.loseTrace = n
	s.mu.Unlock()
}

// TruncateTrace cuts a job's log to n bytes, as if GitLab had lost the
// end of it: the next PATCH gets a 416 with the shorter length.
func (s *Server) TruncateTrace(id int64, n int) {
	s.mu.Lock()
	if j := s.jobs[id]; len(j.Trace) > n {
		j.Trace = j.Trace[:n]
	}
	s.notify()
	s.mu.Unlock()
}

// holdFinalUpdate answers 202 to a final update while the job has pending
// waits (FinalUpdatePending), like update_build_state_service.rb while
// live trace chunks are not persisted yet. It reports whether it answered.
func (s *Server) holdFinalUpdate(w http.ResponseWriter, j *Job, state string, req map[string]any) bool {
	out, _ := req["output"].(map[string]any)
	if state != "success" && state != "failed" || out["checksum"] == nil || len(j.FinalWaits) >= s.FinalUpdatePending {
		return false
	}
	j.FinalWaits = append(j.FinalWaits, time.Now())
	s.notify()
	w.Header().Set("Job-Status", j.Status)
	w.Header().Set("X-GitLab-Trace-Update-Interval", strconv.Itoa(min(1<<(len(j.FinalWaits)-1), 64)))
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusAccepted)
	io.WriteString(w, "202")
	return true
}

// TraceContains reports whether a job's log contains sub (inside WaitFor).
func (s *Server) TraceContains(id int64, sub string) bool {
	return bytes.Contains(s.jobs[id].Trace, []byte(sub))
}

// idBase starts job ids differently in each test process, so that test
// packages running at once on one Docker engine never share a job id (their
// resources are labelled with it).
func idBase() int64 { return 1000 * int64(1+os.Getpid()%100000) }

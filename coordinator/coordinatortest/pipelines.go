package coordinatortest

// The project pipelines API (lib/api/ci/pipelines.rb), as far as pipeline
// guards need it: list a project's pipelines (filters ref, status, scope,
// sha; order_by, sort; offset pagination with GitLab's X-* headers and Link),
// a pipeline's jobs (scope[] filter, paginated) and cancel. Authentication
// follows lib/api/api_guard.rb and auth_finders.rb: PRIVATE-TOKEN header or
// private_token parameter, or "Authorization: Bearer"; an unknown token is
// 401; no usable token on the (private) project is 404 Project Not Found; a
// token without the needed scope is 403 insufficient_scope. CI_JOB_TOKEN
// (JOB-TOKEN header or job_token parameter) is accepted only where GitLab
// allows it (route_setting job_token_allowed): the pipeline jobs list, not
// the pipelines list nor cancel.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Pipeline is a pipeline as the fake GitLab knows it.
type Pipeline struct {
	ID        int64
	ProjectID int64
	Ref       string
	SHA       string
	Status    string
	Source    string
	Tag       bool
	CreatedAt time.Time
	UpdatedAt time.Time
	Jobs      []PipelineJob
}

// PipelineJob is one job of a pipeline (for GET …/pipelines/:id/jobs).
type PipelineJob struct {
	ID     int64
	Name   string
	Stage  string
	Status string
}

// pipelineStatuses is Ci::HasStatus::AVAILABLE_STATUSES: what the status
// parameter accepts.
var pipelineStatuses = []string{"created", "waiting_for_resource", "preparing", "waiting_for_callback",
	"pending", "running", "success", "failed", "canceling", "canceled", "skipped", "manual", "scheduled"}

// cancelable are the statuses CancelPipelineService moves to canceled.
var cancelable = []string{"created", "waiting_for_resource", "preparing", "waiting_for_callback", "pending",
	"running", "scheduled", "manual"}

type pipelineState struct {
	pipelines map[int64]*Pipeline
	projects  map[string]int64 // full path → id
	apiTokens map[string][]string
	nextJobID int64
}

func (s *Server) pipes() *pipelineState {
	if s.pipelines == nil {
		s.pipelines = &pipelineState{pipelines: map[int64]*Pipeline{}, projects: map[string]int64{},
			apiTokens: map[string][]string{}, nextJobID: idBase() * 10}
	}
	return s.pipelines
}

// AddAPIToken accepts token (a personal, project or group access token) on
// the projects API with the given scopes ("api", "read_api", …).
func (s *Server) AddAPIToken(token string, scopes ...string) {
	s.mu.Lock()
	s.pipes().apiTokens[token] = scopes
	s.mu.Unlock()
}

// AddProject names project id by its full path, so that the API also finds
// it by its URL-encoded path (e.g. g%2Fp).
func (s *Server) AddProject(id int64, fullPath string) {
	s.mu.Lock()
	s.pipes().projects[fullPath] = id
	s.mu.Unlock()
}

// AddPipeline creates a pipeline of project for ref in status with jobs
// (their IDs are assigned) and returns its id. IDs grow like GitLab's: a
// newer pipeline has a larger id.
func (s *Server) AddPipeline(project int64, ref, status string, jobs ...PipelineJob) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	ps := s.pipes()
	s.nextID++
	now := time.Now().UTC()
	p := &Pipeline{ID: s.nextID, ProjectID: project, Ref: ref, Status: status, Source: "push",
		SHA: fmt.Sprintf("%040x", s.nextID), CreatedAt: now, UpdatedAt: now}
	for _, j := range jobs {
		ps.nextJobID++
		j.ID = ps.nextJobID
		p.Jobs = append(p.Jobs, j)
	}
	ps.pipelines[p.ID] = p
	s.notify()
	return p.ID
}

// SetPipelineStatus changes a pipeline's status (e.g. running → success).
func (s *Server) SetPipelineStatus(id int64, status string) {
	s.mu.Lock()
	p := s.pipes().pipelines[id]
	p.Status = status
	p.UpdatedAt = time.Now().UTC()
	s.notify()
	s.mu.Unlock()
}

// SetPipelineJobStatus changes the status of the jobs named name in
// pipeline id.
func (s *Server) SetPipelineJobStatus(id int64, name, status string) {
	s.mu.Lock()
	p := s.pipes().pipelines[id]
	for i := range p.Jobs {
		if p.Jobs[i].Name == name {
			p.Jobs[i].Status = status
		}
	}
	s.notify()
	s.mu.Unlock()
}

// PipelineOf returns a snapshot of pipeline id.
func (s *Server) PipelineOf(id int64) Pipeline {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := *s.pipes().pipelines[id]
	p.Jobs = slices.Clone(p.Jobs)
	return p
}

// PipelineStatusOf is a pipeline's status (call inside WaitFor).
func (s *Server) PipelineStatusOf(id int64) string { return s.pipes().pipelines[id].Status }

var (
	rePipelines    = regexp.MustCompile(`^/api/v4/projects/([^/]+)/pipelines$`)
	rePipelineJobs = regexp.MustCompile(`^/api/v4/projects/([^/]+)/pipelines/(\d+)/jobs$`)
	rePipelineCanc = regexp.MustCompile(`^/api/v4/projects/([^/]+)/pipelines/(\d+)/cancel$`)
)

// servePipelines answers /api/v4/projects/… requests.
func (s *Server) servePipelines(w http.ResponseWriter, r *http.Request) {
	// r.URL.Path has %2F decoded; match on the escaped path like Rails.
	path := r.URL.EscapedPath()
	switch {
	case r.Method == http.MethodGet && rePipelines.MatchString(path):
		m := rePipelines.FindStringSubmatch(path)
		s.listPipelines(w, r, m[1])
	case r.Method == http.MethodGet && rePipelineJobs.MatchString(path):
		m := rePipelineJobs.FindStringSubmatch(path)
		pid, _ := strconv.ParseInt(m[2], 10, 64)
		s.listPipelineJobs(w, r, m[1], pid)
	case r.Method == http.MethodPost && rePipelineCanc.MatchString(path):
		m := rePipelineCanc.FindStringSubmatch(path)
		pid, _ := strconv.ParseInt(m[2], 10, 64)
		s.cancelPipeline(w, r, m[1], pid)
	default:
		writeJSON(w, http.StatusNotFound, `{"message":"404 Not Found"}`)
	}
}

// authProject authenticates r for project ref (id or URL-encoded path) and
// returns the project id. write: the route is not a GET (needs api scope);
// jobToken: the route accepts CI_JOB_TOKEN. Called with s.mu held.
func (s *Server) authProject(w http.ResponseWriter, r *http.Request, projectRef string, write, jobTokenOK bool) (int64, bool) {
	ps := s.pipes()
	project, err := strconv.ParseInt(projectRef, 10, 64)
	if err != nil {
		p, _ := url.PathUnescape(projectRef)
		project = ps.projects[p]
	}
	tok := r.Header.Get("Private-Token")
	if tok == "" {
		tok = r.URL.Query().Get("private_token")
	}
	if b, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && tok == "" {
		tok = b
	}
	if tok != "" {
		scopes, ok := ps.apiTokens[tok]
		if !ok {
			writeJSON(w, http.StatusUnauthorized, `{"message":"401 Unauthorized"}`)
			return 0, false
		}
		if !slices.Contains(scopes, "api") && (write || !slices.Contains(scopes, "read_api")) {
			need := "api read_api"
			if write {
				need = "api"
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="", error="insufficient_scope"`)
			writeJSON(w, http.StatusForbidden, fmt.Sprintf(`{"error":"insufficient_scope","error_description":"The request requires higher privileges than provided by the access token.","scope":%q}`, need))
			return 0, false
		}
		if project == 0 {
			writeJSON(w, http.StatusNotFound, `{"message":"404 Project Not Found"}`)
			return 0, false
		}
		return project, true
	}
	if jt := jobToken(r); jt != "" && jobTokenOK {
		j, ok := s.byToken[jt]
		if !ok || (j.Status != "running" && j.Status != "canceling") {
			writeJSON(w, http.StatusUnauthorized, `{"message":"401 Unauthorized"}`)
			return 0, false
		}
		if pj, _ := j.Payload["job_info"].(map[string]any); pj != nil && toInt64(pj["project_id"]) == project && project != 0 {
			return project, true
		}
	}
	// Unauthenticated on a private project (or a job token where GitLab
	// ignores it): the project does not exist for the caller.
	writeJSON(w, http.StatusNotFound, `{"message":"404 Project Not Found"}`)
	return 0, false
}

func toInt64(v any) int64 {
	switch n := v.(type) {
	case int:
		return int64(n)
	case int64:
		return n
	case float64:
		return int64(n)
	}
	return 0
}

// paginate applies page/per_page (default 20, at most 100) and sets
// GitLab's offset pagination headers. It returns the slice bounds.
func paginate(w http.ResponseWriter, r *http.Request, total int) (lo, hi int, ok bool) {
	q := r.URL.Query()
	page, perPage := 1, 20
	if v := q.Get("page"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, `{"error":"page is invalid"}`)
			return 0, 0, false
		}
		page = max(n, 1)
	}
	if v := q.Get("per_page"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, `{"error":"per_page is invalid"}`)
			return 0, 0, false
		}
		perPage = min(max(n, 1), 100)
	}
	pages := max((total+perPage-1)/perPage, 1)
	lo = min((page-1)*perPage, total)
	hi = min(lo+perPage, total)
	h := w.Header()
	h.Set("X-Page", strconv.Itoa(page))
	h.Set("X-Per-Page", strconv.Itoa(perPage))
	h.Set("X-Total", strconv.Itoa(total))
	h.Set("X-Total-Pages", strconv.Itoa(pages))
	h.Set("X-Next-Page", "")
	h.Set("X-Prev-Page", "")
	link := func(p int, rel string) string {
		u := *r.URL
		u.Scheme, u.Host = "http", r.Host
		qq := u.Query()
		qq.Set("page", strconv.Itoa(p))
		qq.Set("per_page", strconv.Itoa(perPage))
		u.RawQuery = qq.Encode()
		return fmt.Sprintf(`<%s>; rel="%s"`, u.String(), rel)
	}
	var links []string
	if page < pages {
		h.Set("X-Next-Page", strconv.Itoa(page+1))
		links = append(links, link(page+1, "next"))
	}
	if page > 1 {
		h.Set("X-Prev-Page", strconv.Itoa(page-1))
		links = append(links, link(page-1, "prev"))
	}
	links = append(links, link(1, "first"), link(pages, "last"))
	h.Set("Link", strings.Join(links, ", "))
	return lo, hi, true
}

func (s *Server) pipelineJSON(p *Pipeline) map[string]any {
	return map[string]any{"id": p.ID, "iid": p.ID % 100000, "project_id": p.ProjectID, "sha": p.SHA, "ref": p.Ref,
		"status": p.Status, "source": p.Source, "created_at": p.CreatedAt.Format("2006-01-02T15:04:05.000Z"),
		"updated_at": p.UpdatedAt.Format("2006-01-02T15:04:05.000Z"),
		"web_url":    fmt.Sprintf("%s/g/p/-/pipelines/%d", s.URL, p.ID)}
}

func (s *Server) listPipelines(w http.ResponseWriter, r *http.Request, projectRef string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	project, ok := s.authProject(w, r, projectRef, false, false)
	if !ok {
		return
	}
	q := r.URL.Query()
	status, ref, sha, scope := q.Get("status"), q.Get("ref"), q.Get("sha"), q.Get("scope")
	orderBy, sortDir := q.Get("order_by"), q.Get("sort")
	switch {
	case status != "" && !slices.Contains(pipelineStatuses, status):
		writeJSON(w, http.StatusBadRequest, `{"error":"status does not have a valid value"}`)
		return
	case scope != "" && !slices.Contains([]string{"running", "pending", "finished", "branches", "tags"}, scope):
		writeJSON(w, http.StatusBadRequest, `{"error":"scope does not have a valid value"}`)
		return
	case scope == "branches" || scope == "tags":
		writeJSON(w, http.StatusNotImplemented, `{"message":"scope branches/tags: not in the fake"}`)
		return
	case orderBy != "" && !slices.Contains([]string{"id", "status", "ref", "updated_at", "user_id"}, orderBy):
		writeJSON(w, http.StatusBadRequest, `{"error":"order_by does not have a valid value"}`)
		return
	case sortDir != "" && sortDir != "asc" && sortDir != "desc":
		writeJSON(w, http.StatusBadRequest, `{"error":"sort does not have a valid value"}`)
		return
	}
	var list []*Pipeline
	for _, p := range s.pipes().pipelines {
		if p.ProjectID != project || (status != "" && p.Status != status) || (ref != "" && p.Ref != ref) ||
			(sha != "" && p.SHA != sha) {
			continue
		}
		switch scope {
		case "running", "pending":
			if p.Status != scope {
				continue
			}
		case "finished":
			if !slices.Contains([]string{"success", "failed", "canceled", "skipped"}, p.Status) {
				continue
			}
		}
		list = append(list, p)
	}
	key := func(p *Pipeline) string {
		switch orderBy {
		case "status":
			return p.Status
		case "ref":
			return p.Ref
		case "updated_at":
			return p.UpdatedAt.Format(time.RFC3339Nano)
		}
		return ""
	}
	sort.Slice(list, func(i, j int) bool {
		a, b := list[i], list[j]
		if sortDir == "asc" {
			a, b = b, a
		}
		if ka, kb := key(a), key(b); ka != kb {
			return ka > kb
		}
		return a.ID > b.ID // desc by default
	})
	lo, hi, ok := paginate(w, r, len(list))
	if !ok {
		return
	}
	out := make([]map[string]any, 0, hi-lo)
	for _, p := range list[lo:hi] {
		out = append(out, s.pipelineJSON(p))
	}
	body, _ := json.Marshal(out)
	writeJSON(w, http.StatusOK, string(body))
}

var jobStatuses = []string{"created", "waiting_for_resource", "preparing", "waiting_for_callback", "pending", "running",
	"success", "failed", "canceling", "canceled", "skipped", "manual", "scheduled"}

func (s *Server) listPipelineJobs(w http.ResponseWriter, r *http.Request, projectRef string, pid int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	project, ok := s.authProject(w, r, projectRef, false, true)
	if !ok {
		return
	}
	p, found := s.pipes().pipelines[pid]
	if !found || p.ProjectID != project {
		writeJSON(w, http.StatusNotFound, `{"message":"404 Not found"}`)
		return
	}
	q := r.URL.Query()
	scopes := append(q["scope[]"], q["scope"]...)
	for _, sc := range scopes {
		if !slices.Contains(jobStatuses, sc) {
			writeJSON(w, http.StatusBadRequest, `{"error":"scope does not have a valid value"}`)
			return
		}
	}
	var jobs []PipelineJob
	for _, j := range p.Jobs {
		if len(scopes) == 0 || slices.Contains(scopes, j.Status) {
			jobs = append(jobs, j)
		}
	}
	// GitLab orders a pipeline's jobs by id descending.
	slices.Reverse(jobs)
	lo, hi, ok := paginate(w, r, len(jobs))
	if !ok {
		return
	}
	out := make([]map[string]any, 0, hi-lo)
	for _, j := range jobs[lo:hi] {
		out = append(out, map[string]any{"id": j.ID, "name": j.Name, "stage": j.Stage, "status": j.Status,
			"ref": p.Ref, "tag": p.Tag, "allow_failure": false,
			"created_at": p.CreatedAt.Format("2006-01-02T15:04:05.000Z"),
			"pipeline":   map[string]any{"id": p.ID, "project_id": p.ProjectID, "ref": p.Ref, "sha": p.SHA, "status": p.Status},
			"web_url":    fmt.Sprintf("%s/g/p/-/jobs/%d", s.URL, j.ID)})
	}
	body, _ := json.Marshal(out)
	writeJSON(w, http.StatusOK, string(body))
}

func (s *Server) cancelPipeline(w http.ResponseWriter, r *http.Request, projectRef string, pid int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	project, ok := s.authProject(w, r, projectRef, true, false)
	if !ok {
		return
	}
	p, found := s.pipes().pipelines[pid]
	if !found || p.ProjectID != project {
		writeJSON(w, http.StatusNotFound, `{"message":"404 Not found"}`)
		return
	}
	// CancelPipelineService: cancelable jobs and the pipeline become
	// canceled; a pipeline that is not cancelable is answered 200 unchanged.
	if slices.Contains(cancelable, p.Status) {
		p.Status = "canceled"
		p.UpdatedAt = time.Now().UTC()
		for i := range p.Jobs {
			if slices.Contains(cancelable, p.Jobs[i].Status) {
				p.Jobs[i].Status = "canceled"
			}
		}
		s.notify()
	}
	body, _ := json.Marshal(s.pipelineJSON(p))
	writeJSON(w, http.StatusOK, string(body))
}

package pipeguard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

const apiToken = "glpat-guard-0123456789"

func newGitLab(t *testing.T) (*coordinatortest.Server, *Client) {
	srv := coordinatortest.New(t)
	srv.AddAPIToken(apiToken, "api")
	return srv, &Client{APIURL: srv.URL + "/api/v4"}
}

func TestClientPaginatesAndFilters(t *testing.T) {
	srv, c := newGitLab(t)
	var runningIDs []int64
	for i := range 250 {
		id := srv.AddPipeline(7, fmt.Sprintf("%d-x", i), "running")
		runningIDs = append(runningIDs, id)
		srv.AddPipeline(7, "main", "success")
	}
	other := srv.AddPipeline(8, "1-x", "running")
	ps, err := c.Pipelines(context.Background(), apiToken, "7", Query{Statuses: []string{"running"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 250 {
		t.Fatalf("got %d pipelines, want 250", len(ps))
	}
	slices.Reverse(runningIDs)
	if !slices.Equal(ids(ps), runningIDs) {
		t.Fatal("not every running pipeline, newest first")
	}
	if slices.Contains(ids(ps), other) {
		t.Fatal("another project's pipeline")
	}
	if n := srv.Count("GET /api/v4/projects/7/pipelines"); n != 3 {
		t.Fatalf("%d requests for 250 pipelines, want 3 pages of 100", n)
	}
	// ref filter and two statuses: merged, newest first.
	srv.AddPipeline(7, "main", "pending")
	ps, err = c.Pipelines(context.Background(), apiToken, "7", Query{Statuses: []string{"pending", "success"}, Ref: "main"})
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 251 || ps[0].Status != "pending" || ps[0].Ref != "main" {
		t.Fatalf("got %d, first %+v", len(ps), ps[0])
	}
	for i := 1; i < len(ps); i++ {
		if ps[i].ID >= ps[i-1].ID {
			t.Fatal("not newest first")
		}
	}
}

func TestClientByPath(t *testing.T) {
	srv, c := newGitLab(t)
	srv.AddProject(7, "g/p")
	id := srv.AddPipeline(7, "1-x", "running")
	ps, err := c.Pipelines(context.Background(), apiToken, "g/p", Query{})
	if err != nil || len(ps) != 1 || ps[0].ID != id {
		t.Fatalf("%v %v", ps, err)
	}
}

func TestClientErrors(t *testing.T) {
	srv, c := newGitLab(t)
	srv.AddAPIToken("glpat-readonly", "read_api")
	srv.AddAPIToken("glpat-repo", "read_repository")
	id := srv.AddPipeline(7, "1-x", "running", coordinatortest.PipelineJob{Name: "deploy", Stage: "deploy", Status: "running"})
	ctx := context.Background()

	_, err := c.Pipelines(ctx, "glpat-unknown", "7", Query{})
	if !TokenRejected(err) || err.Error() != "guard token rejected by GitLab (401)" {
		t.Fatalf("unknown token: %v", err)
	}
	_, err = c.Pipelines(ctx, "glpat-repo", "7", Query{})
	if !TokenRejected(err) || err.Error() != "guard token rejected by GitLab (403): GET /projects/7/pipelines needs a token with the api or read_api scope" {
		t.Fatalf("token without read_api: %v", err)
	}
	_, err = c.Pipelines(ctx, "", "7", Query{})
	if TokenRejected(err) || !Permanent(err) || !strings.Contains(err.Error(), "404") {
		t.Fatalf("no token: %v", err)
	}
	// read_api lists, but cannot cancel.
	if _, err := c.Pipelines(ctx, "glpat-readonly", "7", Query{}); err != nil {
		t.Fatal(err)
	}
	_, err = c.Cancel(ctx, "glpat-readonly", "7", id)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 403 || ae.Scope != "api" ||
		err.Error() != fmt.Sprintf("guard token rejected by GitLab (403): POST /projects/7/pipelines/%d/cancel needs a token with the api scope", id) {
		t.Fatalf("cancel with read_api: %v", err)
	}
	p, err := c.Cancel(ctx, apiToken, "7", id)
	if err != nil || p.Status != "canceled" || srv.PipelineOf(id).Status != "canceled" {
		t.Fatalf("cancel: %+v %v", p, err)
	}
	jobs, err := c.PipelineJobs(ctx, apiToken, "7", id, nil)
	if err != nil || len(jobs) != 1 || jobs[0].Name != "deploy" || jobs[0].Status != "canceled" {
		t.Fatalf("jobs: %+v %v", jobs, err)
	}
	// A 5xx is not permanent: retry.
	srv.Inject(`^GET /api/v4/projects/7/pipelines$`, 502, 1, nil)
	_, err = c.Pipelines(ctx, apiToken, "7", Query{})
	if err == nil || Permanent(err) || !strings.Contains(err.Error(), "502") {
		t.Fatalf("502: %v", err)
	}
	if strings.Contains(fmt.Sprint(err), apiToken) {
		t.Fatal("token in an error")
	}
}

func TestPollerSharesOneListing(t *testing.T) {
	srv, c := newGitLab(t)
	old := srv.AddPipeline(7, "1-old", "running")
	var ws []Waiter
	r := mustRule(t, Spec{})
	for range 100 {
		ws = append(ws, Waiter{PipelineID: srv.AddPipeline(7, "2-new", "running"), Rule: r})
	}
	res, err := (&Poller{Client: c}).Poll(context.Background(), apiToken, "7", ws)
	if err != nil {
		t.Fatal(err)
	}
	// Every job waits for every older one (oldest_first).
	for i, x := range res {
		if x.Decision.Verdict != Wait || len(x.Decision.Blocking) != i+1 || x.Decision.Blocking[len(x.Decision.Blocking)-1].ID != old {
			t.Fatalf("waiter %d: %+v", i, x.Decision)
		}
	}
	if n := srv.Count("GET /api/v4/projects/7/pipelines"); n != 2 {
		t.Fatalf("%d listing requests for 100 waiters on one rule (101 pipelines: 2 pages), want 2", n)
	}
}

func TestPollerNarrowingFetchesJobsOnce(t *testing.T) {
	srv, c := newGitLab(t)
	a := srv.AddPipeline(7, "1-a", "running",
		coordinatortest.PipelineJob{Name: "test", Stage: "test", Status: "running"},
		coordinatortest.PipelineJob{Name: "deploy", Stage: "deploy", Status: "created"})
	b := srv.AddPipeline(7, "1-b", "running", coordinatortest.PipelineJob{Name: "deploy", Stage: "deploy", Status: "running"})
	r := mustRule(t, Spec{JobRegex: "^deploy$"})
	ws := []Waiter{{PipelineID: b + 100, Rule: r}, {PipelineID: b + 101, Rule: r}}
	res, err := (&Poller{Client: c}).Poll(context.Background(), apiToken, "7", ws)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range res {
		if !slices.Equal(ids(x.Decision.Blocking), []int64{b}) {
			t.Fatalf("blocking %v, want only %d (a's deploy job is not running)", ids(x.Decision.Blocking), b)
		}
	}
	for _, pid := range []int64{a, b} {
		if n := srv.Count(fmt.Sprintf("GET /api/v4/projects/7/pipelines/%d/jobs", pid)); n != 1 {
			t.Fatalf("pipeline %d's jobs fetched %d times for 2 waiters", pid, n)
		}
	}
}

func TestPollerCancelOlder(t *testing.T) {
	srv, c := newGitLab(t)
	srv.AddAPIToken("glpat-readonly", "read_api")
	old := srv.AddPipeline(7, "1-a", "running")
	own := srv.AddPipeline(7, "1-b", "running")
	r := mustRule(t, Spec{Order: NewestWins, CancelOlder: true})
	p := &Poller{Client: c}
	res, err := p.Poll(context.Background(), "glpat-readonly", "7", []Waiter{{PipelineID: own, Rule: r}})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err == nil || !strings.Contains(res[0].Err.Error(), "needs a guard token with the api scope") ||
		!strings.Contains(res[0].Err.Error(), "guard token rejected by GitLab (403)") {
		t.Fatalf("read_api token: %v", res[0].Err)
	}
	res, err = p.Poll(context.Background(), apiToken, "7", []Waiter{{PipelineID: own, Rule: r}})
	if err != nil || res[0].Err != nil {
		t.Fatal(err, res[0].Err)
	}
	if res[0].Decision.Verdict != Proceed || srv.PipelineOf(old).Status != "canceled" {
		t.Fatalf("after cancel: %+v, old is %s", res[0].Decision, srv.PipelineOf(old).Status)
	}
	// The older pipeline's own guard gives way to the newer one.
	res, _ = p.Poll(context.Background(), apiToken, "7", []Waiter{{PipelineID: old, Rule: r}})
	if res[0].Decision.Verdict != Superseded || res[0].Decision.SupersededBy != own {
		t.Fatalf("older: %+v", res[0].Decision)
	}
}

func TestPollerDistinctQueries(t *testing.T) {
	srv, c := newGitLab(t)
	srv.AddPipeline(7, "1-a", "pending")
	run := srv.AddPipeline(7, "1-b", "running")
	own := srv.AddPipeline(7, "1-c", "running")
	ws := []Waiter{
		{PipelineID: own, Rule: mustRule(t, Spec{})},
		{PipelineID: own, Rule: mustRule(t, Spec{StatusRegex: "pending"})},
		{PipelineID: own, Rule: mustRule(t, Spec{RefRegex: "^1-"})}, // same query as the first
	}
	res, err := (&Poller{Client: c}).Poll(context.Background(), apiToken, "7", ws)
	if err != nil {
		t.Fatal(err)
	}
	if n := srv.Count("GET /api/v4/projects/7/pipelines"); n != 2 {
		t.Fatalf("%d listings for 2 distinct queries", n)
	}
	if !slices.Equal(ids(res[0].Decision.Blocking), []int64{run}) || !slices.Equal(ids(res[2].Decision.Blocking), []int64{run}) ||
		len(res[1].Decision.Blocking) != 1 || res[1].Decision.Blocking[0].Status != "pending" {
		t.Fatalf("%+v", res)
	}
}

// linkOnlyGitLab is a pipelines API that paginates with the Link header
// alone (no X-Next-Page, as GitLab's keyset pagination): each page's
// rel="next" carries an opaque cursor. Pages of 2; project "g/p" only, by
// its URL-encoded path. It records the requests it got.
func linkOnlyGitLab(t *testing.T, pipelines []Pipeline, jobs []Job) (*httptest.Server, *[]string) {
	var mu sync.Mutex
	var got []string
	var srv *httptest.Server
	page := func(w http.ResponseWriter, r *http.Request, n int, item func(i int) any) {
		from := 0
		if c := r.URL.Query().Get("cursor"); c != "" {
			from, _ = strconv.Atoi(strings.TrimPrefix(c, "c"))
		}
		to := min(from+2, n)
		out := []any{}
		for i := from; i < to; i++ {
			out = append(out, item(i))
		}
		if to < n {
			next := *r.URL
			q := next.Query()
			q.Set("cursor", fmt.Sprintf("c%d", to))
			q.Del("page")
			next.RawQuery = q.Encode()
			w.Header().Set("Link", fmt.Sprintf(`<%s%s>; rel="next", <%s%s>; rel="first"`, srv.URL, next.RequestURI(), srv.URL, r.URL.Path))
		}
		_ = json.NewEncoder(w).Encode(out)
	}
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Method+" "+r.URL.RequestURI())
		mu.Unlock()
		if r.Header.Get("Private-Token") != apiToken {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		switch r.URL.EscapedPath() {
		case "/api/v4/projects/g%2Fp/pipelines":
			page(w, r, len(pipelines), func(i int) any { return pipelines[i] })
		case "/api/v4/projects/g%2Fp/pipelines/9/jobs":
			page(w, r, len(jobs), func(i int) any { return jobs[i] })
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &got
}

// Pages linked by the Link header only are all read, for pipelines and for
// a pipeline's jobs, by the path the header gives.
func TestClientFollowsLinkNext(t *testing.T) {
	ps := []Pipeline{{ID: 9, Status: "running", Ref: "main"}, {ID: 8, Status: "running", Ref: "1-a"},
		{ID: 7, Status: "running", Ref: "1-b"}, {ID: 6, Status: "running", Ref: "1-c"}, {ID: 5, Status: "running", Ref: "1-d"}}
	js := []Job{{ID: 1, Name: "a"}, {ID: 2, Name: "b"}, {ID: 3, Name: "deploy", Status: "running"}}
	srv, got := linkOnlyGitLab(t, ps, js)
	c := &Client{APIURL: srv.URL + "/api/v4"}
	out, err := c.Pipelines(context.Background(), apiToken, "g/p", Query{Statuses: []string{"running"}})
	if err != nil || !slices.Equal(ids(out), []int64{9, 8, 7, 6, 5}) {
		t.Fatalf("pipelines %v, %v; requests %q", ids(out), err, *got)
	}
	jobs, err := c.PipelineJobs(context.Background(), apiToken, "g/p", 9, []string{"running"})
	if err != nil || len(jobs) != 3 || jobs[2].Name != "deploy" {
		t.Fatalf("jobs %+v, %v; requests %q", jobs, err, *got)
	}
	if len(*got) != 5 || !strings.Contains((*got)[2], "cursor=c4") || !strings.Contains((*got)[4], "cursor=c2") {
		t.Fatalf("requests %q: want 3 pages of pipelines then 2 of jobs, by the cursor links", *got)
	}
}

// A Link rel="next" to another host is not followed: the token would go
// there.
func TestClientLinkToAnotherHostRefused(t *testing.T) {
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("request to another host, token %q", r.Header.Get("Private-Token"))
	}))
	defer elsewhere.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", fmt.Sprintf(`<%s/api/v4/projects/7/pipelines?page=2>; rel="next"`, elsewhere.URL))
		_, _ = w.Write([]byte(`[{"id":1,"status":"running","ref":"1-a"}]`))
	}))
	defer srv.Close()
	c := &Client{APIURL: srv.URL + "/api/v4"}
	_, err := c.Pipelines(context.Background(), apiToken, "7", Query{})
	if err == nil || !strings.Contains(err.Error(), "is not on http://127.0.0.1") {
		t.Fatalf("err %v", err)
	}
}

// A status regex wider than maxServerStatuses but matching only statuses a
// pipeline leaves is still filtered server-side: a project whose history
// is longer than MaxPages pages is decided, in one small request per
// status, not refused for its history.
func TestPollerWideActiveStatusRegex(t *testing.T) {
	srv, c := newGitLab(t)
	c.MaxPages = 2
	for i := range 300 {
		srv.AddPipeline(7, fmt.Sprintf("%d-done", i), "success")
	}
	old := srv.AddPipeline(7, "1-old", "preparing")
	own := srv.AddPipeline(7, "1-own", "running")
	r := mustRule(t, Spec{StatusRegex: "running|pending|created|preparing|waiting_for_resource"})
	res, err := (&Poller{Client: c}).Poll(context.Background(), apiToken, "7", []Waiter{{PipelineID: own, Rule: r}})
	if err != nil || res[0].Decision.Verdict != Wait || !slices.Equal(ids(res[0].Decision.Blocking), []int64{old}) {
		t.Fatalf("%+v %v", res, err)
	}
	if n := srv.Count("GET /api/v4/projects/7/pipelines"); n != 5 {
		t.Fatalf("%d listing requests, want one per status (5)", n)
	}
}

// A pipeline deleted between the listing and its cancel (404): gone, the
// job goes on; the other waiters of the poll are not failed by it.
func TestPollerCancelOfADeletedPipeline(t *testing.T) {
	srv, c := newGitLab(t)
	srv.AddPipeline(7, "1-a", "running")
	srv.AddPipeline(7, "1-b", "running")
	own := srv.AddPipeline(7, "1-c", "running")
	srv.Inject(`^POST /api/v4/projects/7/pipelines/\d+/cancel$`, 404, -1, nil)
	ws := []Waiter{{PipelineID: own, Rule: mustRule(t, Spec{Order: NewestWins, CancelOlder: true, StatusRegex: ".*"})},
		{PipelineID: own + 1, Rule: mustRule(t, Spec{RefRegex: "^2-"})}}
	res, err := (&Poller{Client: c}).Poll(context.Background(), apiToken, "7", ws)
	if err != nil || res[0].Err != nil || res[0].Decision.Verdict != Proceed || res[1].Decision.Verdict != Proceed {
		t.Fatalf("%+v %v", res, err)
	}
	if n := srv.Count("POST /api/v4/projects/7/pipelines/" + strconv.FormatInt(own-1, 10) + "/cancel"); n != 1 {
		t.Fatalf("%d cancels of the deleted pipeline", n)
	}
}

// A pipeline of page 1 finishing while page 2 is asked for shifts the
// offset pages: the older conflicting pipeline, first of page 2, moves to
// page 1, already read. The listing's X-Total changed, so it is read again
// and the conflict is seen.
func TestPollerListingChangedBetweenPages(t *testing.T) {
	srv, c := newGitLab(t)
	for i := range 50 {
		srv.AddPipeline(7, fmt.Sprintf("feature/o%d", i), "running")
	}
	old := srv.AddPipeline(7, "1-old", "running")
	var newer []int64
	for i := range 99 {
		newer = append(newer, srv.AddPipeline(7, fmt.Sprintf("feature/n%d", i), "running"))
	}
	own := srv.AddPipeline(7, "2-own", "running") // old is the 101st newest: first of page 2
	var once sync.Once
	srv.Observe(coordinatortest.Observer{Request: func(r *http.Request) {
		if r.URL.Query().Get("page") == "2" {
			once.Do(func() { srv.SetPipelineStatus(newer[50], "success") })
		}
	}})
	res, err := (&Poller{Client: c}).Poll(context.Background(), apiToken, "7", []Waiter{{PipelineID: own, Rule: mustRule(t, Spec{})}})
	if err != nil || res[0].Decision.Verdict != Wait || !slices.Equal(ids(res[0].Decision.Blocking), []int64{old}) {
		t.Fatalf("%+v %v", res, err)
	}
	if n := srv.Count("GET /api/v4/projects/7/pipelines"); n != 4 {
		t.Fatalf("%d listing requests, want 2 pages twice", n)
	}
	// Changing at every read: an error, retried (the job keeps waiting).
	srv.Observe(coordinatortest.Observer{Request: func(r *http.Request) {
		if r.URL.Query().Get("page") == "2" {
			srv.AddPipeline(7, "feature/more", "running")
		}
	}})
	_, err = (&Poller{Client: c}).Poll(context.Background(), apiToken, "7", []Waiter{{PipelineID: own, Rule: mustRule(t, Spec{})}})
	if err == nil || Permanent(err) || !strings.Contains(err.Error(), "the list changed while its pages were read, 3 times in a row") {
		t.Fatalf("err %v", err)
	}
}

// GUARD_CANCEL_OLDER on a GitLab that answers a cancel with "canceling"
// (17.x: the jobs are still being stopped): the job waits until the
// pipeline is canceled instead of going on beside its stopping jobs; the
// canceling pipelines are asked for (status=canceling).
func TestPollerCancelOlderWaitsWhileCanceling(t *testing.T) {
	var mu sync.Mutex
	status := "running"
	var cancels int
	var queried []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/api/v4/projects/7/pipelines/5/cancel":
			cancels++
			if status == "running" {
				status = "canceling"
			}
			fmt.Fprintf(w, `{"id":5,"status":%q,"ref":"1-old"}`, status)
		case r.URL.Path == "/api/v4/projects/7/pipelines":
			st := r.URL.Query().Get("status")
			queried = append(queried, st)
			out := []Pipeline{{ID: 6, Status: "running", Ref: "1-own"}}
			if st == status {
				out = append(out, Pipeline{ID: 5, Status: status, Ref: "1-old"})
			}
			if st != "running" {
				out = out[1:]
			}
			_ = json.NewEncoder(w).Encode(out)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	defer srv.Close()
	p := &Poller{Client: &Client{APIURL: srv.URL + "/api/v4"}}
	for _, noWait := range []bool{false, true} {
		mu.Lock()
		status, cancels, queried = "running", 0, nil
		mu.Unlock()
		ws := []Waiter{{PipelineID: 6, Rule: mustRule(t, Spec{Order: NewestWins, CancelOlder: true, NoWait: noWait})}}
		res, err := p.Poll(context.Background(), apiToken, "7", ws)
		if err != nil || res[0].Err != nil || res[0].Decision.Verdict != Wait || !slices.Equal(ids(res[0].Decision.Blocking), []int64{5}) {
			t.Fatalf("no-wait %v, after the cancel: %+v %v", noWait, res, err)
		}
		if !slices.Equal(queried, []string{"running", "canceling"}) {
			t.Fatalf("statuses asked for: %q", queried)
		}
		res, err = p.Poll(context.Background(), apiToken, "7", ws)
		if err != nil || res[0].Decision.Verdict != Wait || cancels != 1 {
			t.Fatalf("no-wait %v, while canceling: %+v %v (%d cancels)", noWait, res, err, cancels)
		}
		mu.Lock()
		status = "canceled"
		mu.Unlock()
		res, err = p.Poll(context.Background(), apiToken, "7", ws)
		if err != nil || res[0].Decision.Verdict != Proceed {
			t.Fatalf("no-wait %v, canceled: %+v %v", noWait, res, err)
		}
	}
}

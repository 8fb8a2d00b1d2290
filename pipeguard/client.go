package pipeguard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Client speaks GitLab's projects pipelines API (lib/api/ci/pipelines.rb)
// with a personal, project or group access token (PRIVATE-TOKEN header).
type Client struct {
	// APIURL is the API base, e.g. https://gitlab.example.com/api/v4
	// (CI_API_V4_URL).
	APIURL string
	// HTTP is the client used; nil = one with a 10 s timeout.
	HTTP *http.Client
	// UserAgent is sent when set.
	UserAgent string
	// MaxPages caps one listing (100 pipelines a page); 0 = 100 pages.
	MaxPages int
}

// APIError is a GitLab answer other than 2xx.
type APIError struct {
	Method, Path string // Path without the API base and query
	Status       int
	Message      string // GitLab's message or error, when the body has one
	Scope        string // insufficient_scope: the scope GitLab asks for
	// RetryAfter is the Retry-After of a 429 or 503 (GitLab's rate
	// limits), 0 when absent.
	RetryAfter time.Duration
}

// RetryAfter is how long GitLab asked to wait before the next request (a
// 429 or 503 with Retry-After), else 0.
func RetryAfter(err error) time.Duration {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.RetryAfter
	}
	return 0
}

// retryAfter parses Retry-After: delay-seconds or an HTTP date.
func retryAfter(h http.Header, now time.Time) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil {
		return time.Duration(max(n, 0)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

func (e *APIError) Error() string {
	switch {
	case e.TokenRejected():
		if e.Scope != "" {
			return fmt.Sprintf("guard token rejected by GitLab (%d): %s %s needs a token with the %s scope", e.Status, e.Method, e.Path,
				strings.Join(strings.Fields(e.Scope), " or "))
		}
		return fmt.Sprintf("guard token rejected by GitLab (%d)", e.Status)
	case e.Status == http.StatusNotFound:
		return fmt.Sprintf("GitLab answered 404 to %s %s: no such project or pipeline, or the guard token cannot see it (%s)", e.Method, e.Path, e.Message)
	}
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	return fmt.Sprintf("GitLab answered %d to %s %s: %s", e.Status, e.Method, e.Path, msg)
}

// TokenRejected: 401 or 403, retrying with the same token cannot help.
func (e *APIError) TokenRejected() bool {
	return e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden
}

// Permanent reports whether err cannot get better by retrying: a rejected
// token, a missing project, a bad request.
func Permanent(err error) bool {
	var ae *APIError
	if !errors.As(err, &ae) {
		return false
	}
	return ae.TokenRejected() || ae.Status == http.StatusNotFound || ae.Status == http.StatusBadRequest
}

// TokenRejected reports whether err is a 401/403 answer.
func TokenRejected(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.TokenRejected()
}

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return &http.Client{Timeout: 10 * time.Second}
}

// projectPath is the :id of a project: a numeric id, or a full path
// (URL-encoded, g%2Fp).
func projectPath(project string) string { return url.PathEscape(project) }

func (c *Client) do(ctx context.Context, method, path string, q url.Values, token string, out any) (http.Header, error) {
	u := strings.TrimRight(c.APIURL, "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return c.doURL(ctx, method, u, path, token, out)
}

// doURL requests the absolute URL u; path names it in errors.
func (c *Client) doURL(ctx context.Context, method, u, path, token string, out any) (http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, fmt.Errorf("guard API URL %q: %w", c.APIURL, err)
	}
	req.Header.Set("Accept", "application/json")
	if token != "" {
		req.Header.Set("PRIVATE-TOKEN", token)
	}
	if c.UserAgent != "" {
		req.Header.Set("User-Agent", c.UserAgent)
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, redact(err, token))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		ae := &APIError{Method: method, Path: path, Status: resp.StatusCode}
		if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
			ae.RetryAfter = retryAfter(resp.Header, time.Now())
		}
		var e struct {
			Message any    `json:"message"`
			Error   string `json:"error"`
			Scope   string `json:"scope"`
		}
		if json.Unmarshal(body, &e) == nil {
			switch m := e.Message.(type) {
			case string:
				ae.Message = m
			case nil:
				ae.Message = e.Error
			default:
				b, _ := json.Marshal(m)
				ae.Message = string(b)
			}
			if e.Error == "insufficient_scope" {
				ae.Scope = e.Scope
			}
		}
		return nil, ae
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return nil, fmt.Errorf("%s %s: unexpected answer: %w", method, path, err)
		}
	}
	return resp.Header, nil
}

// redact keeps a token out of an error (url.Error carries the URL, and a
// token is never in it here, but a proxy error might echo headers).
func redact(err error, token string) error {
	if token == "" || !strings.Contains(err.Error(), token) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), token, "[token]"))
}

// list GETs every page of path (per_page=100): it follows X-Next-Page
// (GitLab's offset pagination), else the Link header's rel="next" (which
// GitLab also sends, and alone for keyset pagination), on the API's own
// origin only (the token goes nowhere else). Offset pages shift when the
// filtered set changes between two requests (a running pipeline finishes:
// the next page's first one moves to the page already read, unseen), so a
// listing whose X-Total changed on the way is read again, up to 3 times,
// else it is an error (retried: the jobs keep waiting).
func list[T any](ctx context.Context, c *Client, path string, q url.Values, token string) ([]T, error) {
	for range listAttempts - 1 {
		all, changed, err := listOnce[T](ctx, c, path, q, token)
		if err != nil || !changed {
			return all, err
		}
	}
	all, changed, err := listOnce[T](ctx, c, path, q, token)
	if err == nil && changed {
		err = fmt.Errorf("GET %s: the list changed while its pages were read, %d times in a row", path, listAttempts)
	}
	return all, err
}

// listAttempts is how many times a listing is read while it changes.
const listAttempts = 3

// listOnce reads every page once; changed: X-Total differed between pages.
func listOnce[T any](ctx context.Context, c *Client, path string, q url.Values, token string) (all []T, changed bool, err error) {
	maxPages := c.MaxPages
	if maxPages == 0 {
		maxPages = 100
	}
	q.Set("per_page", "100")
	page, u, total := 1, "", ""
	for n := 1; ; n++ {
		var batch []T
		var h http.Header
		if u == "" {
			q.Set("page", strconv.Itoa(page))
			h, err = c.do(ctx, http.MethodGet, path, q, token, &batch)
		} else {
			h, err = c.doURL(ctx, http.MethodGet, u, path, token, &batch)
		}
		if err != nil {
			return nil, false, err
		}
		if t := h.Get("X-Total"); n == 1 {
			total = t
		} else if t != "" && total != "" && t != total {
			return all, true, nil
		}
		all = append(all, batch...)
		if len(batch) == 0 {
			return all, false, nil
		}
		next, link := h.Get("X-Next-Page"), nextLink(h)
		switch {
		case next != "":
			p, err := strconv.Atoi(next)
			if err != nil || p <= page {
				return nil, false, fmt.Errorf("GET %s: bad X-Next-Page %q", path, next)
			}
			page, u = p, ""
		case link != "":
			nu, err := c.sameOrigin(link)
			if err != nil {
				return nil, false, fmt.Errorf("GET %s: Link rel=\"next\": %w", path, err)
			}
			if nu == u {
				return nil, false, fmt.Errorf("GET %s: Link rel=\"next\" is the page just read", path)
			}
			u = nu
		default:
			return all, false, nil
		}
		if n >= maxPages {
			return nil, false, fmt.Errorf("GET %s: more than %d pages; narrow the guard's status regex", path, maxPages)
		}
	}
}

// nextLink is the rel="next" target of an RFC 8288 Link header, or "".
func nextLink(h http.Header) string {
	for _, v := range h.Values("Link") {
		for _, part := range strings.Split(v, ",") {
			target, params, ok := strings.Cut(strings.TrimSpace(part), ";")
			if !ok || !strings.HasPrefix(target, "<") || !strings.HasSuffix(target, ">") {
				continue
			}
			for _, p := range strings.Split(params, ";") {
				k, val, _ := strings.Cut(strings.TrimSpace(p), "=")
				if strings.EqualFold(strings.TrimSpace(k), "rel") && slices.Contains(strings.Fields(strings.Trim(strings.TrimSpace(val), `"`)), "next") {
					return target[1 : len(target)-1]
				}
			}
		}
	}
	return ""
}

// sameOrigin resolves a Link target against the API URL and refuses one on
// another scheme, host or port.
func (c *Client) sameOrigin(link string) (string, error) {
	base, err := url.Parse(c.APIURL)
	if err != nil {
		return "", err
	}
	ref, err := url.Parse(link)
	if err != nil {
		return "", err
	}
	u := base.ResolveReference(ref)
	if u.Scheme != base.Scheme || u.Host != base.Host {
		return "", fmt.Errorf("%s is not on %s://%s", u.Redacted(), base.Scheme, base.Host)
	}
	return u.String(), nil
}

// Pipelines lists the project's pipelines that q filters server-side (one
// listing per status in q.Statuses, all pages), newest first, each once.
func (c *Client) Pipelines(ctx context.Context, token, project string, q Query) ([]Pipeline, error) {
	path := "/projects/" + projectPath(project) + "/pipelines"
	statuses := q.Statuses
	if len(statuses) == 0 {
		statuses = []string{""}
	}
	seen := map[int64]bool{}
	var out []Pipeline
	for _, st := range statuses {
		v := url.Values{"order_by": {"id"}, "sort": {"desc"}}
		if st != "" {
			v.Set("status", st)
		}
		if q.Ref != "" {
			v.Set("ref", q.Ref)
		}
		ps, err := list[Pipeline](ctx, c, path, v, token)
		if err != nil {
			return nil, err
		}
		for _, p := range ps {
			if !seen[p.ID] {
				seen[p.ID] = true
				out = append(out, p)
			}
		}
	}
	if len(q.Statuses) > 1 {
		sortDesc(out)
	}
	return out, nil
}

func sortDesc(ps []Pipeline) {
	for i := 1; i < len(ps); i++ {
		for j := i; j > 0 && ps[j].ID > ps[j-1].ID; j-- {
			ps[j], ps[j-1] = ps[j-1], ps[j]
		}
	}
}

// PipelineJobs lists a pipeline's jobs whose status is in scope (all when
// scope is empty). CI_JOB_TOKEN is not accepted by the pipelines list, so
// the same access token is used here.
func (c *Client) PipelineJobs(ctx context.Context, token, project string, pipeline int64, scope []string) ([]Job, error) {
	path := "/projects/" + projectPath(project) + "/pipelines/" + strconv.FormatInt(pipeline, 10) + "/jobs"
	v := url.Values{}
	for _, s := range scope {
		v.Add("scope[]", s)
	}
	return list[Job](ctx, c, path, v, token)
}

// Cancel cancels a pipeline (needs a token with the api scope) and returns
// it as GitLab answers (its status after the cancel).
func (c *Client) Cancel(ctx context.Context, token, project string, pipeline int64) (Pipeline, error) {
	path := "/projects/" + projectPath(project) + "/pipelines/" + strconv.FormatInt(pipeline, 10) + "/cancel"
	var p Pipeline
	_, err := c.do(ctx, http.MethodPost, path, nil, token, &p)
	return p, err
}

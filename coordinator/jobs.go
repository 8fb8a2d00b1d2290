package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"gitlab.com/paas-runner/paas-runner/internal/backoff"

	"gitlab.com/paas-runner/paas-runner/job"
)

type jobRequest struct {
	Token      string `json:"token"`
	SystemID   string `json:"system_id,omitempty"`
	LastUpdate string `json:"last_update,omitempty"`
	Info       Info   `json:"info"`
}

// LongPollRelease tells whether the last RequestJob's "no job" was a long
// poll let go (the queue changed, or the hold ran out), and then how long
// to wait before the next request: what is left of LongPollMinInterval
// since the last one started.
func (c *Client) LongPollRelease() (wait time.Duration, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.released {
		return 0, false
	}
	return max(0, time.Until(c.lastReq.Add(c.longPollMinInterval()))), true
}

// DefaultLongPollMinInterval is the shortest interval between the starts
// of two job requests when the first was a long poll let go.
const DefaultLongPollMinInterval = time.Second

func (c *Client) longPollMinInterval() time.Duration {
	if c.cfg.LongPollMinInterval > 0 {
		return c.cfg.LongPollMinInterval
	}
	return DefaultLongPollMinInterval
}

// RequestJob polls POST /jobs/request once. It returns (nil, nil) when
// there is no job (204), the job when one was assigned (201), and an
// *APIError or transport error otherwise. A 201 whose payload is unusable
// is a *PayloadError, carrying the job id and token when they could be read.
// A request that Workhorse held (long polling) and let go with no job is
// told by LongPollRelease.
func (c *Client) RequestJob(ctx context.Context) (*job.Acquired, error) {
	c.mu.Lock()
	lu := c.lastUp
	c.mu.Unlock()
	body, _ := json.Marshal(jobRequest{Token: c.cfg.Token, SystemID: c.cfg.SystemID, LastUpdate: lu, Info: c.cfg.Info})
	const path = "jobs/request"
	start := time.Now()
	resp, err := c.do(ctx, request{method: http.MethodPost, path: path, body: body, jsonBody: true,
		header: http.Header{"Accept": {"application/json"}, "Runner-Token": {c.cfg.Token}}})
	if err != nil {
		return nil, err
	}
	// Workhorse held the request (long polling) and let it go with a 204
	// of its own, which has no X-GitLab-Last-Update (Rails' always have
	// one): the queue changed, or the hold ran out. Asked again now,
	// GitLab answers with the job queued meanwhile, instead of a
	// check_interval later (gitlab-runner waits). Not sooner than
	// LongPollMinInterval after this one started, though: Workhorse's
	// 50 ns default hold lets every request go at once.
	c.mu.Lock()
	c.released = resp.status == http.StatusNoContent && lu != "" && resp.header.Get("X-GitLab-Last-Update") == ""
	c.lastReq = start
	c.mu.Unlock()
	switch resp.status {
	case http.StatusNoContent:
		return nil, nil
	case http.StatusCreated:
		if !isJSON(resp.header) {
			return nil, payloadError(resp.body, fmt.Errorf("content type %q is not application/json", resp.header.Get("Content-Type")))
		}
		a, err := job.Parse(resp.body)
		if err != nil {
			return nil, payloadError(resp.body, err)
		}
		if fr := a.Payload.Features.FailureReasons; len(fr) > 0 {
			c.mu.Lock()
			c.reasons = fr
			c.mu.Unlock()
		}
		return a, nil
	}
	return nil, c.apiError(http.MethodPost, path, resp)
}

// payloadError reads what it can of an unusable job payload: its id and
// token, whatever else is wrong with it.
func payloadError(body []byte, err error) *PayloadError {
	pe := &PayloadError{Err: err}
	var ids struct {
		ID    json.RawMessage `json:"id"`
		Token json.RawMessage `json:"token"`
	}
	if json.Unmarshal(body, &ids) == nil {
		var id int64
		var tok string
		if json.Unmarshal(ids.ID, &id) == nil && json.Unmarshal(ids.Token, &tok) == nil && id > 0 && tok != "" {
			pe.JobID, pe.Token = id, tok
		}
	}
	return pe
}

// ConfirmJob tells GitLab the daemon takes the job (PUT state=running):
// with two-phase job commit the job stays pending until then, and GitLab
// gives it to another runner if it never comes. On a job already running
// it is a plain keep-alive, so it is safe to repeat after a restart. It
// returns the job's status (running, or canceling); a job that is not
// GitLab's to run any more (403) is ErrJobNotRunning.
func (c *Client) ConfirmJob(ctx context.Context, id int64, jobToken string) (string, error) {
	res, err := c.UpdateJob(ctx, id, jobToken, Update{State: job.StatusRunning})
	if err != nil {
		return "", err
	}
	if !res.Accepted {
		return "", fmt.Errorf("PUT /api/v4/jobs/%d state=running: accepted but not applied (202)", id)
	}
	st := res.JobStatus
	if st == "" {
		st = job.StatusRunning // older servers send no Job-Status on PUT
	}
	if job.IsFinal(st) {
		return st, ErrJobNotRunning
	}
	return st, nil
}

// JobStatus asks GitLab (GET /job with the job token) how a job is doing:
// running or canceling. A job that is no longer running answers 401, which
// is ErrJobNotRunning.
func (c *Client) JobStatus(ctx context.Context, jobToken string) (string, error) {
	const path = "job"
	resp, err := c.do(ctx, request{method: http.MethodGet, path: path,
		header: http.Header{"Accept": {"application/json"}, "Job-Token": {jobToken}}})
	if err != nil {
		return "", err
	}
	switch resp.status {
	case http.StatusOK:
		var j struct {
			Status string `json:"status"`
		}
		if err := json.Unmarshal(resp.body, &j); err != nil || j.Status == "" {
			return "", fmt.Errorf("GET /api/v4/job: undecodable answer")
		}
		return j.Status, nil
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
		return "", ErrJobNotRunning
	}
	return "", c.apiError(http.MethodGet, path, resp)
}

// Update is a PUT /jobs/:id body.
type Update struct {
	State         string `json:"state"`
	FailureReason string `json:"failure_reason,omitempty"`
	ExitCode      int    `json:"exit_code,omitempty"`
	Output        *struct {
		Checksum string `json:"checksum,omitempty"`
		Bytesize int64  `json:"bytesize"`
	} `json:"output,omitempty"`
}

// UpdateResult is GitLab's answer to a PUT /jobs/:id.
type UpdateResult struct {
	// Accepted: 200. A 202 means "repeat after UpdateInterval".
	Accepted       bool
	JobStatus      string
	UpdateInterval time.Duration
}

// UpdateJob sends one PUT /jobs/:id. A 403 (job not running) is
// ErrJobNotRunning wrapped in the *APIError.
func (c *Client) UpdateJob(ctx context.Context, id int64, jobToken string, u Update) (*UpdateResult, error) {
	path := "jobs/" + strconv.FormatInt(id, 10)
	payload := struct {
		Token string `json:"token"`
		Info  Info   `json:"info"`
		Update
	}{jobToken, c.cfg.Info, u}
	body, _ := json.Marshal(payload)
	resp, err := c.do(ctx, request{method: http.MethodPut, path: path, body: body, jsonBody: true,
		header: http.Header{"Job-Token": {jobToken}}})
	if err != nil {
		return nil, err
	}
	res := &UpdateResult{JobStatus: resp.header.Get("Job-Status"), UpdateInterval: interval(resp.header)}
	switch resp.status {
	case http.StatusOK:
		res.Accepted = true
		return res, nil
	case http.StatusAccepted:
		return res, nil
	case http.StatusForbidden:
		return res, &notRunning{c.apiError(http.MethodPut, path, resp)}
	}
	return res, c.apiError(http.MethodPut, path, resp)
}

// notRunning is an *APIError that also matches ErrJobNotRunning.
type notRunning struct{ *APIError }

func (e *notRunning) Unwrap() []error { return []error{e.APIError, ErrJobNotRunning} }

func interval(h http.Header) time.Duration {
	if n, err := strconv.Atoi(h.Get("X-GitLab-Trace-Update-Interval")); err == nil && n > 0 {
		return min(time.Duration(n)*time.Second, 15*time.Minute)
	}
	return 0
}

// FailJob marks a job failed (PUT state=failed) with reason, repeating while
// GitLab answers 202 or fails transiently, until it is accepted or ctx ends.
// A job that is already final (403) counts as done. The reason is mapped
// to one this GitLab knows (job.MapFailureReason, with the enum its job
// payloads list), as gitlab-runner does: GitLab would store an unknown one
// as unknown_failure.
func (c *Client) FailJob(ctx context.Context, id int64, jobToken, reason string) error {
	c.mu.Lock()
	reason = job.MapFailureReason(reason, c.reasons)
	c.mu.Unlock()
	var last error
	for attempt := 0; ; attempt++ {
		res, err := c.UpdateJob(ctx, id, jobToken, Update{State: job.StatusFailed, FailureReason: reason})
		switch {
		case err == nil && res.Accepted:
			return nil
		case errors.Is(err, ErrJobNotRunning):
			return nil
		case ctx.Err() != nil:
			if last == nil {
				last = ctx.Err()
			}
			return fmt.Errorf("failing job %d: gave up: %w", id, last)
		case err != nil && !IsTransient(err):
			return fmt.Errorf("failing job %d: %w", id, err)
		}
		wait := c.retry.Backoff(attempt)
		last = err
		if err == nil {
			last = errors.New("GitLab has not accepted the final state yet (202)")
			if res.UpdateInterval > 0 {
				wait = res.UpdateInterval
			}
		}
		if backoff.Sleep(ctx, wait) != nil {
			return fmt.Errorf("failing job %d: gave up: %w", id, last)
		}
	}
}

// TraceResult is GitLab's answer to a trace append.
type TraceResult struct {
	Offset         int64 // where the next append starts
	JobStatus      string
	UpdateInterval time.Duration
}

var rangeRe = regexp.MustCompile(`^\s*\d+-(\d+)`)

// AppendTrace appends data to the job's log at offset (PATCH /jobs/:id/trace
// with Content-Range). When GitLab's log has another length (416), the data
// is appended at GitLab's end instead: the daemon's messages go after what
// the inner runner wrote. A job that is not running is ErrJobNotRunning.
func (c *Client) AppendTrace(ctx context.Context, id int64, jobToken string, offset int64, data []byte) (TraceResult, error) {
	path := "jobs/" + strconv.FormatInt(id, 10) + "/trace"
	if len(data) == 0 {
		return TraceResult{Offset: offset}, nil
	}
	for tries := 0; ; tries++ {
		resp, err := c.do(ctx, request{method: http.MethodPatch, path: path, body: data,
			header: http.Header{
				"Job-Token":     {jobToken},
				"Content-Type":  {"text/plain"},
				"Content-Range": {fmt.Sprintf("%d-%d", offset, offset+int64(len(data))-1)},
			}})
		if err != nil {
			return TraceResult{Offset: offset}, err
		}
		res := TraceResult{Offset: offset, JobStatus: resp.header.Get("Job-Status"), UpdateInterval: interval(resp.header)}
		switch resp.status {
		case http.StatusAccepted:
			res.Offset = offset + int64(len(data))
			if m := rangeRe.FindStringSubmatch(resp.header.Get("Range")); m != nil {
				if end, err := strconv.ParseInt(m[1], 10, 64); err == nil {
					res.Offset = end
				}
			}
			return res, nil
		case http.StatusRequestedRangeNotSatisfiable:
			m := rangeRe.FindStringSubmatch(resp.header.Get("Range"))
			if m == nil || tries >= 3 {
				return res, c.apiError(http.MethodPatch, path, resp)
			}
			offset, _ = strconv.ParseInt(m[1], 10, 64)
			continue
		case http.StatusForbidden, http.StatusNotFound:
			return res, &notRunning{c.apiError(http.MethodPatch, path, resp)}
		}
		return res, c.apiError(http.MethodPatch, path, resp)
	}
}

// WriteTrace is AppendTrace for callers that only need the next offset.
func (c *Client) WriteTrace(ctx context.Context, id int64, jobToken string, offset int64, data []byte) (int64, error) {
	res, err := c.AppendTrace(ctx, id, jobToken, offset, data)
	return res.Offset, err
}

// WriteTraceStatus is WriteTrace that also returns GitLab's Job-Status
// answer (running, canceling; empty when GitLab sent none).
func (c *Client) WriteTraceStatus(ctx context.Context, id int64, jobToken string, offset int64, data []byte) (int64, string, error) {
	res, err := c.AppendTrace(ctx, id, jobToken, offset, data)
	return res.Offset, res.JobStatus, err
}

// Checksum is the trace checksum GitLab expects in final updates.
func Checksum(data []byte) string { return Checksum32(crc32.ChecksumIEEE(data)) }

// Checksum32 renders a CRC32 (IEEE) as a trace checksum.
func Checksum32(crc uint32) string { return fmt.Sprintf("crc32:%08x", crc) }

// WriteTraceAt writes data to the job's log at offset without following
// GitLab's end: on 416 nothing is written and have is GitLab's log length
// (have is -1 when data was written). next is the log's end after the
// write. For a writer that must know whether someone else wrote meanwhile.
func (c *Client) WriteTraceAt(ctx context.Context, id int64, jobToken string, offset int64, data []byte) (next, have int64, jobStatus string, err error) {
	res, err := c.PatchTrace(ctx, id, jobToken, offset, data)
	var re *RangeError
	if errors.As(err, &re) {
		return offset, re.Have, res.JobStatus, nil
	}
	return res.Offset, -1, res.JobStatus, err
}

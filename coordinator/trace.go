package coordinator

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
)

// RangeError is GitLab's 416 to a trace PATCH: its log is Have bytes long,
// not what the PATCH started at. The caller resends from there.
type RangeError struct {
	*APIError
	Have int64
}

func (e *RangeError) Unwrap() error { return e.APIError }

// PatchTrace sends data as the job's log from offset (PATCH
// /jobs/:id/trace with Content-Range), once (transient answers are retried
// by the client). On 202 the result's Offset is offset+len(data). A 416 is
// a *RangeError saying how long GitLab's log is; unlike AppendTrace,
// nothing is resent: the caller owns the log and knows what to send from
// there. A 403 or 404 is ErrJobNotRunning (the APIError's JobStatus tells
// whether GitLab said why).
func (c *Client) PatchTrace(ctx context.Context, id int64, jobToken string, offset int64, data []byte) (TraceResult, error) {
	path := "jobs/" + strconv.FormatInt(id, 10) + "/trace"
	if len(data) == 0 {
		return TraceResult{Offset: offset}, nil
	}
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
		// like gitlab-runner, trust our own end rather than Range on 202
		res.Offset = offset + int64(len(data))
		return res, nil
	case http.StatusRequestedRangeNotSatisfiable:
		m := rangeRe.FindStringSubmatch(resp.header.Get("Range"))
		if m == nil {
			return res, c.apiError(http.MethodPatch, path, resp)
		}
		have, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil {
			return res, c.apiError(http.MethodPatch, path, resp)
		}
		return res, &RangeError{APIError: c.apiError(http.MethodPatch, path, resp), Have: have}
	case http.StatusForbidden, http.StatusNotFound:
		return res, &notRunning{c.apiError(http.MethodPatch, path, resp)}
	}
	return res, c.apiError(http.MethodPatch, path, resp)
}

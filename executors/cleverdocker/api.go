package cleverdocker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/internal/backoff"
)

// APIError is an error answer of the Clever Cloud API, with its Message
// body ({id, message, type}) when it had one.
type APIError struct {
	Method, Path string
	Status       int
	ID           int    // Clever's error id (9017, 4004, 5001…), 0 when absent
	Message      string // Clever's message, or the raw body
}

func (e *APIError) Error() string {
	s := fmt.Sprintf("Clever Cloud API %s %s: HTTP %d", e.Method, e.Path, e.Status)
	if e.ID != 0 {
		s += fmt.Sprintf(" (id %d)", e.ID)
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// transient tells whether an answer is worth retrying: 429, 5xx.
func (e *APIError) transient() bool {
	return e.Status == http.StatusTooManyRequests || e.Status >= 500 || e.Status == http.StatusRequestTimeout
}

// classify turns a call error into an executors error: 429/5xx/network
// are transient, other 4xx permanent; context errors pass through.
func classify(op string, err error) error {
	if err == nil {
		return nil
	}
	var ee *executors.Error
	if errors.As(err, &ee) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var ae *APIError
	if errors.As(err, &ae) && !ae.transient() {
		return executors.Permanent(op, err)
	}
	return executors.Transient(op, err)
}

func isStatus(err error, status int) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == status
}

func isCleverID(err error, id int) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.ID == id
}

// retryable: a network error or a transient answer.
func retryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.transient()
	}
	return true
}

type retryAfterError struct {
	error
	after time.Duration
}

func (e *retryAfterError) Unwrap() error { return e.error }

// client speaks to the Clever Cloud API.
type client struct {
	base   string // cc_api_url, without trailing slash
	scheme string // token, bearer
	http   *http.Client
	ua     string
	policy backoff.Policy
	// retryFor bounds the retries of one idempotent call.
	retryFor time.Duration
	log      *zap.Logger
	onCall   func() // counts calls (tests, benchmarks)
}

func (c *client) authHeader(token string) string {
	if c.scheme == "bearer" {
		return "Bearer " + token
	}
	return "token " + token
}

// do makes one request; out (if not nil) receives the JSON answer.
func (c *client) do(ctx context.Context, method, path, token string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", c.authHeader(token))
	}
	if c.ua != "" {
		req.Header.Set("User-Agent", c.ua)
	}
	if c.onCall != nil {
		c.onCall()
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// the URL holds no credential: safe to show
		return fmt.Errorf("the Clever Cloud API %s %s: %w", method, path, stripURL(err))
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("the Clever Cloud API %s %s: reading the answer: %w", method, path, err)
	}
	if resp.StatusCode >= 400 {
		ae := &APIError{Method: method, Path: strings.SplitN(path, "?", 2)[0], Status: resp.StatusCode}
		var m struct {
			ID      flexNumber `json:"id"`
			Message flexString `json:"message"`
			Error   flexString `json:"error"`
			Type    string     `json:"type"`
		}
		if json.Unmarshal(raw, &m) == nil && (m.Message != "" || m.Error != "" || m.ID != 0) {
			ae.ID = int(m.ID)
			ae.Message = truncate(firstNonEmpty(string(m.Message), string(m.Error)), 500)
		} else {
			ae.Message = truncate(strings.TrimSpace(string(raw)), 300)
		}
		if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
			if d := retryAfter(resp.Header.Get("Retry-After"), time.Now()); d > 0 {
				return &retryAfterError{ae, d}
			}
		}
		return ae
	}
	if out != nil && len(bytes.TrimSpace(raw)) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("the Clever Cloud API %s %s: unexpected answer: %w", method, path, err)
		}
	}
	return nil
}

// call is do with retries of network errors, 429 and 5xx, for idempotent
// requests (GET, PUT, DELETE), with backoff and jitter, for at most
// retryFor.
func (c *client) call(ctx context.Context, method, path, token string, body, out any) error {
	deadline := time.Now().Add(c.retryFor)
	for attempt := 0; ; attempt++ {
		err := c.do(ctx, method, path, token, body, out)
		if !retryable(err) || time.Now().After(deadline) {
			return err
		}
		wait := c.policy.Wait(attempt)
		var ra *retryAfterError
		if errors.As(err, &ra) {
			wait = max(wait, min(ra.after, 30*time.Second))
		}
		c.log.Debug("Clever Cloud API call failed; retrying", zap.String("method", method), zap.String("path", strings.SplitN(path, "?", 2)[0]),
			zap.Duration("wait", wait), zap.Error(err))
		if err := backoff.Sleep(ctx, wait); err != nil {
			return err
		}
	}
}

// retryAfter reads a Retry-After header: seconds, or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		return time.Duration(max(s, 0)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0)
	}
	return 0
}

// flexNumber decodes a JSON number, a numeric string or null (0): answers
// are read tolerantly, a field of an unexpected type does not fail the
// whole answer.
type flexNumber float64

func (n *flexNumber) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch x := v.(type) {
	case float64:
		*n = flexNumber(x)
	case string:
		f, _ := strconv.ParseFloat(strings.TrimSpace(x), 64)
		*n = flexNumber(f)
	default:
		*n = 0
	}
	return nil
}

// flexString decodes a JSON string, or a number or boolean as its text;
// null, objects and arrays are "".
type flexString string

func (s *flexString) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch x := v.(type) {
	case string:
		*s = flexString(x)
	case float64:
		*s = flexString(strconv.FormatFloat(x, 'f', -1, 64))
	case bool:
		*s = flexString(strconv.FormatBool(x))
	default:
		*s = ""
	}
	return nil
}

// flexMillis is a date in milliseconds since the epoch, as Clever sends
// creationDate; an RFC 3339 string is accepted too, anything else is 0.
type flexMillis int64

func (m *flexMillis) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*m = 0
	switch x := v.(type) {
	case float64:
		*m = flexMillis(x)
	case string:
		if t, err := time.Parse(time.RFC3339Nano, x); err == nil {
			*m = flexMillis(t.UnixMilli())
		} else if n, err := strconv.ParseInt(x, 10, 64); err == nil {
			*m = flexMillis(n)
		}
	}
	return nil
}

func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

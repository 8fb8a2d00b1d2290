// Package coordinator is the client side of GitLab's runner API: requesting
// jobs, watching them, failing them and writing to their trace. Errors are
// typed (*APIError, ErrJobNotRunning); retries with jittered exponential
// backoff happen here, bounded and interruptible by the context.
package coordinator

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/internal/backoff"
	"gitlab.com/paas-runner/paas-runner/job"
)

// Info describes this runner to GitLab (the request's info object).
type Info struct {
	Name         string          `json:"name"`
	Version      string          `json:"version"`
	Revision     string          `json:"revision"`
	Platform     string          `json:"platform"`
	Architecture string          `json:"architecture"`
	Executor     string          `json:"executor"`
	Shell        string          `json:"shell,omitempty"`
	Features     map[string]bool `json:"features"`
	Config       struct {
		Gpus string `json:"gpus"`
	} `json:"config"`
}

// Config configures a Client for one [[runners]] entry.
type Config struct {
	URL       string
	Token     string
	TLSCAFile string
	SystemID  string
	Info      Info
	UserAgent string
	Logger    *zap.Logger
	// HTTPClient overrides the transport (tests).
	HTTPClient *http.Client
	// WrapTransport, when set, wraps the transport (request metrics).
	WrapTransport func(http.RoundTripper) http.RoundTripper
	// Retry bounds the retries of 408/429/5xx answers.
	Retry RetryPolicy
	// ArtifactRetryMin and ArtifactRetryMax space the attempts of
	// artifact uploads and downloads (default 1 s doubling up to 5 s,
	// gitlab-runner's); how many attempts is gitlab-runner's rule.
	ArtifactRetryMin, ArtifactRetryMax time.Duration
	// LongPollMinInterval: after a job request Workhorse held and let go
	// with no job, the next one starts this long after it at the soonest
	// (LongPollRelease); 0 is DefaultLongPollMinInterval.
	LongPollMinInterval time.Duration
}

// RetryPolicy is an exponential backoff with full jitter.
type RetryPolicy struct {
	Attempts int           // total attempts, default 5
	Min      time.Duration // default 100ms
	Max      time.Duration // default 60s
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.Attempts <= 0 {
		p.Attempts = 5
	}
	if p.Min <= 0 {
		p.Min = 100 * time.Millisecond
	}
	if p.Max <= 0 {
		p.Max = 60 * time.Second
	}
	return p
}

// Backoff returns the wait before retry number attempt (0-based).
func (p RetryPolicy) Backoff(attempt int) time.Duration {
	p = p.withDefaults()
	return backoff.Policy{Min: p.Min, Max: p.Max}.Wait(attempt)
}

// Client talks to one GitLab instance on behalf of one runner.
type Client struct {
	base   *url.URL // …/api/v4/
	cfg    Config
	http   *http.Client
	log    *zap.Logger
	retry  RetryPolicy
	mu     sync.Mutex
	lastUp string
	// reasons: the failure_reason enum of this GitLab, as its last job
	// payload listed it (features.failure_reasons; the same for every job
	// of an instance), to map what FailJob sends.
	reasons []string
	// released: the last job request, started at lastReq, was a long
	// poll let go (jobs.go)
	released bool
	lastReq  time.Time
}

// APIError is a non-success answer from GitLab.
type APIError struct {
	Method     string
	Path       string
	Status     int
	Message    string
	JobStatus  string        // Job-Status header, when sent
	RetryAfter time.Duration // from Retry-After, when sent
}

// HTTPStatus lets callers that do not import this package read the status.
func (e *APIError) HTTPStatus() int { return e.Status }

func (e *APIError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	return fmt.Sprintf("%s %s: %d %s", e.Method, e.Path, e.Status, msg)
}

// StatusOf returns the HTTP status of an *APIError in err's chain, or 0.
func StatusOf(err error) int {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

// ErrJobNotRunning: GitLab says the job is no longer running (401 on
// GET /job, 403 "not running" on PUT/PATCH). Nothing more can be done for it.
var ErrJobNotRunning = job.ErrNotRunning

// PayloadError is a 201 whose body is not a usable job. JobID and Token are
// set when they could be read anyway, so that the job can be failed in
// GitLab instead of being left to its timeout.
type PayloadError struct {
	Err   error
	JobID int64
	Token string
}

// UnusableJob tells which job the payload was (id 0 when unknown).
func (e *PayloadError) UnusableJob() (int64, string) { return e.JobID, e.Token }

func (e *PayloadError) Error() string { return "invalid job payload: " + e.Err.Error() }
func (e *PayloadError) Unwrap() error { return e.Err }

// New validates cfg and returns a client.
func New(cfg Config) (*Client, error) {
	base, err := BaseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	hc := cfg.HTTPClient
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.ResponseHeaderTimeout = 10 * time.Minute
		tr.MaxIdleConnsPerHost = 64
		if cfg.TLSCAFile != "" {
			pem, err := os.ReadFile(cfg.TLSCAFile)
			if err != nil {
				return nil, fmt.Errorf("reading tls-ca-file: %w", err)
			}
			pool, err := x509.SystemCertPool()
			if err != nil || pool == nil {
				pool = x509.NewCertPool()
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("tls-ca-file %s: no PEM certificate found", cfg.TLSCAFile)
			}
			tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		}
		hc = &http.Client{Transport: tr, Timeout: 60 * time.Minute}
	}
	if cfg.WrapTransport != nil {
		c := *hc
		c.Transport = cfg.WrapTransport(hc.Transport)
		hc = &c
	}
	if cfg.Info.Features == nil {
		// an object, never null: GitLab declares info.features a Hash
		cfg.Info.Features = map[string]bool{}
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Client{base: base, cfg: cfg, http: hc, log: log, retry: cfg.Retry.withDefaults()}, nil
}

// BaseURL turns a configured GitLab URL into its API base (…/api/v4/),
// dropping a trailing / or /ci like gitlab-runner.
func BaseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return nil, fmt.Errorf("GitLab URL %q: %w", raw, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("GitLab URL %q: want http:// or https://", raw)
	}
	p := strings.TrimRight(u.Path, "/")
	p = strings.TrimSuffix(p, "/ci")
	u.Path = p + "/api/v4/"
	u.RawQuery, u.Fragment = "", ""
	return u, nil
}

// URL is the configured GitLab URL.
func (c *Client) URL() string { return c.cfg.URL }

type request struct {
	method   string
	path     string // relative to /api/v4/
	query    url.Values
	header   http.Header
	body     []byte
	jsonBody bool
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends r, retrying 408/429/5xx answers per the retry policy. Transport
// errors are returned at once (the caller decides whether to try again).
func (c *Client) do(ctx context.Context, r request) (*response, error) {
	u := *c.base
	u.Path += r.path
	if r.query != nil {
		u.RawQuery = r.query.Encode()
	}
	for attempt := 0; ; attempt++ {
		req, err := http.NewRequestWithContext(ctx, r.method, u.String(), bytes.NewReader(r.body))
		if err != nil {
			return nil, err
		}
		for k, vs := range r.header {
			req.Header[k] = vs
		}
		if r.jsonBody {
			req.Header.Set("Content-Type", "application/json")
		}
		req.Header.Set("User-Agent", c.userAgent())
		req.Header.Set("X-Request-Id", requestID())
		resp, err := c.http.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("%s %s: %w", r.method, "/api/v4/"+r.path, redactURLError(err))
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("%s %s: reading response: %w", r.method, "/api/v4/"+r.path, err)
		}
		if lu := resp.Header.Get("X-GitLab-Last-Update"); lu != "" {
			c.mu.Lock()
			c.lastUp = lu
			c.mu.Unlock()
		}
		out := &response{status: resp.StatusCode, header: resp.Header, body: body}
		if !retriable(resp.StatusCode) || attempt+1 >= c.retry.Attempts {
			return out, nil
		}
		wait := retryAfter(resp.Header)
		if wait <= 0 {
			wait = c.retry.Backoff(attempt)
		}
		wait = min(wait, c.retry.Max)
		c.log.Debug("retrying GitLab request", zap.String("method", r.method), zap.String("path", r.path),
			zap.Int("status", resp.StatusCode), zap.Duration("wait", wait), zap.Int("attempt", attempt+1))
		if err := backoff.Sleep(ctx, wait); err != nil {
			// Interrupted: the last answer is the most useful error.
			return out, nil
		}
	}
}

func retriable(status int) bool {
	switch status {
	case 408, 429, 500, 502, 503, 504:
		return true
	}
	return status >= 512
}

// retryAfter reads RateLimit-ResetTime (an HTTP date) or Retry-After
// (seconds or an HTTP date).
func retryAfter(h http.Header) time.Duration {
	if v := h.Get("RateLimit-ResetTime"); v != "" {
		if t, err := http.ParseTime(v); err == nil {
			return time.Until(t)
		}
	}
	if v := h.Get("Retry-After"); v != "" {
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
			return time.Duration(n) * time.Second
		}
		if t, err := http.ParseTime(v); err == nil {
			return time.Until(t)
		}
	}
	return 0
}

func requestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// redactURLError drops the URL from transport errors: it never holds a
// token here, but it makes messages long without adding anything.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func (c *Client) apiError(method, path string, resp *response) *APIError {
	e := &APIError{Method: method, Path: "/api/v4/" + path, Status: resp.status, JobStatus: resp.header.Get("Job-Status"), RetryAfter: retryAfter(resp.header)}
	var m struct {
		Message any    `json:"message"`
		Error   string `json:"error"`
	}
	if json.Unmarshal(resp.body, &m) == nil {
		switch v := m.Message.(type) {
		case string:
			e.Message = v
		case nil:
			e.Message = m.Error
		default:
			b, _ := json.Marshal(v)
			e.Message = string(b)
		}
	}
	if e.Message == "" {
		e.Message = strings.TrimSpace(string(resp.body))
		if len(e.Message) > 200 {
			e.Message = e.Message[:200] + "…"
		}
	}
	return e
}

func isJSON(h http.Header) bool {
	mt, _, err := mime.ParseMediaType(h.Get("Content-Type"))
	return err == nil && mt == "application/json"
}

// IsTransient tells whether err is worth retrying later: transport errors,
// 408/409/429 and 5xx answers.
func IsTransient(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if errors.Is(err, ErrJobNotRunning) {
		return false
	}
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status == 408 || ae.Status == 409 || ae.Status == 429 || ae.Status >= 500
	}
	var pe *PayloadError
	// Anything else is a transport error: connection refused, reset, timeout.
	return !errors.As(err, &pe)
}

package coordinator

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/internal/backoff"
)

// Attempts at artifact transfers, as gitlab-runner makes them
// (commands/helpers/artifacts_uploader.go, artifacts_downloader.go).
const (
	// uploadTries: any failure but 403 and 413 (a transport error, 5xx,
	// 4xx, a redirect) is tried again, up to 3 attempts in all.
	uploadTries = 3
	// uploadTries503: while GitLab answers 503, up to 6 attempts.
	uploadTries503 = 6
	// downloadTries: a download is tried 3 times; 401, 403 and 404 are
	// final.
	downloadTries = 3
)

// ArtifactUpload describes one upload (POST /jobs/:id/artifacts).
type ArtifactUpload struct {
	Filename string // form file name, e.g. artifacts.zip
	Type     string // archive, junit, …
	Format   string // zip, gzip, raw
	ExpireIn string
	// Retrying, when set, hears of each failed attempt that will be
	// tried again (for the job log).
	Retrying func(err error, wait time.Duration)
}

// ArtifactBody gives the whole body of an upload, from its first byte;
// it is called once per attempt.
type ArtifactBody func() (io.Reader, error)

// UploadArtifacts sends body as the job's artifacts, retrying like
// gitlab-runner: 3 attempts, 6 while GitLab answers 503, spaced by
// Config.ArtifactRetryMin doubling up to ArtifactRetryMax (Retry-After
// wins when sent). 403 (job not running, bad token) and 413 (too large)
// are final. A 307 or 308 answer moves the upload to the scheme and host
// of its Location, same API path (like gitlab-runner), and the body is
// sent again; the job token goes along only if that is GitLab's own host
// (same scheme, host and port, or the same host upgraded to https).
func (c *Client) UploadArtifacts(ctx context.Context, id int64, jobToken string, a ArtifactUpload, body ArtifactBody) error {
	q := url.Values{"artifact_format": {a.Format}, "artifact_type": {a.Type}}
	if a.ExpireIn != "" {
		q.Set("expire_in", a.ExpireIn)
	}
	path := "jobs/" + strconv.FormatInt(id, 10) + "/artifacts"
	base := *c.base
	withToken := true
	for tries := 1; ; tries++ {
		u := base
		u.Path += path
		u.RawQuery = q.Encode()
		status, loc, err := c.uploadOnce(ctx, u.String(), path, jobToken, withToken, a.Filename, body)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !withToken && (status == http.StatusUnauthorized || status == http.StatusForbidden) {
			err = fmt.Errorf("%w (the upload was redirected to %s, where the job token is not sent)", err, base.Host)
		}
		if status == http.StatusForbidden || status == http.StatusRequestEntityTooLarge {
			return err
		}
		if loc != nil {
			from := base
			base = url.URL{Scheme: loc.Scheme, Host: loc.Host, Path: "/api/v4/"}
			withToken = withToken && tokenMayGo(&from, &base)
			c.log.Info("artifacts upload redirected", logURL("location", loc), logURL("new_url", &base))
		}
		max := uploadTries
		if status == http.StatusServiceUnavailable {
			max = uploadTries503
		}
		if tries >= max {
			if tries > 1 {
				return fmt.Errorf("%w (%d attempts)", err, tries)
			}
			return err
		}
		wait := c.artifactWait(tries-1, err)
		if a.Retrying != nil {
			a.Retrying(err, wait)
		}
		if err := backoff.Sleep(ctx, wait); err != nil {
			return err
		}
	}
}

// uploadOnce makes one attempt. It returns the status (0 for a transport
// error), the Location of a 307/308 and the error (nil on 201).
func (c *Client) uploadOnce(ctx context.Context, rawURL, path, jobToken string, withToken bool, filename string, body ArtifactBody) (int, *url.URL, error) {
	src, err := body()
	if err != nil {
		return 0, nil, fmt.Errorf("reading the artifacts: %w", err)
	}
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	done := make(chan struct{})
	go func() {
		defer close(done)
		part, err := mw.CreateFormFile("file", filename)
		if err == nil {
			_, err = io.Copy(part, src)
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	defer func() { pr.Close(); <-done }()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, rawURL, pr)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	if withToken {
		req.Header.Set("Job-Token", jobToken)
	}
	req.Header.Set("User-Agent", c.userAgent())
	req.Header.Set("X-Request-Id", requestID())
	hc := *c.http
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("uploading artifacts: %w", redactURLError(err))
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode == http.StatusCreated {
		return resp.StatusCode, nil, nil
	}
	apiErr := c.apiError(http.MethodPost, path, &response{status: resp.StatusCode, header: resp.Header, body: b})
	if resp.StatusCode == http.StatusTemporaryRedirect || resp.StatusCode == http.StatusPermanentRedirect {
		if loc, lerr := resp.Location(); lerr == nil && (loc.Scheme == "http" || loc.Scheme == "https") && loc.Host != "" {
			return resp.StatusCode, loc, apiErr
		}
		apiErr.Message = "redirect without a usable Location"
	}
	return resp.StatusCode, nil, apiErr
}

// artifactWait is the wait before retry number n (0-based) of a transfer.
func (c *Client) artifactWait(n int, err error) time.Duration {
	p := backoff.Policy{Min: c.cfg.ArtifactRetryMin, Max: c.cfg.ArtifactRetryMax}
	if p.Min <= 0 {
		p.Min = time.Second
	}
	if p.Max <= 0 {
		p.Max = 5 * time.Second
	}
	var ae *APIError
	if errors.As(err, &ae) && ae.RetryAfter > 0 {
		return min(ae.RetryAfter, c.retry.Max)
	}
	return p.Wait(n)
}

// DownloadFile is where a download goes: truncated before each attempt.
// *os.File is one.
type DownloadFile interface {
	io.Writer
	io.Seeker
	Truncate(size int64) error
}

// DownloadOptions tune DownloadArtifacts.
type DownloadOptions struct {
	// DirectDownload asks GitLab, on the first attempt, to redirect to
	// its object storage rather than proxy the file
	// (?direct_download=true, gitlab-runner's FF_USE_DIRECT_DOWNLOAD);
	// later attempts go through GitLab.
	DirectDownload bool
	// Retrying, when set, hears of each failed attempt to be tried again.
	Retrying func(err error, wait time.Duration)
}

// DownloadArtifacts fetches a job's artifacts archive (GET
// /jobs/:id/artifacts) with the token the dependency names, into f. Like
// gitlab-runner it makes 3 attempts; 401, 403 and 404 are final.
// Redirects are followed; one to another host (object storage) does not
// carry the job token.
func (c *Client) DownloadArtifacts(ctx context.Context, id int64, jobToken string, opt DownloadOptions, f DownloadFile) error {
	for tries := 1; ; tries++ {
		status, err := c.downloadOnce(ctx, id, jobToken, opt.DirectDownload && tries == 1, f)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if status == http.StatusUnauthorized || status == http.StatusForbidden || status == http.StatusNotFound {
			return err
		}
		if tries >= downloadTries {
			return fmt.Errorf("%w (%d attempts)", err, tries)
		}
		wait := c.artifactWait(tries-1, err)
		if opt.Retrying != nil {
			opt.Retrying(err, wait)
		}
		if err := backoff.Sleep(ctx, wait); err != nil {
			return err
		}
	}
}

func (c *Client) downloadOnce(ctx context.Context, id int64, jobToken string, direct bool, f DownloadFile) (int, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	if err := f.Truncate(0); err != nil {
		return 0, err
	}
	path := "jobs/" + strconv.FormatInt(id, 10) + "/artifacts"
	u := *c.base
	u.Path += path
	if direct {
		u.RawQuery = url.Values{"direct_download": {"true"}}.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Job-Token", jobToken)
	req.Header.Set("User-Agent", c.userAgent())
	req.Header.Set("X-Request-Id", requestID())
	resp, err := c.tokenSafeHTTP().Do(req)
	if err != nil {
		return 0, fmt.Errorf("downloading artifacts of job %d: %w", id, redactURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		e := c.apiError(http.MethodGet, path, &response{status: resp.StatusCode, header: resp.Header, body: b})
		if m := storageError(b); m != "" {
			e.Message = "object storage: " + m
		}
		return resp.StatusCode, e
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		return resp.StatusCode, fmt.Errorf("downloading artifacts of job %d: %w", id, err)
	}
	return resp.StatusCode, nil
}

// storageError reads the XML error of an object storage (S3, GCS and
// Azure share its shape), as gitlab-runner does: "code: …, message: …",
// or "" when b is not one.
func storageError(b []byte) string {
	var e struct {
		XMLName xml.Name `xml:"Error"`
		Code    string   `xml:"Code"`
		Message string   `xml:"Message"`
	}
	if xml.Unmarshal(b, &e) != nil || (e.Code == "" && e.Message == "") {
		return ""
	}
	parts := []string{}
	if e.Code != "" {
		parts = append(parts, "code: "+e.Code)
	}
	if e.Message != "" {
		parts = append(parts, "message: "+e.Message)
	}
	return strings.Join(parts, ", ")
}

// tokenSafeHTTP is the client's HTTP client whose redirects to another
// host (object storage, say) carry no credentials: the job token belongs
// to the GitLab host only. Go drops Authorization itself on such a
// redirect, but not Job-Token.
func (c *Client) tokenSafeHTTP() *http.Client {
	hc := *c.http
	next := hc.CheckRedirect
	hc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		if !tokenMayGo(via[0].URL, req.URL) {
			for _, h := range []string{"Job-Token", "Private-Token", "Authorization", "Cookie"} {
				req.Header.Del(h)
			}
		}
		if next != nil {
			return next(req, via)
		}
		return nil
	}
	return &hc
}

// tokenMayGo tells whether a credential for from may be sent to to: the
// same origin, or the same host name moving from http to https on its
// default port (the usual redirect of a GitLab to TLS).
func tokenMayGo(from, to *url.URL) bool {
	if sameOrigin(from, to) {
		return true
	}
	return from.Scheme == "http" && to.Scheme == "https" && strings.EqualFold(from.Hostname(), to.Hostname()) &&
		(to.Port() == "" || to.Port() == "443")
}

// sameOrigin compares scheme, host and port (default ports made explicit).
func sameOrigin(a, b *url.URL) bool {
	port := func(u *url.URL) string {
		if p := u.Port(); p != "" {
			return p
		}
		return map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	return a.Scheme == b.Scheme && strings.EqualFold(a.Hostname(), b.Hostname()) && port(a) == port(b)
}

// logURL logs u without its query (a presigned URL's signature) or user.
func logURL(key string, u *url.URL) zap.Field {
	c := *u
	c.RawQuery, c.User, c.Fragment = "", nil, ""
	return zap.String(key, c.String())
}

func (c *Client) userAgent() string {
	if c.cfg.UserAgent != "" {
		return c.cfg.UserAgent
	}
	return "paas-runner"
}

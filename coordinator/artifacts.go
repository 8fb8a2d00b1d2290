package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// ArtifactUpload describes one upload (POST /jobs/:id/artifacts).
type ArtifactUpload struct {
	Filename string // form file name, e.g. artifacts.zip
	Type     string // archive, junit, …
	Format   string // zip, gzip, raw
	ExpireIn string
}

// UploadArtifacts streams body as the job's artifacts. 307 redirects are
// followed to the given host, like gitlab-runner. Not retried: the body is
// a stream.
func (c *Client) UploadArtifacts(ctx context.Context, id int64, jobToken string, a ArtifactUpload, body io.Reader) error {
	q := url.Values{"artifact_format": {a.Format}, "artifact_type": {a.Type}}
	if a.ExpireIn != "" {
		q.Set("expire_in", a.ExpireIn)
	}
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		part, err := mw.CreateFormFile("file", a.Filename)
		if err == nil {
			_, err = io.Copy(part, body)
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	u := *c.base
	u.Path += "jobs/" + strconv.FormatInt(id, 10) + "/artifacts"
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), pr)
	if err != nil {
		pr.Close()
		return err
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set("Job-Token", jobToken)
	req.Header.Set("User-Agent", c.userAgent())
	resp, err := c.tokenSafeHTTP().Do(req)
	if err != nil {
		return fmt.Errorf("uploading artifacts: %w", redactURLError(err))
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode == http.StatusCreated {
		return nil
	}
	return c.apiError(http.MethodPost, "jobs/"+strconv.FormatInt(id, 10)+"/artifacts", &response{status: resp.StatusCode, header: resp.Header, body: b})
}

// DownloadArtifacts fetches a job's artifacts archive (GET
// /jobs/:id/artifacts) with the token the dependency names, into w.
func (c *Client) DownloadArtifacts(ctx context.Context, id int64, jobToken string, w io.Writer) error {
	u := *c.base
	u.Path += "jobs/" + strconv.FormatInt(id, 10) + "/artifacts"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Job-Token", jobToken)
	req.Header.Set("User-Agent", c.userAgent())
	resp, err := c.tokenSafeHTTP().Do(req)
	if err != nil {
		return fmt.Errorf("downloading artifacts of job %d: %w", id, redactURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return c.apiError(http.MethodGet, "jobs/"+strconv.FormatInt(id, 10)+"/artifacts", &response{status: resp.StatusCode, header: resp.Header, body: b})
	}
	_, err = io.Copy(w, resp.Body)
	return err
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
		if !sameOrigin(req.URL, via[0].URL) {
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

func (c *Client) userAgent() string {
	if c.cfg.UserAgent != "" {
		return c.cfg.UserAgent
	}
	return "paas-runner"
}

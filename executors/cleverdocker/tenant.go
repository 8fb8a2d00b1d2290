package cleverdocker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/internal/backoff"
	"gitlab.com/paas-runner/paas-runner/job"
)

// tenant is an organisation and its API token.
type tenant struct {
	orgaID, token string
	fetched       time.Time
}

// tenant returns the organisation of a job: the fixed one, or (multi-
// tenant) the one in the custom attributes of its top-level GitLab group,
// cached for TenantTTL. A tenant misconfiguration is a permanent error of
// that job only.
func (e *Executor) tenant(ctx context.Context, ns string) (tenant, error) {
	if !e.opts.MultiTenant {
		return tenant{orgaID: e.opts.OrgaID, token: e.opts.Token}, nil
	}
	if ns == "" {
		return tenant{}, tenantError(fmt.Errorf("multi-tenant runner: the job has no %s to find its Clever Cloud organisation", NamespaceVariable))
	}
	e.tenMu.Lock()
	t, ok := e.tenants[ns]
	e.tenMu.Unlock()
	if ok && time.Since(t.fetched) < e.opts.TenantTTL {
		return t, nil
	}
	t, err := e.fetchTenant(ctx, ns)
	if err != nil {
		return tenant{}, err
	}
	e.tenMu.Lock()
	e.tenants[ns] = t
	e.tenMu.Unlock()
	return t, nil
}

func tenantError(err error) error {
	return &executors.Error{Op: "find-orga", Permanent: true, FailureReason: job.ConfigurationError, Err: err}
}

// forget drops a cached tenant (its token was refused).
func (e *Executor) forget(ns string) {
	e.tenMu.Lock()
	delete(e.tenants, ns)
	e.tenMu.Unlock()
}

func (e *Executor) fetchTenant(ctx context.Context, ns string) (tenant, error) {
	u := strings.TrimRight(e.opts.GitLabURL, "/") + "/api/v4/groups/" + url.PathEscape(ns) + "/custom_attributes"
	policy := backoff.Policy{Min: e.opts.RetryMin, Max: e.opts.RetryMax}
	deadline := time.Now().Add(e.opts.RetryFor)
	for attempt := 0; ; attempt++ {
		t, retry, err := e.fetchTenantOnce(ctx, u, ns)
		if !retry || time.Now().After(deadline) {
			return t, err
		}
		e.log.Debug("reading the group's custom attributes failed; retrying", zap.String("namespace", ns), zap.Error(err))
		if err := backoff.Sleep(ctx, policy.Wait(attempt)); err != nil {
			return tenant{}, err
		}
	}
}

func (e *Executor) fetchTenantOnce(ctx context.Context, u, ns string) (tenant, bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return tenant{}, false, tenantError(err)
	}
	req.Header.Set("PRIVATE-TOKEN", e.opts.AttributesToken)
	if e.opts.UserAgent != "" {
		req.Header.Set("User-Agent", e.opts.UserAgent)
	}
	resp, err := e.gl.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return tenant{}, false, ctx.Err()
		}
		return tenant{}, true, executors.Transient("find-orga", fmt.Errorf("reading the custom attributes of GitLab group %q: %w", ns, stripURL(err)))
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return tenant{}, false, tenantError(fmt.Errorf("GitLab group %q not found (HTTP 404) while looking for its Clever Cloud organisation", ns))
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return tenant{}, false, tenantError(fmt.Errorf("GitLab refused to read the custom attributes of group %q (HTTP %d): cc_gitlab_namespace_attributes_token must be an administrator's", ns, resp.StatusCode))
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return tenant{}, true, executors.Transient("find-orga", fmt.Errorf("reading the custom attributes of GitLab group %q: HTTP %d", ns, resp.StatusCode))
	case resp.StatusCode >= 400:
		return tenant{}, false, tenantError(fmt.Errorf("reading the custom attributes of GitLab group %q: HTTP %d", ns, resp.StatusCode))
	}
	var attrs []struct {
		Key   string `json:"key"`
		Value string `json:"value"`
	}
	if err := json.Unmarshal(raw, &attrs); err != nil {
		return tenant{}, true, executors.Transient("find-orga", fmt.Errorf("custom attributes of GitLab group %q: %w", ns, err))
	}
	t := tenant{fetched: time.Now()}
	for _, a := range attrs {
		switch a.Key {
		case e.opts.OrgaIDAttribute:
			t.orgaID = a.Value
		case e.opts.OrgaTokenAttribute:
			t.token = a.Value
		}
	}
	var missing []string
	if t.orgaID == "" {
		missing = append(missing, e.opts.OrgaIDAttribute)
	}
	if t.token == "" {
		missing = append(missing, e.opts.OrgaTokenAttribute)
	}
	if len(missing) > 0 {
		return tenant{}, false, tenantError(fmt.Errorf("GitLab group %q has no custom attribute %s: its Clever Cloud organisation is not configured", ns, strings.Join(missing, " nor ")))
	}
	return t, false, nil
}

// withTenant runs fn with the tenant's token. Multi-tenant, a token that
// Clever refuses (401, 403) may have been changed in GitLab meanwhile: the
// tenant is read again and fn retried once with the new token.
func (e *Executor) withTenant(ctx context.Context, t *tenant, ns string, fn func(token string) error) error {
	err := fn(t.token)
	if !e.opts.MultiTenant || !(isStatus(err, http.StatusUnauthorized) || isStatus(err, http.StatusForbidden)) {
		return err
	}
	e.forget(ns)
	nt, terr := e.tenant(ctx, ns)
	if terr != nil {
		return errors.Join(err, terr)
	}
	if nt.token == t.token && nt.orgaID == t.orgaID {
		return fmt.Errorf("the Clever Cloud token of GitLab group %q (custom attribute %s) was refused: %w", ns, e.opts.OrgaTokenAttribute, err)
	}
	*t = nt
	return fn(t.token)
}

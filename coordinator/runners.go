package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// RunnerCredentials is what GitLab returns when a runner is registered or
// verified.
type RunnerCredentials struct {
	ID             int64      `json:"id"`
	Token          string     `json:"token"`
	TokenExpiresAt *time.Time `json:"token_expires_at"`
}

// VerifyRunner checks the client's runner authentication token (POST
// /runners/verify). It also sends the system_id and info, so GitLab records
// the runner manager and its features at once. A bad token is a 403
// *APIError.
func (c *Client) VerifyRunner(ctx context.Context) (*RunnerCredentials, error) {
	req := map[string]any{"token": c.cfg.Token, "info": c.cfg.Info}
	if c.cfg.SystemID != "" {
		// an empty system_id would name a runner manager ""; without one
		// GitLab uses its legacy manager, as gitlab-runner's omitempty does
		req["system_id"] = c.cfg.SystemID
	}
	body, _ := json.Marshal(req)
	const path = "runners/verify"
	resp, err := c.do(ctx, request{method: http.MethodPost, path: path, body: body, jsonBody: true,
		header: http.Header{"Accept": {"application/json"}}})
	if err != nil {
		return nil, err
	}
	if resp.status != http.StatusOK {
		return nil, c.apiError(http.MethodPost, path, resp)
	}
	creds := &RunnerCredentials{Token: c.cfg.Token}
	// Old servers answer a plain "200".
	if len(resp.body) > 0 && resp.body[0] == '{' {
		if err := json.Unmarshal(resp.body, creds); err != nil {
			return nil, fmt.Errorf("POST /api/v4/runners/verify: undecodable answer: %w", err)
		}
		if creds.Token == "" {
			creds.Token = c.cfg.Token
		}
	}
	return creds, nil
}

// Registration is a legacy registration request (registration token).
type Registration struct {
	Description string
	Tags        []string
	RunUntagged bool
	Locked      bool
	Paused      bool
	AccessLevel string // not_protected or ref_protected; empty: GitLab's default
}

// RegisterRunner creates a runner with a legacy registration token (POST
// /runners). The client's token is the registration token.
func (c *Client) RegisterRunner(ctx context.Context, r Registration) (*RunnerCredentials, error) {
	req := map[string]any{
		"token":        c.cfg.Token,
		"description":  r.Description,
		"info":         c.cfg.Info,
		"run_untagged": r.RunUntagged,
		"locked":       r.Locked,
		"paused":       r.Paused,
	}
	if len(r.Tags) > 0 {
		req["tag_list"] = strings.Join(r.Tags, ",")
	}
	if r.AccessLevel != "" {
		req["access_level"] = r.AccessLevel
	}
	body, _ := json.Marshal(req)
	const path = "runners"
	resp, err := c.do(ctx, request{method: http.MethodPost, path: path, body: body, jsonBody: true,
		header: http.Header{"Accept": {"application/json"}}})
	if err != nil {
		return nil, err
	}
	if resp.status != http.StatusCreated {
		return nil, c.apiError(http.MethodPost, path, resp)
	}
	var creds RunnerCredentials
	if err := json.Unmarshal(resp.body, &creds); err != nil || creds.Token == "" {
		return nil, fmt.Errorf("POST /api/v4/runners: answer without a runner token")
	}
	return &creds, nil
}

// UnregisterRunner deletes the runner of the client's token: for glrt-
// tokens only this runner manager (DELETE /runners/managers, the runner
// itself is managed in GitLab's UI), otherwise the whole runner (DELETE
// /runners). A token GitLab no longer knows is a 403 *APIError.
func (c *Client) UnregisterRunner(ctx context.Context) error {
	path := "runners"
	req := map[string]any{"token": c.cfg.Token}
	if strings.HasPrefix(c.cfg.Token, "glrt-") {
		path = "runners/managers"
		req["system_id"] = c.cfg.SystemID
	}
	body, _ := json.Marshal(req)
	resp, err := c.do(ctx, request{method: http.MethodDelete, path: path, body: body, jsonBody: true})
	if err != nil {
		return err
	}
	if resp.status != http.StatusNoContent && resp.status != http.StatusOK {
		return c.apiError(http.MethodDelete, path, resp)
	}
	return nil
}

// Package cleverdocker is the clever-docker executor: each job runs on its
// own Clever Cloud application (instanceLifetime TASK, Docker runtime),
// deployed by a git push of a build context whose Dockerfile starts the
// inner runner (exec-fetched-job) of inner_image with the job. It follows
// Heptapod PAAS Runner's clever-docker (names, create body, env, push to
// master, handle shape), and improves on it: products are cached and
// refreshed when an answer says they are stale, a retried create adopts
// the application made before a crash, errors are classified transient or
// permanent, and orphans are reaped.
package cleverdocker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker"
	"gitlab.com/paas-runner/paas-runner/executors/s3cache"
	"gitlab.com/paas-runner/paas-runner/internal/backoff"
	"gitlab.com/paas-runner/paas-runner/job"
)

// Job variables read by the executor.
const (
	FlavorVariable    = "CI_CLEVER_CLOUD_FLAVOR"
	NamespaceVariable = "CI_PROJECT_ROOT_NAMESPACE"
)

// MainAPI is Clever Cloud's API (OAuth and Heptapod's "token" scheme);
// BridgeAPI is the API bridge, the one that takes API tokens (Bearer).
const (
	MainAPI   = "https://api.clever-cloud.com/v2"
	BridgeAPI = "https://api-bridge.clever-cloud.com/v2"
)

// Options configure one runner's clever-docker executor (the cc_* keys).
type Options struct {
	APIURL     string // cc_api_url, e.g. https://api.clever-cloud.com/v2
	AuthScheme string // token (Heptapod) or bearer (API tokens)
	Zone       string
	// DefaultFlavor and MaxFlavor are short flavor names (M, XL).
	DefaultFlavor string
	MaxFlavor     string
	RepoTimeout   time.Duration // cc_deployment_repo_timeout
	RepoWaitStep  time.Duration // cc_deployment_repo_wait_step

	// Fixed organisation…
	OrgaID, Token string
	// …or multi-tenant: the organisation and its token are custom
	// attributes of the job's top-level GitLab group.
	MultiTenant        bool
	GitLabURL          string // the runner's url
	AttributesToken    string // cc_gitlab_namespace_attributes_token
	OrgaIDAttribute    string
	OrgaTokenAttribute string

	AuthUser         string // git push user (Heptapod: Jenkins)
	InstanceVariant  string
	FlavorContext    string
	FlavorNamePrefix string
	ExtraEnv         map[string]string

	// InnerImage is the image the host runs (FROM of the pushed
	// Dockerfile), answering Heptapod's entry point.
	InnerImage string

	// RunnerID names applications (hpd-job-<RunnerID>-<job id>);
	// RunnerLabel and RunnerURL go to the inner runner's runner.toml
	// with Inner (forwarded [[runners]] keys).
	RunnerID    string
	RunnerLabel string
	RunnerURL   string
	Inner       map[string]any
	// TLSCAFile is the runner's tls-ca-file: it is pushed with the job
	// (localdocker.CAFile, named by runner.toml's tls-ca-file) for a
	// GitLab behind a private CA. Read once by New.
	TLSCAFile string
	// SystemID tags applications with the daemon, so that reaping never
	// touches another daemon's.
	SystemID string
	// Cache, with an S3 [runners.cache], presigns each job's cache URLs:
	// hosts get the URLs, never the S3 credentials.
	Cache *s3cache.Presigner

	// PushTimeout bounds one git push of a job (default 5 min): a push
	// host that stops answering fails the attempt (transient) instead
	// of holding the job.
	PushTimeout time.Duration
	// ProductsTTL and TenantTTL bound the caches (default 1 h, 5 min).
	ProductsTTL time.Duration
	TenantTTL   time.Duration
	// RetryMin/RetryMax space retries of one API call; RetryFor bounds
	// them (defaults 500 ms, 10 s, 90 s).
	RetryMin, RetryMax, RetryFor time.Duration

	HTTPClient *http.Client
	UserAgent  string
	Logger     *zap.Logger
	// OnAPICall, if set, is called for each Clever API request.
	OnAPICall func()
}

// Executor is the clever-docker executor.
type Executor struct {
	opts Options
	api  *client
	gl   *http.Client
	log  *zap.Logger

	prodMu    sync.Mutex
	prod      *products
	lastForce time.Time

	tenMu   sync.Mutex
	tenants map[string]tenant // by namespace

	ca []byte // Options.TLSCAFile's content
}

var (
	_ executors.Executor  = (*Executor)(nil)
	_ executors.Reaper    = (*Executor)(nil)
	_ executors.Inspector = (*Executor)(nil)
)

// New checks the options; it makes no network call.
func New(opts Options) (*Executor, error) {
	var errs []string
	u, err := url.Parse(opts.APIURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Sprintf("API URL %q is not an http(s) URL", opts.APIURL))
	}
	if opts.AuthScheme == "" {
		opts.AuthScheme = "token"
	}
	if opts.AuthScheme != "token" && opts.AuthScheme != "bearer" {
		errs = append(errs, fmt.Sprintf("auth scheme %q: want token or bearer", opts.AuthScheme))
	}
	if opts.MultiTenant {
		if opts.GitLabURL == "" || opts.AttributesToken == "" {
			errs = append(errs, "multi-tenant needs the GitLab URL and a token reading group custom attributes")
		}
	} else if opts.OrgaID == "" || opts.Token == "" {
		errs = append(errs, "an organisation id and its token are required unless multi-tenant")
	}
	if opts.InnerImage == "" {
		errs = append(errs, "inner_image is required: the image Clever Cloud runs the job with")
	}
	if opts.InstanceVariant != "" && !uuidRe.MatchString(strings.ToLower(opts.InstanceVariant)) {
		errs = append(errs, fmt.Sprintf("cc_instance_variant_uuid %q is not a UUID", opts.InstanceVariant))
	}
	if opts.RunnerID == "" || opts.RunnerURL == "" {
		errs = append(errs, "runner id and URL are required")
	}
	ca, err := localdocker.ReadCA(opts.TLSCAFile)
	if err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return nil, errors.New(strings.Join(errs, "; "))
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&opts.RepoTimeout, 20*time.Second)
	def(&opts.RepoWaitStep, 2*time.Second)
	def(&opts.PushTimeout, 5*time.Minute)
	def(&opts.ProductsTTL, time.Hour)
	def(&opts.TenantTTL, 5*time.Minute)
	def(&opts.RetryMin, 500*time.Millisecond)
	def(&opts.RetryMax, 10*time.Second)
	def(&opts.RetryFor, 90*time.Second)
	if opts.Zone == "" {
		opts.Zone = "par"
	}
	if opts.DefaultFlavor == "" {
		opts.DefaultFlavor = "M"
	}
	if opts.AuthUser == "" {
		opts.AuthUser = "Jenkins"
	}
	if opts.FlavorContext == "" {
		opts.FlavorContext = "heptapod-runner"
	}
	if opts.FlavorNamePrefix == "" {
		opts.FlavorNamePrefix = opts.FlavorContext + "-"
	}
	if opts.OrgaIDAttribute == "" {
		opts.OrgaIDAttribute = "cc_orga_id"
	}
	if opts.OrgaTokenAttribute == "" {
		opts.OrgaTokenAttribute = "cc_orga_token"
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	if opts.AuthScheme == "bearer" && strings.TrimRight(opts.APIURL, "/") == MainAPI {
		// API tokens are only accepted through the bridge, which proxies
		// /v2 (the main API refuses them)
		log.Info("cc_auth_scheme bearer: using the Clever Cloud API bridge", zap.String("cc_api_url", BridgeAPI))
		opts.APIURL = BridgeAPI
	}
	hc := opts.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: 60 * time.Second}
	}
	gl := hc
	if opts.HTTPClient == nil && ca != nil {
		// multi-tenant: the group attributes come from GitLab, behind
		// the runner's private CA
		gl = &http.Client{Timeout: 60 * time.Second, Transport: caTransport(ca)}
	}
	return &Executor{
		opts: opts, log: log, gl: gl, tenants: map[string]tenant{}, ca: ca,
		api: &client{base: strings.TrimRight(opts.APIURL, "/"), scheme: opts.AuthScheme, http: hc, ua: opts.UserAgent,
			policy: backoff.Policy{Min: opts.RetryMin, Max: opts.RetryMax}, retryFor: opts.RetryFor, log: log, onCall: opts.OnAPICall},
	}, nil
}

// Check fetches the products and checks the configured flavors against
// them: a clear error at start for a wrong cc_api_url or flavor name. One
// attempt: a Clever Cloud that is down does not delay the start.
func (e *Executor) Check(ctx context.Context) error {
	p, err := e.fetchProducts(ctx, false, true)
	if err != nil {
		return err
	}
	for _, f := range []struct{ key, name string }{{"cc_default_flavor", e.opts.DefaultFlavor}, {"cc_max_flavor", e.opts.MaxFlavor}} {
		if f.name == "" {
			continue
		}
		if _, ok := p.flavors[f.name]; !ok {
			return fmt.Errorf("%s %q is not an available flavor (available: %s)", f.key, f.name, strings.Join(p.names(""), ", "))
		}
	}
	return e.checkZone(ctx)
}

// checkZone checks cc_zone against GET /products/zones. A server without
// that list (or failing) is not an error: the create would say.
func (e *Executor) checkZone(ctx context.Context) error {
	var zones []struct {
		Name flexString `json:"name"`
	}
	if err := e.api.do(ctx, http.MethodGet, "/products/zones", "", nil, &zones); err != nil {
		e.log.Debug("could not list the Clever Cloud zones", zap.Error(err))
		return nil
	}
	var names []string
	for _, z := range zones {
		if string(z.Name) == e.opts.Zone {
			return nil
		}
		if z.Name != "" {
			names = append(names, string(z.Name))
		}
	}
	if len(names) == 0 {
		return nil
	}
	sort.Strings(names)
	return fmt.Errorf("cc_zone %q is not a Clever Cloud zone (zones: %s)", e.opts.Zone, strings.Join(names, ", "))
}

// handle is what the state file records of a host. Its keys extend
// Heptapod's Clever resource ({id, gitlab_namespace, weight, launched,
// deploy_url}), so Heptapod state files decommission; it never holds a
// credential.
type handle struct {
	Name            string  `json:"name,omitempty"`
	JobID           int64   `json:"job_id,omitempty"`
	ID              string  `json:"id,omitempty"`
	OrgaID          string  `json:"orga_id,omitempty"`
	GitLabNamespace *string `json:"gitlab_namespace"`
	Flavor          string  `json:"flavor,omitempty"`
	Weight          float64 `json:"weight,omitempty"`
	DeployURL       string  `json:"deploy_url,omitempty"`
	Launched        bool    `json:"launched"`
}

func decodeHandle(h executors.Handle) (handle, error) {
	var hd handle
	if err := json.Unmarshal(h, &hd); err != nil || (hd.Name == "" && hd.ID == "") {
		return handle{}, executors.BadHandle(h, "not a clever-docker handle")
	}
	if hd.ID != "" && !strings.HasPrefix(hd.ID, "app_") {
		return handle{}, executors.BadHandle(h, "application id does not start with app_")
	}
	return hd, nil
}

func (hd handle) encode() executors.Handle {
	b, _ := json.Marshal(hd)
	return b
}

func (hd handle) namespace() string {
	if hd.GitLabNamespace == nil {
		return ""
	}
	return *hd.GitLabNamespace
}

// Prefix is the name prefix of this runner's applications (Heptapod's).
func (e *Executor) Prefix() string { return "hpd-job-" + e.opts.RunnerID + "-" }

// AppName is the application name of a job.
func (e *Executor) AppName(jobID int64) string { return fmt.Sprintf("%s%d", e.Prefix(), jobID) }

func (e *Executor) systemTag() string { return "paas-runner-system-" + e.opts.SystemID }

// description is the description of a job's application. It carries the
// daemon's system tag: Clever's application listing (ApplicationView) has
// no tags, but has the description.
func (e *Executor) description(jobID int64) string {
	return fmt.Sprintf("paas-runner job %d of runner %s (%s)", jobID, e.opts.RunnerID, e.systemTag())
}

var uuidRe = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// systemRe finds a system tag in a description.
var systemRe = regexp.MustCompile(`paas-runner-system-[A-Za-z0-9_]+`)

// Plan names the application after the runner and job, and records the
// job's flavor and (multi-tenant) top-level namespace. No network call.
func (e *Executor) Plan(_ context.Context, j executors.Job) (executors.Handle, error) {
	var p struct {
		Variables job.Variables `json:"variables"`
	}
	if len(j.Payload) > 0 {
		if err := json.Unmarshal(j.Payload, &p); err != nil {
			return nil, executors.Permanent("plan", fmt.Errorf("job payload: %w", err))
		}
	}
	hd := handle{Name: e.AppName(j.ID), JobID: j.ID, Flavor: firstNonEmpty(p.Variables.Get(FlavorVariable), e.opts.DefaultFlavor)}
	if e.opts.MultiTenant {
		ns := p.Variables.Get(NamespaceVariable)
		hd.GitLabNamespace = &ns
	}
	return hd.encode(), nil
}

// Provision creates the job's application, or adopts the one a previous
// attempt created (found by name), then sets its environment. The returned
// handle has the application id, organisation and deploy URL.
func (e *Executor) Provision(ctx context.Context, h executors.Handle, j executors.Job) (executors.Handle, error) {
	hd, err := decodeHandle(h)
	if err != nil {
		return nil, err
	}
	if hd.ID != "" {
		return h, nil // provisioned before: Launch checks the app
	}
	fl, p, err := e.flavorFor(ctx, hd.Flavor)
	if err != nil {
		return nil, err
	}
	ten, err := e.tenant(ctx, hd.namespace())
	if err != nil {
		return nil, err
	}
	hd.OrgaID, hd.Weight = ten.orgaID, fl.weight()
	a, err := e.findOrCreate(ctx, &ten, hd, fl, p)
	if err != nil {
		return nil, err
	}
	hd.ID, hd.DeployURL = a.ID, a.pushURL()
	env := map[string]string{}
	for k, v := range e.opts.ExtraEnv {
		env[k] = v
	}
	env["CC_MOUNT_DOCKER_SOCKET"] = "true"
	err = e.withTenant(ctx, &ten, hd.namespace(), func(tok string) error {
		return e.api.call(ctx, http.MethodPut, e.appPath(ten.orgaID, a.ID)+"/env", tok, env, nil)
	})
	if err != nil {
		return nil, classify("put-env", err)
	}
	e.log.Info("Clever Cloud application ready", zap.String("app", hd.Name), zap.String("app_id", hd.ID), zap.String("orga_id", hd.OrgaID),
		zap.String("flavor", fl.Name))
	return hd.encode(), nil
}

func (e *Executor) appsPath(org string) string {
	return "/organisations/" + url.PathEscape(org) + "/applications"
}
func (e *Executor) appPath(org, id string) string {
	return e.appsPath(org) + "/" + url.PathEscape(id)
}

// app is what the executor reads of an application (Clever's
// ApplicationView; everything else is ignored).
type app struct {
	ID           string     `json:"id"`
	Name         string     `json:"name"`
	Description  flexString `json:"description"`
	CreationDate flexMillis `json:"creationDate"` // ms
	// Tags are not part of Clever's ApplicationView: nil unless a server
	// sends them anyway.
	Tags       []string `json:"tags"`
	Deployment struct {
		RepoState string `json:"repoState"`
		HTTPURL   string `json:"httpUrl"`
		URL       string `json:"url"` // git+ssh://git@push-…/app_….git
	} `json:"deployment"`
	DeployURL string `json:"deployUrl"`
}

// appGone tells whether an answer says the application does not exist:
// 404, or Clever's "no such application" id 4004 whatever the status.
func appGone(err error) bool {
	return isStatus(err, http.StatusNotFound) || isCleverID(err, 4004)
}

// orgaHint names the keys behind an organisation-level refusal.
func (e *Executor) orgaHint(err error) error {
	if err == nil || e.opts.MultiTenant {
		return err
	}
	switch {
	case isStatus(err, http.StatusUnauthorized), isStatus(err, http.StatusForbidden):
		return fmt.Errorf("%w (check cc_token and cc_auth_scheme %s)", err, e.opts.AuthScheme)
	case isStatus(err, http.StatusNotFound):
		return fmt.Errorf("%w (check cc_orga_id and cc_api_url)", err)
	}
	return err
}

// pushURL is where the job is pushed: deployment.httpUrl, else the
// view's deployUrl, else the HTTPS form of deployment.url (as Clever's
// tools derive one from the other).
func (a app) pushURL() string {
	if u := firstNonEmpty(a.Deployment.HTTPURL, a.DeployURL); u != "" {
		return u
	}
	if rest, ok := strings.CutPrefix(a.Deployment.URL, "git+ssh://"); ok {
		rest = rest[strings.Index(rest, "@")+1:]
		return "https://" + rest
	}
	return ""
}

// listApps lists an organisation's applications, but those whose
// repository is DELETED (an application being removed is no host).
func (e *Executor) listApps(ctx context.Context, ten *tenant, ns string) ([]app, error) {
	var apps []app
	err := e.withTenant(ctx, ten, ns, func(tok string) error {
		return e.api.call(ctx, http.MethodGet, e.appsPath(ten.orgaID), tok, nil, &apps)
	})
	return slices.DeleteFunc(apps, func(a app) bool { return a.Deployment.RepoState == "DELETED" }), err
}

// findOrCreate returns the job's application: the one already there (a
// create that answered too late, a crash before the handle was saved), or
// a new one. Extra applications of the same name are removed.
func (e *Executor) findOrCreate(ctx context.Context, ten *tenant, hd handle, fl flavor, p *products) (app, error) {
	deadline := time.Now().Add(e.opts.RetryFor)
	refreshed, conflicted, noID := false, false, false
	for attempt := 0; ; attempt++ {
		apps, err := e.listApps(ctx, ten, hd.namespace())
		if err != nil {
			return app{}, classify("find-app", e.orgaHint(err))
		}
		var mine []app
		for _, a := range apps {
			if a.Name == hd.Name {
				mine = append(mine, a)
			}
		}
		if len(mine) > 0 {
			sort.Slice(mine, func(i, k int) bool { return mine[i].CreationDate < mine[k].CreationDate })
			for _, extra := range mine[1:] {
				e.log.Warn("removing a duplicate application of a job", zap.String("app", hd.Name), zap.String("app_id", extra.ID))
				if err := e.deleteApp(ctx, ten, hd.namespace(), extra.ID); err != nil {
					return app{}, err
				}
			}
			e.log.Info("adopting the job's existing application", zap.String("app", hd.Name), zap.String("app_id", mine[0].ID))
			return mine[0], nil
		}
		body := map[string]any{
			"name":             hd.Name,
			"description":      e.description(hd.JobID),
			"zone":             e.opts.Zone,
			"deploy":           "git",
			"instanceType":     p.instanceType,
			"instanceVersion":  p.instanceVersion,
			"instanceLifetime": "TASK",
			"minInstances":     1,
			"maxInstances":     1,
			"minFlavor":        fl.Name,
			"maxFlavor":        fl.Name,
			"tags":             []string{"paas-runner", e.systemTag()},
		}
		if e.opts.InstanceVariant != "" {
			body["instanceVariant"] = e.opts.InstanceVariant
		}
		var a app
		err = e.withTenant(ctx, ten, hd.namespace(), func(tok string) error {
			return e.api.do(ctx, http.MethodPost, e.appsPath(ten.orgaID), tok, body, &a)
		})
		switch {
		case err == nil && a.ID != "":
			return a, nil
		case err == nil && !noID:
			// created, but the answer has no id: the listing has it
			noID = true
			e.log.Warn("the application create answered without an id; looking for it", zap.String("app", hd.Name))
			continue
		case err == nil:
			return app{}, executors.Permanent("create-app", fmt.Errorf("the create of %s answered without an application id, and the listing does not have it", hd.Name))
		case isStatus(err, http.StatusConflict) && !conflicted:
			// it exists (made meanwhile): the listing has it
			conflicted = true
			e.log.Warn("application create: conflict; looking for it", zap.String("app", hd.Name), zap.Error(err))
			continue
		case !refreshed && (isCleverID(err, 9017) || isStatus(err, http.StatusBadRequest)):
			// An outdated instanceVersion (9017) or flavor: the cached
			// products are stale. Once.
			refreshed = true
			e.log.Warn("application create refused; refreshing the products", zap.Error(err))
			if _, perr := e.products(ctx, true); perr != nil {
				return app{}, perr
			}
			if fl, p, err = e.flavorFor(ctx, hd.Flavor); err != nil {
				return app{}, err
			}
			continue
		case retryable(err) && time.Now().Before(deadline):
			// The app may exist anyway: look again before creating.
			e.log.Warn("application create failed; looking for it before retrying", zap.Error(err))
			wait := e.api.policy.Wait(attempt)
			var ra *retryAfterError
			if errors.As(err, &ra) {
				wait = max(wait, min(ra.after, 30*time.Second))
			}
			if berr := backoff.Sleep(ctx, wait); berr != nil {
				return app{}, berr
			}
			continue
		}
		if isStatus(err, http.StatusBadRequest) {
			err = fmt.Errorf("%w (the create had cc_zone %s, instanceVariant %s (cc_instance_variant_uuid), flavor %s)", err, e.opts.Zone, e.opts.InstanceVariant, fl.Name)
		}
		return app{}, classify("create-app", e.orgaHint(err))
	}
}

func (e *Executor) deleteApp(ctx context.Context, ten *tenant, ns, id string) error {
	err := e.withTenant(ctx, ten, ns, func(tok string) error {
		return e.api.call(ctx, http.MethodDelete, e.appPath(ten.orgaID, id), tok, nil, nil)
	})
	if appGone(err) {
		return nil
	}
	return classify("delete-app", err)
}

// Launch waits until the application's git repository exists, then pushes
// the job's build context to its master branch. A master that exists
// already means the job was launched (before a crash): not again.
func (e *Executor) Launch(ctx context.Context, h executors.Handle, j executors.Job) (executors.Handle, error) {
	hd, err := decodeHandle(h)
	if err != nil {
		return nil, err
	}
	if hd.ID == "" {
		return nil, executors.Permanent("launch", errors.New("the application was not provisioned"))
	}
	if hd.Launched {
		return h, nil
	}
	// A Heptapod state file's pending job, provisioned before its
	// restart, has no name: it is launched as Heptapod would, named by
	// its id in messages.
	shown := hd
	shown.Name = firstNonEmpty(hd.Name, hd.ID)
	ten, err := e.tenant(ctx, hd.namespace())
	if err != nil {
		return nil, err
	}
	a, err := e.waitRepo(ctx, &ten, shown)
	if err != nil {
		return nil, err
	}
	hd.DeployURL = firstNonEmpty(a.pushURL(), hd.DeployURL)
	if hd.DeployURL == "" {
		return nil, executors.Permanent("launch", fmt.Errorf("the application %s (%s) has no git deploy URL (deployment.httpUrl)", shown.Name, hd.ID))
	}
	bc, err := e.Context(ctx, j)
	if err != nil {
		return nil, executors.Permanent("launch", err)
	}
	already, err := e.push(ctx, hd.DeployURL, ten.token, bc, j)
	if err != nil {
		return nil, err
	}
	if already {
		e.log.Warn("the application's master branch exists: the job was launched before", zap.String("app", shown.Name))
	}
	hd.Launched = true
	return hd.encode(), nil
}

func (e *Executor) waitRepo(ctx context.Context, ten *tenant, hd handle) (app, error) {
	deadline := time.Now().Add(e.opts.RepoTimeout)
	for {
		var a app
		err := e.withTenant(ctx, ten, hd.namespace(), func(tok string) error {
			return e.api.call(ctx, http.MethodGet, e.appPath(ten.orgaID, hd.ID), tok, nil, &a)
		})
		if appGone(err) {
			return app{}, executors.Permanent("wait-git", fmt.Errorf("the application %s (%s) is gone: %w", hd.Name, hd.ID, err))
		}
		if err != nil {
			return app{}, classify("wait-git", err)
		}
		if a.Deployment.RepoState == "CREATED" {
			return a, nil
		}
		if time.Now().Add(e.opts.RepoWaitStep).After(deadline) {
			return app{}, executors.Transient("wait-git", fmt.Errorf("the git repository of %s is still %s after %v (cc_deployment_repo_timeout)",
				hd.Name, firstNonEmpty(a.Deployment.RepoState, "missing"), e.opts.RepoTimeout))
		}
		if err := backoff.Sleep(ctx, e.opts.RepoWaitStep); err != nil {
			return app{}, err
		}
	}
}

// Inspect looks at a job's application, through what Clever surely
// answers: gone (404, 4004, or listed DELETED) is a host that does not
// exist. One that exists runs the job if the handle says it was launched
// (its end is GitLab's to tell), else if its master branch holds a push
// (launched before a crash). Doubts are errors, never a verdict.
func (e *Executor) Inspect(ctx context.Context, h executors.Handle) (executors.HostStatus, error) {
	hd, err := decodeHandle(h)
	if err != nil {
		return executors.HostStatus{}, err
	}
	ten, err := e.tenant(ctx, hd.namespace())
	if err != nil {
		return executors.HostStatus{}, err
	}
	if hd.OrgaID != "" && hd.OrgaID != ten.orgaID {
		return executors.HostStatus{}, fmt.Errorf("the application %s belongs to organisation %s but the tenant is now %s", hd.ID, hd.OrgaID, ten.orgaID)
	}
	if hd.ID == "" {
		apps, err := e.listApps(ctx, &ten, hd.namespace())
		if err != nil {
			return executors.HostStatus{}, classify("inspect", err)
		}
		for _, a := range apps {
			if a.Name == hd.Name {
				hd.ID = a.ID
			}
		}
		if hd.ID == "" {
			return executors.HostStatus{}, nil
		}
	}
	var a app
	err = e.withTenant(ctx, &ten, hd.namespace(), func(tok string) error {
		return e.api.call(ctx, http.MethodGet, e.appPath(ten.orgaID, hd.ID), tok, nil, &a)
	})
	switch {
	case appGone(err) || (err == nil && a.Deployment.RepoState == "DELETED"):
		return executors.HostStatus{Detail: fmt.Sprintf("the Clever Cloud application %s (%s) no longer exists", hd.Name, hd.ID)}, nil
	case err != nil:
		return executors.HostStatus{}, classify("inspect", err)
	case hd.Launched:
		return executors.HostStatus{Exists: true, Running: true}, nil
	case a.Deployment.RepoState != "CREATED":
		return executors.HostStatus{Exists: true, Detail: "its git repository is " + firstNonEmpty(a.Deployment.RepoState, "missing")}, nil
	}
	u := firstNonEmpty(a.pushURL(), hd.DeployURL)
	if u == "" {
		return executors.HostStatus{}, fmt.Errorf("the application %s (%s) has no git deploy URL", hd.Name, hd.ID)
	}
	pushed, err := e.masterExists(ctx, u, ten.token)
	if err != nil {
		return executors.HostStatus{}, err
	}
	if !pushed {
		return executors.HostStatus{Exists: true, Detail: "the job was never pushed to it"}, nil
	}
	return executors.HostStatus{Exists: true, Running: true}, nil
}

// Decommission deletes the job's application; one already gone is
// success. A handle saved before the create (no id) is looked up by name.
func (e *Executor) Decommission(ctx context.Context, h executors.Handle) error {
	hd, err := decodeHandle(h)
	if err != nil {
		return err
	}
	ten, err := e.tenant(ctx, hd.namespace())
	if err != nil {
		if hd.ID == "" && executors.IsPermanent(err) {
			// Provision never creates without a resolved tenant.
			e.log.Warn("cannot resolve the tenant of a job that has no application id; nothing to remove", zap.String("app", hd.Name), zap.Error(err))
			return nil
		}
		return err
	}
	if hd.OrgaID != "" && hd.OrgaID != ten.orgaID {
		return executors.Permanent("decommission", fmt.Errorf("the application %s belongs to organisation %s but the tenant is now %s", hd.ID, hd.OrgaID, ten.orgaID))
	}
	if hd.ID != "" {
		return e.deleteApp(ctx, &ten, hd.namespace(), hd.ID)
	}
	apps, err := e.listApps(ctx, &ten, hd.namespace())
	if err != nil {
		if executors.IsPermanent(classify("find-app", err)) {
			e.log.Warn("cannot list the applications of a job that has no application id; nothing to remove", zap.String("app", hd.Name), zap.Error(err))
			return nil
		}
		return classify("find-app", err)
	}
	for _, a := range apps {
		if a.Name == hd.Name {
			if err := e.deleteApp(ctx, &ten, hd.namespace(), a.ID); err != nil {
				return err
			}
		}
	}
	return nil
}

// Reap deletes this runner's applications that no kept handle describes,
// older than grace, in the fixed organisation or (multi-tenant) in the
// organisations of the kept handles and of the tenants seen lately.
// Applications tagged by another daemon are never touched.
func (e *Executor) Reap(ctx context.Context, keep []executors.Handle, grace time.Duration) ([]string, error) {
	kept := map[string]bool{}
	namespaces := map[string]bool{}
	for _, h := range keep {
		hd, err := decodeHandle(h)
		if err != nil {
			continue
		}
		kept[hd.Name], kept[hd.ID] = true, true
		namespaces[hd.namespace()] = true
	}
	delete(kept, "")
	if e.opts.MultiTenant {
		e.tenMu.Lock()
		for ns := range e.tenants {
			namespaces[ns] = true
		}
		e.tenMu.Unlock()
		delete(namespaces, "")
	} else {
		namespaces = map[string]bool{"": true}
	}
	cutoff := time.Now().Add(-grace).UnixMilli()
	var removed []string
	var errs []error
	seenOrgs := map[string]bool{}
	for _, ns := range sortedSet(namespaces) {
		ten, err := e.tenant(ctx, ns)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if seenOrgs[ten.orgaID] {
			continue
		}
		seenOrgs[ten.orgaID] = true
		apps, err := e.listApps(ctx, &ten, ns)
		if err != nil {
			errs = append(errs, classify("reap", err))
			continue
		}
		for _, a := range apps {
			if !strings.HasPrefix(a.Name, e.Prefix()) || kept[a.Name] || kept[a.ID] || int64(a.CreationDate) > cutoff {
				continue
			}
			ok, err := e.reapable(ctx, &ten, ns, a)
			if err != nil {
				errs = append(errs, classify("reap", err))
				continue
			}
			if !ok {
				continue
			}
			if err := e.deleteApp(ctx, &ten, ns, a.ID); err != nil {
				errs = append(errs, err)
				continue
			}
			removed = append(removed, a.Name+" ("+a.ID+")")
		}
	}
	return removed, errors.Join(errs...)
}

// reapable tells whether this daemon may remove a, one of its runner's
// applications: one of this daemon's, or one of no daemon (Heptapod's).
// The daemon is read from the listing's tags if it has any, else from the
// description written at create, else, for an application of an older
// paas-runner (description without the tag), from GET …/tags.
func (e *Executor) reapable(ctx context.Context, ten *tenant, ns string, a app) (bool, error) {
	tags := a.Tags
	if tags == nil {
		if m := systemRe.FindString(string(a.Description)); m != "" {
			return m == e.systemTag(), nil
		}
		if !strings.HasPrefix(string(a.Description), "paas-runner ") {
			return true, nil // Heptapod's: neither description nor tags
		}
		err := e.withTenant(ctx, ten, ns, func(tok string) error {
			return e.api.call(ctx, http.MethodGet, e.appPath(ten.orgaID, a.ID)+"/tags", tok, nil, &tags)
		})
		if appGone(err) {
			return false, nil // gone meanwhile
		}
		if err != nil {
			return false, fmt.Errorf("reading the tags of %s (%s): %w", a.Name, a.ID, err)
		}
	}
	return e.mayReap(tags), nil
}

// mayReap: applications of this daemon, or untagged ones (Heptapod's).
func (e *Executor) mayReap(tags []string) bool {
	system := false
	for _, t := range tags {
		if t == e.systemTag() {
			return true
		}
		if strings.HasPrefix(t, "paas-runner-system-") {
			system = true
		}
	}
	return !system
}

func sortedSet(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ---- products ----

type flavor struct {
	Name  string // full name (heptapod-runner-M)
	Short string // M
	Mem   int    // MiB
	CPUs  int
}

// weight is Heptapod's (mem_GiB)^1.25.
func (f flavor) weight() float64 { return math.Pow(float64(f.Mem)/1024, 1.25) }

type products struct {
	instanceType, instanceVersion string
	flavors                       map[string]flavor // by short name
	fetched                       time.Time
}

// names lists the short flavor names, smallest first, up to max ("" = all).
func (p *products) names(maxName string) []string {
	fs := make([]flavor, 0, len(p.flavors))
	limit := math.MaxInt
	if m, ok := p.flavors[maxName]; ok {
		limit = m.Mem
	}
	for _, f := range p.flavors {
		if f.Mem <= limit {
			fs = append(fs, f)
		}
	}
	sort.Slice(fs, func(i, k int) bool {
		if fs[i].Mem != fs[k].Mem {
			return fs[i].Mem < fs[k].Mem
		}
		return fs[i].Short < fs[k].Short
	})
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = f.Short
	}
	return out
}

// products returns the cached products, fetched again when older than
// the TTL or when force (an answer suggested they are stale; at most once
// a minute).
func (e *Executor) products(ctx context.Context, force bool) (*products, error) {
	return e.fetchProducts(ctx, force, false)
}

// fetchProducts is products; once: no retries (the start-up check).
func (e *Executor) fetchProducts(ctx context.Context, force, once bool) (*products, error) {
	e.prodMu.Lock()
	defer e.prodMu.Unlock()
	if force && time.Since(e.lastForce) < time.Minute && e.prod != nil {
		force = false
	}
	if e.prod != nil && !force && time.Since(e.prod.fetched) < e.opts.ProductsTTL {
		return e.prod, nil
	}
	if force {
		e.lastForce = time.Now()
	}
	// With products cached, a refresh is tried once: on failure the cached
	// ones serve at once rather than after minutes of retries.
	call := e.api.call
	if e.prod != nil || once {
		call = e.api.do
	}
	// Products are public on the main API (Heptapod sends no credentials);
	// a server that wants them (401, 403: the API bridge) gets the
	// organisation's token.
	get := func(ctx context.Context, method, path, _ string, body, out any) error {
		err := call(ctx, method, path, "", body, out)
		if tok := e.anyToken(); tok != "" && (isStatus(err, http.StatusUnauthorized) || isStatus(err, http.StatusForbidden)) {
			err = call(ctx, method, path, tok, body, out)
		}
		return err
	}
	type runtime struct {
		Type    flexString `json:"type"`
		Version flexString `json:"version"`
		Name    flexString `json:"name"`
		Enabled *bool      `json:"enabled"`
	}
	var runtimes []runtime
	if err := get(ctx, http.MethodGet, "/products/instances", "", nil, &runtimes); err != nil {
		if isStatus(err, http.StatusNotFound) {
			err = fmt.Errorf("%w (cc_api_url %s: Clever's API base includes /v2, e.g. %s)", err, e.opts.APIURL, MainAPI)
		}
		return e.stale(classify("products", err))
	}
	p := &products{flavors: map[string]flavor{}}
	// Heptapod's runtime is the one named Docker; failing that, the
	// docker type
	isDocker := func(r runtime) bool { return r.Name == "Docker" }
	if !slices.ContainsFunc(runtimes, isDocker) {
		isDocker = func(r runtime) bool { return r.Type == "docker" }
	}
	for _, r := range runtimes {
		if !isDocker(r) || (r.Enabled != nil && !*r.Enabled) {
			continue
		}
		// several Docker runtimes: the newest version
		if p.instanceVersion == "" || string(r.Version) > p.instanceVersion {
			p.instanceType, p.instanceVersion = string(r.Type), string(r.Version)
		}
	}
	if p.instanceType == "" || p.instanceVersion == "" {
		return e.stale(executors.Transient("products", errors.New("the Clever Cloud products list no Docker runtime")))
	}
	var fls []struct {
		Name      string     `json:"name"`
		Mem       flexNumber `json:"mem"`
		CPUs      flexNumber `json:"cpus"`
		Available *bool      `json:"available"`
	}
	if err := get(ctx, http.MethodGet, "/products/flavors?context="+url.QueryEscape(e.opts.FlavorContext), "", nil, &fls); err != nil {
		return e.stale(classify("products", err))
	}
	for _, f := range fls {
		short, ok := strings.CutPrefix(f.Name, e.opts.FlavorNamePrefix)
		if !ok || f.Available == nil || !*f.Available || short == "" || f.Mem <= 0 {
			continue
		}
		p.flavors[short] = flavor{Name: f.Name, Short: short, Mem: int(f.Mem), CPUs: int(math.Ceil(float64(f.CPUs)))}
	}
	if len(p.flavors) == 0 {
		return e.stale(executors.Transient("products", fmt.Errorf("no available flavor named %s… in context %s (cc_flavor_name_prefix, cc_flavor_context)", e.opts.FlavorNamePrefix, e.opts.FlavorContext)))
	}
	p.fetched = time.Now()
	e.prod = p
	return p, nil
}

// anyToken is a Clever token for public calls a server wants
// authenticated: the fixed organisation's, or a tenant's seen lately.
func (e *Executor) anyToken() string {
	if !e.opts.MultiTenant {
		return e.opts.Token
	}
	e.tenMu.Lock()
	defer e.tenMu.Unlock()
	keys := make([]string, 0, len(e.tenants))
	for ns := range e.tenants {
		keys = append(keys, ns)
	}
	sort.Strings(keys)
	if len(keys) == 0 {
		return ""
	}
	return e.tenants[keys[0]].token
}

// stale falls back to the cached products when a refresh fails.
func (e *Executor) stale(err error) (*products, error) {
	if e.prod != nil {
		e.log.Warn("could not refresh the Clever Cloud products; using the cached ones", zap.Error(err))
		return e.prod, nil
	}
	return nil, err
}

// flavorFor checks a job's flavor against the products and cc_max_flavor.
func (e *Executor) flavorFor(ctx context.Context, name string) (flavor, *products, error) {
	p, err := e.products(ctx, false)
	if err != nil {
		return flavor{}, nil, err
	}
	f, ok := p.flavors[name]
	if !ok {
		// a flavor added since the cache was filled?
		if p, err = e.products(ctx, true); err != nil {
			return flavor{}, nil, err
		}
		f, ok = p.flavors[name]
	}
	allowed := strings.Join(p.names(e.opts.MaxFlavor), ", ")
	if !ok {
		return flavor{}, nil, &executors.Error{Op: "check-flavor", Permanent: true, FailureReason: job.ScriptFailure,
			Err: fmt.Errorf("flavor %q is not available (set %s to one of: %s)", name, FlavorVariable, allowed)}
	}
	if e.opts.MaxFlavor != "" {
		m, ok := p.flavors[e.opts.MaxFlavor]
		if !ok {
			return flavor{}, nil, executors.Permanent("check-flavor", fmt.Errorf("cc_max_flavor %q is not an available flavor", e.opts.MaxFlavor))
		}
		if f.Mem > m.Mem {
			return flavor{}, nil, &executors.Error{Op: "check-flavor", Permanent: true, FailureReason: job.ScriptFailure,
				Err: fmt.Errorf("flavor %q is bigger than this runner's maximum %s (set %s to one of: %s)", name, e.opts.MaxFlavor, FlavorVariable, allowed)}
		}
	}
	return f, p, nil
}

// caTransport is the default transport trusting ca (PEM) besides the
// system's certificates.
func caTransport(ca []byte) *http.Transport {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	pool.AppendCertsFromPEM(ca)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return tr
}

// Package config loads paas-runner's TOML configuration: the gitlab-runner /
// Heptapod PAAS Runner shape, decoded strictly (an unknown key is an error),
// with defaults, and validated so that every problem is reported at once,
// each naming the file, line and key.
//
// config imports no other project package; cmd maps it into the small
// option structs of the packages it configures.
package config

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"math"
	"net"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Config is the whole file.
type Config struct {
	// Path is the file the configuration was read from.
	Path string

	Concurrent                     int
	CheckInterval                  float64 // seconds
	JobProgressPollInterval        float64 // seconds
	StateFile                      string
	ShutdownTimeout                float64 // seconds
	LogLevel                       string
	LogFormat                      string
	ListenAddress                  string
	PaasMaxConcurrentProvisioning  int
	PaasFinishedJobsKeepResources  bool
	PaasDecommissionLaunchFailures bool
	PaasMinSecondsBetweenLaunches  float64
	PaasLogStatistics              bool
	// PaasTrackingRequestsPerSecond caps the GitLab requests spent on
	// watching launched jobs, however many there are.
	PaasTrackingRequestsPerSecond float64
	// QuotaComputation is Heptapod's weighted quota; nil when the table is
	// absent (then only concurrent and limit apply).
	QuotaComputation *QuotaComputation

	Runners []Runner

	// Guards is [guards] (defaults when absent).
	Guards Guards

	// Warnings are accepted keys that have no effect (gitlab-runner
	// [runners.docker] keys the inner runner does not honour), to log at
	// start, in file order.
	Warnings []Warning

	// lines are the defined keys' lines (KeyError).
	lines map[string]int
}

// KeyError is a problem with key found after loading (the state file's
// directory missing, …), located as the loader's errors are:
// `file:line: key: message`.
func (c *Config) KeyError(key, msg string) *Error {
	return &Error{File: c.Path, Line: c.lines[key], Key: key, Msg: msg}
}

// QuotaComputation is the [quota_computation] table (Heptapod's): the
// weighted quota is the weight of ReferenceFlavor on the executor of the
// runner named ReferenceRunner, times ReferenceJobsCount. Whether the
// flavor exists is known at run time only (the PaaS lists the flavors).
type QuotaComputation struct {
	ReferenceRunner    string
	ReferenceFlavor    string
	ReferenceJobsCount int
	// RunnerIndex is the position of the reference runner in Runners.
	RunnerIndex int
}

// Runner is one [[runners]] entry.
type Runner struct {
	Index    int // position in the file, for error messages
	Name     string
	URL      string
	Token    string
	Executor string
	Limit    int
	// TLSCAFile is a PEM bundle trusted for GitLab, in addition to the system's.
	TLSCAFile string
	// GuardAPIToken is the projects API token of pipeline guards for jobs
	// that bring none (guard_api_token, or the content of
	// guard_api_token_file, or the variable named by guard_api_token_env).
	GuardAPIToken                       string
	GuardAPITokenFile, GuardAPITokenEnv string

	UnhealthyRequestsLimit int
	UnhealthyInterval      float64 // seconds

	// InnerImage is the base image of the host the executor provisions
	// (inner_image or its Heptapod alias heptapod_runner_main_image).
	InnerImage string

	LocalDocker LocalDocker
	Clever      Clever

	// Inner holds everything forwarded verbatim to the inner runner's
	// runner.toml: [runners.docker], [runners.cache] and the gitlab-runner
	// job-level keys. It never holds the runner token nor executor keys.
	Inner map[string]any
}

// LocalDocker is [runners.local_docker] (plus Heptapod's runner-level host).
type LocalDocker struct {
	Host        string
	NetworkMode string
}

// Clever holds the cc_* keys of the clever-docker executor.
type Clever struct {
	APIURL                   string
	Zone                     string
	DefaultFlavor            string
	MaxFlavor                string
	DeploymentRepoTimeout    float64
	DeploymentRepoWaitStep   float64
	MultiTenant              bool
	OrgaID                   string
	Token                    string
	NamespaceAttributesToken string
	OrgaIDAttribute          string
	OrgaTokenAttribute       string
	AuthUser                 string
	InstanceVariantUUID      string
	FlavorContext            string
	FlavorNamePrefix         string
	ExtraEnv                 map[string]string
	AuthScheme               string
	// Where the secrets came from when not written in the file:
	// cc_token_file / cc_token_env and the same for the attributes token.
	TokenFile, TokenEnv                     string
	AttributesTokenFile, AttributesTokenEnv string
}

// Options are what the caller knows that the file cannot say.
type Options struct {
	// Executors are the executor names this build supports; nil accepts
	// any name (for tools that do not run jobs).
	Executors []string
}

// Error is one problem, located as precisely as the file allows.
type Error struct {
	File string
	Line int    // 0 when unknown
	Key  string // key path such as runners[0].limit; empty for syntax errors
	Msg  string
}

func (e *Error) Error() string {
	loc := e.File
	if e.Line > 0 {
		loc = fmt.Sprintf("%s:%d", e.File, e.Line)
	}
	if e.Key == "" {
		return loc + ": " + e.Msg
	}
	return fmt.Sprintf("%s: %s: %s", loc, e.Key, e.Msg)
}

// Errors is every problem found in one file, in file order.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Load reads and validates the configuration file at path. The returned
// error is an Errors listing every problem, or a plain error when the file
// cannot be read.
func Load(path string, opts Options) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	return Parse(path, data, opts)
}

// Defaults, the same as Heptapod PAAS Runner's where it has one.
const (
	DefaultConcurrent              = 50
	DefaultCheckInterval           = 3
	DefaultJobProgressPollInterval = 30
	DefaultShutdownTimeout         = 60
	DefaultMaxProvisioning         = 10
	DefaultTrackingRPS             = 40
	DefaultUnhealthyRequestsLimit  = 3
	DefaultUnhealthyInterval       = 3600
)

func (c *Config) validate(d *decoder, opts Options) {
	if c.Concurrent <= 0 && d.defined("concurrent") {
		d.errKey("concurrent", "must be a positive number of jobs")
	}
	d.intRange("concurrent", c.Concurrent, maxJobs)
	d.seconds("check_interval", c.CheckInterval, 0, 3600)
	d.seconds("job_progress_poll_interval", c.JobProgressPollInterval, 0, 86400)
	d.seconds("shutdown_timeout", c.ShutdownTimeout, 0, 7*86400)
	d.seconds("paas_min_seconds_between_launches", c.PaasMinSecondsBetweenLaunches, 0, 3600)
	if c.PaasMaxConcurrentProvisioning <= 0 && d.defined("paas_max_concurrent_provisioning") {
		d.errKey("paas_max_concurrent_provisioning", "must be a positive number")
	}
	d.intRange("paas_max_concurrent_provisioning", c.PaasMaxConcurrentProvisioning, maxJobs)
	// NaN compares false with everything: check it first, or a NaN rate
	// would pass "> 0" tests downstream as no cap at all.
	if r := c.PaasTrackingRequestsPerSecond; d.finite("paas_tracking_requests_per_second", r) {
		if r <= 0 && d.defined("paas_tracking_requests_per_second") {
			d.errKey("paas_tracking_requests_per_second", "must be positive")
		} else if r > 100000 {
			d.errKey("paas_tracking_requests_per_second", fmt.Sprintf("%g is absurd (at most 100000)", r))
		}
	}
	c.validateQuota(d)
	if c.StateFile == "" && !d.refused("state_file") {
		d.errKey("state_file", "required: path of the JSON state file (kept across restarts)")
	}
	if a := c.ListenAddress; a != "" {
		_, port, err := net.SplitHostPort(a)
		if err == nil {
			_, err = strconv.ParseUint(port, 10, 16)
		}
		if err != nil {
			d.errKey("listen_address", fmt.Sprintf("%q is not host:port with a port number, such as 127.0.0.1:9252 or :9252", a))
		}
	}
	if c.LogFormat != "" && !oneOf(c.LogFormat, "text", "json", "runner") {
		d.errKey("log_format", fmt.Sprintf("unknown format %q (want text or json)", c.LogFormat))
	}
	if c.LogLevel != "" && !oneOf(strings.ToLower(c.LogLevel), "debug", "info", "warn", "warning", "error", "fatal", "panic", "critical") {
		d.errKey("log_level", fmt.Sprintf("unknown level %q (want debug, info, warn or error)", c.LogLevel))
	}
	if len(c.Runners) == 0 && d.ok() {
		d.errs = append(d.errs, &Error{File: d.file, Msg: "no [[runners]] section: there is nothing to run jobs for"})
	}
	names := map[string]int{}
	tokens := map[string]int{}
	ids := map[string]int{}
	for i := range c.Runners {
		r := &c.Runners[i]
		p := fmt.Sprintf("runners[%d]", i)
		if r.Token == "" {
			d.errKey(p+".token", "required: the runner authentication token")
		} else if strings.IndexFunc(r.Token, func(c rune) bool { return c <= ' ' || c == 0x7f }) >= 0 {
			// GitLab would refuse it (403) at every poll
			d.errKey(p+".token", "contains whitespace or a control character (a copy-paste accident?)")
		} else if j, dup := tokens[r.Token]; dup {
			d.errKey(p+".token", fmt.Sprintf("same token as runners[%d]", j))
		} else {
			tokens[r.Token] = i
			if j, dup := ids[r.ID()]; dup {
				d.errKey(p+".token", fmt.Sprintf("runners[%d]'s token starts with the same 8 characters (%q), which Heptapod-style tokens use as the runner's identity; use a glrt- runner authentication token or another runner", j, r.ID()))
			} else {
				ids[r.ID()] = i
			}
		}
		if r.Name != "" {
			if j, dup := names[r.Name]; dup {
				d.errKey(p+".name", fmt.Sprintf("same name as runners[%d]", j))
			}
			names[r.Name] = i
		}
		d.resolveSecret(p, "guard_api_token", &r.GuardAPIToken, r.GuardAPITokenFile, r.GuardAPITokenEnv)
		if r.URL == "" {
			d.errKey(p+".url", "required: the GitLab URL, such as https://gitlab.example.com")
		} else if u, err := url.Parse(r.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			d.errKey(p+".url", fmt.Sprintf("%q is not an http:// or https:// URL", r.URL))
		} else if strings.HasSuffix(strings.TrimRight(u.Path, "/"), "/api/v4") {
			// every request would go to …/api/v4/api/v4/… and fail with 404
			d.errKey(p+".url", fmt.Sprintf("%q: give GitLab's own URL, without /api/v4", r.URL))
		}
		if r.Limit < 0 {
			d.errKey(p+".limit", "must not be negative (0 means no per-runner limit)")
		}
		d.intRange(p+".limit", r.Limit, maxJobs)
		if r.UnhealthyRequestsLimit < 0 {
			d.errKey(p+".unhealthy_requests_limit", "must not be negative")
		}
		d.intRange(p+".unhealthy_requests_limit", r.UnhealthyRequestsLimit, 1000000)
		d.seconds(p+".unhealthy_interval", r.UnhealthyInterval, 0, 30*86400)
		if r.TLSCAFile != "" {
			if pem, err := os.ReadFile(r.TLSCAFile); err != nil {
				d.errKey(p+".tls-ca-file", fmt.Sprintf("cannot read %s: %v", r.TLSCAFile, unwrapPathError(err)))
			} else if !x509.NewCertPool().AppendCertsFromPEM(pem) {
				d.errKey(p+".tls-ca-file", fmt.Sprintf("%s holds no PEM certificate", r.TLSCAFile))
			}
		}
		switch {
		case r.Executor == "":
			d.errKey(p+".executor", "required: one of "+strings.Join(sorted(opts.Executors), ", "))
		case opts.Executors != nil && !oneOf(r.Executor, opts.Executors...):
			have := strings.Join(sorted(opts.Executors), ", ")
			if have == "" {
				have = "none"
			}
			d.errKey(p+".executor", fmt.Sprintf("unknown executor %q (this build has: %s)", r.Executor, have))
		}
		r.validateExecutorKeys(d, p)
	}
}

// maxJobs bounds job counts: far beyond any real installation, well within
// what the daemon can hold.
const maxJobs = 100000

// finite reports a NaN or infinite value of key (TOML accepts nan and inf
// for floats) and returns whether v is finite.
func (d *decoder) finite(key string, v float64) bool {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		if !d.reported(key) {
			d.errKey(key, fmt.Sprintf("%v is not a number of seconds or a rate: give a finite number", v))
		}
		return false
	}
	return true
}

// seconds checks a duration in seconds: finite, not negative, at most max
// (beyond it the value is a mistake, and converting it overflows).
func (d *decoder) seconds(key string, v, lo, max float64) {
	if !d.finite(key, v) {
		return
	}
	switch {
	case v < lo:
		d.errKey(key, "must not be negative")
	case v > max:
		d.errKey(key, fmt.Sprintf("%g seconds is absurd (at most %g)", v, max))
	}
}

// intRange refuses absurdly large counts (the "must be positive/not
// negative" messages are given by the callers).
func (d *decoder) intRange(key string, v, max int) {
	if v > max {
		d.errKey(key, fmt.Sprintf("%d is absurd (at most %d)", v, max))
	}
}

// reported tells whether key already has an error (decodeValue's NaN check).
func (d *decoder) reported(key string) bool {
	for _, e := range d.errs {
		if e.Key == key {
			return true
		}
	}
	return false
}

func (r *Runner) validateExecutorKeys(d *decoder, p string) {
	localKeys, ccKeys := d.runnerKeysWithPrefix(r.Index, "local_docker"), d.runnerKeysWithPrefix(r.Index, "cc_")
	if r.Executor != "local-docker" {
		for _, k := range localKeys {
			d.errKey(p+"."+k, fmt.Sprintf("only for executor local-docker (this runner uses %q)", r.Executor))
		}
		if d.defined(p + ".host") {
			d.errKey(p+".host", fmt.Sprintf("only for executor local-docker (this runner uses %q)", r.Executor))
		}
	}
	if r.Executor != "clever-docker" {
		for _, k := range ccKeys {
			d.errKey(p+"."+k, fmt.Sprintf("only for executor clever-docker (this runner uses %q)", r.Executor))
		}
	}
	switch r.Executor {
	case "local-docker":
		if h := r.LocalDocker.Host; h != "" {
			key := p + ".local_docker.host"
			if !d.defined(key) {
				key = p + ".host"
			}
			rest, unix := strings.CutPrefix(h, "unix://")
			if !unix {
				rest, _ = strings.CutPrefix(h, "tcp://")
			}
			switch {
			case !strings.HasPrefix(h, "unix://") && !strings.HasPrefix(h, "tcp://"):
				d.errKey(key, fmt.Sprintf("%q: only unix:// and tcp:// Docker hosts are supported", h))
			case rest == "" && unix:
				d.errKey(key, fmt.Sprintf("%q: give the socket's path, such as unix:///var/run/docker.sock", h))
			case rest == "":
				d.errKey(key, fmt.Sprintf("%q: give host:port, such as tcp://127.0.0.1:2375", h))
			}
		}
	case "clever-docker":
		c := &r.Clever
		d.resolveSecret(p, "cc_token", &c.Token, c.TokenFile, c.TokenEnv)
		d.resolveSecret(p, "cc_gitlab_namespace_attributes_token", &c.NamespaceAttributesToken, c.AttributesTokenFile, c.AttributesTokenEnv)
		if r.InnerImage == "" {
			d.errKey(p+".inner_image", "required for clever-docker: the image Clever Cloud runs each job with, answering Heptapod's entry point "+
				"(Heptapod's default was registry.heptapod.net:443/heptapod/heptapod-runner/runner:0.7.0)")
		}
		if c.MultiTenant && c.NamespaceAttributesToken == "" && !d.defined(p+".cc_gitlab_namespace_attributes_token_file") && !d.defined(p+".cc_gitlab_namespace_attributes_token_env") {
			d.errKey(p+".cc_gitlab_namespace_attributes_token", "required with cc_multi_tenant = true: a GitLab administrator's token reading group custom attributes")
		}
		for _, k := range []struct{ key, v string }{{"cc_zone", c.Zone}, {"cc_default_flavor", c.DefaultFlavor}, {"cc_auth_user", c.AuthUser},
			{"cc_flavor_context", c.FlavorContext}, {"cc_orga_id_attribute", c.OrgaIDAttribute}, {"cc_orga_token_attribute", c.OrgaTokenAttribute}} {
			if k.v == "" && d.defined(p+"."+k.key) {
				d.errKey(p+"."+k.key, "must not be empty")
			}
		}
		if !c.MultiTenant {
			if c.OrgaID == "" {
				d.errKey(p+".cc_orga_id", "required unless cc_multi_tenant = true")
			}
			if c.Token == "" && !d.defined(p+".cc_token_file") && !d.defined(p+".cc_token_env") {
				d.errKey(p+".cc_token", "required unless cc_multi_tenant = true (or cc_token_file, cc_token_env)")
			}
		}
		if u, err := url.Parse(c.APIURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			d.errKey(p+".cc_api_url", fmt.Sprintf("%q is not an http:// or https:// URL", c.APIURL))
		}
		if c.DeploymentRepoTimeout <= 0 {
			d.errKey(p+".cc_deployment_repo_timeout", "must be positive")
		}
		if c.DeploymentRepoWaitStep <= 0 {
			d.errKey(p+".cc_deployment_repo_wait_step", "must be positive")
		}
		if !oneOf(c.AuthScheme, "token", "bearer") {
			d.errKey(p+".cc_auth_scheme", fmt.Sprintf("%q: want token or bearer", c.AuthScheme))
		}
		if !uuidRe.MatchString(strings.ToLower(c.InstanceVariantUUID)) {
			d.errKey(p+".cc_instance_variant_uuid", fmt.Sprintf("%q is not a UUID", c.InstanceVariantUUID))
		}
	}
}

var uuidRe = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// ID identifies the runner in the state file, in host names and in labels.
// It is unique per token and does not depend on the other runners of the
// configuration, so it stays the same when runners are added or removed:
//   - a legacy token (neither glrt- nor glrtr-): its first 8 characters, exactly as
//     Heptapod PAAS Runner's unique_name, so that Heptapod state files and
//     host names (hpd-job-<unique_name>-<job id>) carry over;
//   - a glrt- or glrtr- token (glrtr-: the runner token GitLab issues to a
//     runner registered with a registration token): "t" and the first 7
//     hex digits of its SHA-256. The first 8 characters of such tokens are
//     shared (glrt-t1_, glrt-t3_…, glrtr-…), so they identify nothing.
func (r *Runner) ID() string { return RunnerID(r.Token) }

// RunnerID is Runner.ID for a token.
func RunnerID(token string) string {
	if strings.HasPrefix(token, "glrt-") || strings.HasPrefix(token, "glrtr-") {
		sum := sha256.Sum256([]byte(token))
		return "t" + hex.EncodeToString(sum[:])[:7]
	}
	return LegacyID(token)
}

// LegacyID is Heptapod PAAS Runner's unique_name for a token: its first 8
// characters. State files written by Heptapod key their jobs with it.
func LegacyID(token string) string {
	if len(token) > 8 {
		return token[:8]
	}
	return token
}

// DisplayName is the runner's name, or its ID when it has none.
func (r *Runner) DisplayName() string {
	if r.Name != "" {
		return r.Name
	}
	return r.ID()
}

func oneOf(s string, set ...string) bool {
	for _, x := range set {
		if s == x {
			return true
		}
	}
	return false
}

func sorted(s []string) []string {
	c := append([]string(nil), s...)
	sort.Strings(c)
	return c
}

func (c *Config) validateQuota(d *decoder) {
	q := c.QuotaComputation
	if q == nil {
		return
	}
	const p = "quota_computation"
	missing := func(k, msg string) { // located at the table
		d.errs = append(d.errs, &Error{File: d.file, Line: d.lineOfKey(p), Key: p + "." + k, Msg: msg})
	}
	if q.ReferenceRunner == "" {
		if !d.reported(p + ".reference_runner") {
			missing("reference_runner", "required: the name of the [[runners]] entry whose flavor is the reference")
		}
	} else {
		q.RunnerIndex = -1
		var names []string
		for i := range c.Runners {
			if c.Runners[i].Name == q.ReferenceRunner && q.RunnerIndex < 0 {
				q.RunnerIndex = i
			}
			if c.Runners[i].Name != "" {
				names = append(names, strconv.Quote(c.Runners[i].Name))
			}
		}
		if q.RunnerIndex < 0 {
			msg := fmt.Sprintf("no [[runners]] entry is named %q", q.ReferenceRunner)
			if len(names) > 0 {
				msg += " (names: " + strings.Join(names, ", ") + ")"
			} else {
				msg += " (no runner has a name)"
			}
			d.errKey(p+".reference_runner", msg)
		}
	}
	if q.ReferenceFlavor == "" && !d.reported(p+".reference_flavor") {
		missing("reference_flavor", "required: the flavor one reference job has, such as M (local-docker knows M only)")
	}
	switch {
	case d.reported(p + ".reference_jobs_count"):
	case !d.defined(p + ".reference_jobs_count"):
		missing("reference_jobs_count", "required: how many jobs of the reference flavor the quota allows at once")
	case q.ReferenceJobsCount <= 0:
		d.errKey(p+".reference_jobs_count", "must be a positive number of jobs")
	default:
		d.intRange(p+".reference_jobs_count", q.ReferenceJobsCount, maxJobs)
	}
}

// Package job holds the vocabulary shared by every part of paas-runner: the
// job payload GitLab hands out on POST /api/v4/jobs/request, its variables,
// and failure reasons. Standard library only.
package job

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Payload is the 201 body of POST /api/v4/jobs/request. Only the fields
// paas-runner reads are typed; the raw bytes are kept alongside (see
// Acquired) so that nothing GitLab sent is lost when the payload is handed
// to the inner runner.
type Payload struct {
	ID            int64          `json:"id"`
	Token         string         `json:"token"`
	AllowGitFetch bool           `json:"allow_git_fetch"`
	JobInfo       JobInfo        `json:"job_info"`
	GitInfo       GitInfo        `json:"git_info"`
	RunnerInfo    RunnerInfo     `json:"runner_info"`
	Variables     Variables      `json:"variables"`
	Steps         []Step         `json:"steps"`
	Hooks         []Hook         `json:"hooks,omitempty"`
	Image         Image          `json:"image"`
	Services      []Service      `json:"services"`
	Artifacts     []Artifact     `json:"artifacts"`
	Cache         []Cache        `json:"cache"`
	Credentials   []Credentials  `json:"credentials"`
	Dependencies  []Dependency   `json:"dependencies"`
	Features      GitlabFeatures `json:"features"`
	// Run: the job's run: keyword (CI/CD steps), a JSON string holding
	// the steps, sent instead of steps. paas-runner does not run them.
	Run json.RawMessage `json:"run,omitempty"`
}

// HasRunSteps tells whether the job is made of CI/CD steps (run:) rather
// than a script.
func (p *Payload) HasRunSteps() bool {
	switch string(p.Run) {
	case "", "null", `""`, "[]", `"[]"`:
		return false
	}
	return true
}

type JobInfo struct {
	ID              int64  `json:"id,omitempty"`
	Name            string `json:"name"`
	Stage           string `json:"stage"`
	PipelineID      int64  `json:"pipeline_id,omitempty"`
	ProjectID       int64  `json:"project_id"`
	ProjectName     string `json:"project_name"`
	ProjectFullPath string `json:"project_full_path,omitempty"`
	NamespaceID     int64  `json:"namespace_id,omitempty"`
	RootNamespaceID int64  `json:"root_namespace_id,omitempty"`
}

type GitInfo struct {
	RepoURL          string   `json:"repo_url"`
	RepoObjectFormat string   `json:"repo_object_format,omitempty"`
	Ref              string   `json:"ref"`
	Sha              string   `json:"sha"`
	BeforeSha        string   `json:"before_sha"`
	RefType          string   `json:"ref_type"`
	Refspecs         []string `json:"refspecs"`
	Depth            int      `json:"depth"`
	Protected        bool     `json:"protected,omitempty"`
}

type RunnerInfo struct {
	UUID    string `json:"uuid,omitempty"`
	Timeout int    `json:"timeout"`
}

type Step struct {
	Name         string   `json:"name"`
	Script       []string `json:"script"`
	Timeout      int      `json:"timeout"`
	When         string   `json:"when"`
	AllowFailure bool     `json:"allow_failure"`
}

type Hook struct {
	Name   string   `json:"name"`
	Script []string `json:"script"`
}

type Port struct {
	Number   int    `json:"number"`
	Protocol string `json:"protocol,omitempty"`
	Name     string `json:"name,omitempty"`
}

type Image struct {
	Name       string   `json:"name"`
	Alias      string   `json:"alias,omitempty"`
	Entrypoint []string `json:"entrypoint,omitempty"`
	Command    []string `json:"command,omitempty"`
	Ports      []Port   `json:"ports,omitempty"`
	PullPolicy []string `json:"pull_policy,omitempty"`
	// ExecutorOpts: image: docker: platform and user (GitLab sends them
	// to runners advertising image_executor_opts).
	ExecutorOpts ExecutorOpts `json:"executor_opts"`
}

// ExecutorOpts are an image's executor options.
type ExecutorOpts struct {
	Docker DockerOpts `json:"docker"`
}

// DockerOpts are image: docker: options. GitLab passes user on as
// written in .gitlab-ci.yml: a name, "uid:gid", or a bare number (user:
// 1000), which arrives as a JSON number; both are kept as a string here,
// as gitlab-runner does (its StringOrInt64).
type DockerOpts struct {
	Platform string `json:"platform,omitempty"`
	User     string `json:"user,omitempty"`
}

// UnmarshalJSON accepts user as a string or an integer.
func (o *DockerOpts) UnmarshalJSON(b []byte) error {
	var in struct {
		Platform *string         `json:"platform"`
		User     json.RawMessage `json:"user"`
	}
	if err := json.Unmarshal(b, &in); err != nil {
		return err
	}
	if in.Platform != nil {
		o.Platform = *in.Platform
	}
	u, err := stringOrInt(in.User)
	if err != nil {
		return fmt.Errorf("executor_opts: docker: user: %w", err)
	}
	if u != "" {
		o.User = u
	}
	return nil
}

// stringOrInt reads a JSON string, integer or null as a string.
func stringOrInt(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err == nil {
		if _, err := n.Int64(); err == nil {
			return n.String(), nil
		}
	}
	return "", fmt.Errorf("%s is neither a string nor an integer", raw)
}

type Service struct {
	Image
	Variables Variables `json:"variables,omitempty"`
}

type Artifact struct {
	Name      string   `json:"name"`
	Untracked bool     `json:"untracked"`
	Paths     []string `json:"paths"`
	Exclude   []string `json:"exclude,omitempty"`
	When      string   `json:"when"`
	ExpireIn  string   `json:"expire_in"`
	Type      string   `json:"artifact_type"`
	Format    string   `json:"artifact_format"`
}

type Cache struct {
	Key          string   `json:"key"`
	Untracked    bool     `json:"untracked"`
	Paths        []string `json:"paths"`
	Policy       string   `json:"policy"`
	When         string   `json:"when"`
	FallbackKeys []string `json:"fallback_keys,omitempty"`
}

type Credentials struct {
	Type     string `json:"type"`
	URL      string `json:"url"`
	Username string `json:"username"`
	Password string `json:"password"`
}

type Dependency struct {
	ID            int64  `json:"id"`
	Name          string `json:"name"`
	Token         string `json:"token"`
	ArtifactsFile *struct {
		Filename string `json:"filename"`
		Size     int64  `json:"size"`
	} `json:"artifacts_file,omitempty"`
}

type GitlabFeatures struct {
	TraceSections     bool     `json:"trace_sections"`
	FailureReasons    []string `json:"failure_reasons,omitempty"`
	TokenMaskPrefixes []string `json:"token_mask_prefixes,omitempty"`
}

// Acquired is a job as the dispatcher holds it: the raw payload (handed on
// unchanged) plus the few fields it needs.
type Acquired struct {
	ID      int64
	Token   string
	Payload *Payload
	Raw     json.RawMessage
}

// Parse decodes and validates a jobs/request payload. A payload without an
// id or token cannot be tracked, reported or handed on, so it is refused.
func Parse(raw []byte) (*Acquired, error) {
	var p Payload
	if err := json.Unmarshal(raw, &p); err != nil {
		var te *json.UnmarshalTypeError
		// a value of another JSON type than expected: try converting it
		if !errors.As(err, &te) {
			return nil, fmt.Errorf("decoding job payload: %w", err)
		}
		p = Payload{}
		if decodeLenient(raw, &p) != nil {
			return nil, fmt.Errorf("decoding job payload: %w", err)
		}
	}
	if p.ID <= 0 {
		return nil, fmt.Errorf("job payload has no valid id")
	}
	if p.Token == "" {
		return nil, fmt.Errorf("job %d payload has no token", p.ID)
	}
	return &Acquired{ID: p.ID, Token: p.Token, Payload: &p, Raw: append(json.RawMessage(nil), raw...)}, nil
}

// Failure reasons paas-runner sends (GitLab's CommitStatus enum).
const (
	ScriptFailure         = "script_failure"
	RunnerSystemFailure   = "runner_system_failure"
	JobExecutionTimeout   = "job_execution_timeout"
	UnknownFailure        = "unknown_failure"
	APIFailure            = "api_failure"
	ConfigurationError    = "runner_configuration_error"
	ExternalDependency    = "runner_external_dependency_failure"
	StuckOrTimeoutFailure = "stuck_or_timeout_failure"
	RunnerUnsupported     = "runner_unsupported"
)

// Job statuses as GitLab reports them (Job-Status header, GET /job).
const (
	StatusRunning   = "running"
	StatusCanceling = "canceling"
	StatusCanceled  = "canceled"
	StatusSuccess   = "success"
	StatusFailed    = "failed"
)

// IsFinal reports whether a job status means the job will not run further.
func IsFinal(status string) bool {
	switch status {
	case StatusCanceled, StatusSuccess, StatusFailed, "skipped", "manual":
		return true
	}
	return false
}

// ErrNotRunning is GitLab saying a job is no longer running (401 on GET
// /job, 403 "not running" on PUT or PATCH): nothing more can be done for it.
var ErrNotRunning = errors.New("job is not running any more")

// Package pipeguard is the pipeline-conflict guard: gitlab-job-guard's rule
// (a job waits while other pipelines of its project match a ref regex and a
// status regex), with an order rule that keeps two guarded pipelines from
// waiting for each other, give-way and cancel policies, and narrowing to
// jobs or stages. It holds the rule engine (Rule, Evaluate), the GitLab
// pipelines API client (Client), a poller that answers every job of a
// project sharing a rule with one query per interval (Poller), and a
// blocking Wait on top of it (Watcher), used by `paas-runner guard` and by
// the daemon's guard stage.
package pipeguard

import (
	"fmt"
	"regexp"
	"regexp/syntax"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Defaults, as gitlab-job-guard.
const (
	DefaultRefRegex    = `^\d+\-`
	DefaultStatusRegex = `running`
	DefaultTimeout     = 3600 * time.Second
)

// Order says which conflicting pipelines a job waits for.
type Order string

// Orders.
const (
	// OldestFirst: wait only for conflicting pipelines older than the job's
	// own (smaller id). Two guarded pipelines never wait for each other.
	OldestFirst Order = "oldest_first"
	// NewestWins: a newer conflicting pipeline makes the job give way
	// ("superseded by pipeline N"); older ones are waited for, or cancelled
	// with CancelOlder.
	NewestWins Order = "newest_wins"
	// Any: every conflicting pipeline counts, as gitlab-job-guard. Two
	// guarded pipelines that are both running wait for each other until the
	// timeout.
	Any Order = "any"
)

// PipelineStatuses are GitLab's pipeline (and job) statuses
// (Ci::HasStatus::AVAILABLE_STATUSES).
var PipelineStatuses = []string{"created", "waiting_for_resource", "preparing", "waiting_for_callback",
	"pending", "running", "success", "failed", "canceling", "canceled", "skipped", "manual", "scheduled"}

// Spec is a rule as written: regular expressions in Python's syntax as far
// as Go's RE2 shares it (no look-arounds, no back-references).
type Spec struct {
	RefRegex    string // searched anywhere in the ref (re.search); "" = default
	StatusRegex string // matched at the start of the status (re.match); "" = default
	JobRegex    string // narrowing: searched in job names; "" = no narrowing by name
	StageRegex  string // narrowing: searched in stage names; "" = no narrowing by stage
	Order       Order  // "" = OldestFirst
	NoWait      bool
	CancelOlder bool
	Timeout     time.Duration // 0 = DefaultTimeout
}

// Rule is a compiled Spec.
type Rule struct {
	Spec
	ref, status, job, stage *regexp.Regexp
	query                   Query
}

// Query is what the pipelines list can filter server-side for a rule.
type Query struct {
	// Statuses: one request per status (status=…); nil: no status filter.
	Statuses []string
	// Ref: the ref parameter when the ref regex is an exact literal.
	Ref string
}

// Key identifies the query: rules with equal keys share one request.
func (q Query) Key() string { return strings.Join(q.Statuses, ",") + "|" + q.Ref }

// maxServerStatuses: above this many matching statuses, one of them a
// finished one, one unfiltered listing is cheaper than one request per
// status. A regex matching only statuses a pipeline leaves (running,
// pending, created, …) is always filtered by status: unfiltered, the
// listing would be the project's whole history, page after page (and
// beyond Client.MaxPages, no decision at all).
const maxServerStatuses = 4

// statusCanceling is GitLab's (17.x) status of a pipeline being cancelled:
// its jobs are still being stopped.
const statusCanceling = "canceling"

// finished: a pipeline in this status stays in it.
func finished(status string) bool {
	switch status {
	case "success", "failed", "canceled", "skipped":
		return true
	}
	return false
}

// NewRule checks and compiles a spec. Errors name the variable involved.
func NewRule(s Spec) (*Rule, error) {
	if s.RefRegex == "" {
		s.RefRegex = DefaultRefRegex
	}
	if s.StatusRegex == "" {
		s.StatusRegex = DefaultStatusRegex
	}
	if s.Order == "" {
		s.Order = OldestFirst
	}
	if s.Timeout == 0 {
		s.Timeout = DefaultTimeout
	}
	r := &Rule{Spec: s}
	var err error
	if r.ref, err = compile("GUARD_REF_REGEX", s.RefRegex, false); err != nil {
		return nil, err
	}
	if r.status, err = compile("GUARD_STATUS_REGEX", s.StatusRegex, true); err != nil {
		return nil, err
	}
	if s.JobRegex != "" {
		if r.job, err = compile("GUARD_JOB_REGEX", s.JobRegex, false); err != nil {
			return nil, err
		}
	}
	if s.StageRegex != "" {
		if r.stage, err = compile("GUARD_STAGE_REGEX", s.StageRegex, false); err != nil {
			return nil, err
		}
	}
	switch s.Order {
	case OldestFirst, NewestWins, Any:
	default:
		return nil, fmt.Errorf("GUARD_ORDER: %q is not one of oldest_first, newest_wins, any", s.Order)
	}
	if s.CancelOlder && s.Order != NewestWins {
		return nil, fmt.Errorf("GUARD_CANCEL_OLDER needs GUARD_ORDER=newest_wins (it is %s)", s.Order)
	}
	if s.Timeout < 0 {
		return nil, fmt.Errorf("GUARD_TIMEOUT: must not be negative")
	}
	var statuses []string
	for _, st := range PipelineStatuses {
		if r.status.MatchString(st) {
			statuses = append(statuses, st)
		}
	}
	if len(statuses) == 0 {
		return nil, fmt.Errorf("GUARD_STATUS_REGEX: %q matches no pipeline status (%s)", s.StatusRegex, strings.Join(PipelineStatuses, ", "))
	}
	if len(statuses) <= maxServerStatuses || !slices.ContainsFunc(statuses, finished) {
		if s.CancelOlder && !slices.Contains(statuses, statusCanceling) {
			// the pipelines it cancelled, while GitLab stops their jobs
			statuses = append(slices.Clone(statuses), statusCanceling)
		}
		r.query.Statuses = statuses
	}
	r.query.Ref = exactLiteral(s.RefRegex)
	return r, nil
}

// compile checks expr as written, then compiles it (anchored: at the
// start, as Python's re.match). Wrapping alone would accept an expression
// with unbalanced parentheses, e.g. "running)|(x" as "^(?:running)|(x)",
// with another meaning than Python's refusal.
func compile(name, expr string, anchored bool) (*regexp.Regexp, error) {
	re, err := regexp.Compile(expr)
	if err == nil && anchored {
		re, err = regexp.Compile(`^(?:` + expr + `)`)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %q is not a valid regular expression: %w", name, expr, err)
	}
	return re, nil
}

// exactLiteral returns L when expr is ^L$ with L a case-sensitive literal
// (so that ref=L can be asked of GitLab), else "".
func exactLiteral(expr string) string {
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return ""
	}
	re = re.Simplify()
	if re.Op != syntax.OpConcat || len(re.Sub) != 3 {
		return ""
	}
	b, l, e := re.Sub[0], re.Sub[1], re.Sub[2]
	if b.Op != syntax.OpBeginText || e.Op != syntax.OpEndText || l.Op != syntax.OpLiteral || l.Flags&syntax.FoldCase != 0 {
		return ""
	}
	return string(l.Rune)
}

// Query is the server-side filter of the pipelines list for this rule.
func (r *Rule) Query() Query { return r.query }

// Narrowed says whether the rule looks at pipelines' jobs.
func (r *Rule) Narrowed() bool { return r.job != nil || r.stage != nil }

// Key identifies the rule's semantics: jobs whose rules have equal keys can
// share a decision input (same query, same jobs lookups).
func (r *Rule) Key() string {
	return strings.Join([]string{r.RefRegex, r.StatusRegex, r.JobRegex, r.StageRegex}, "\x00")
}

// Lookup reads a variable: a job's CI variables or the environment.
type Lookup func(name string) (string, bool)

// Variables the rule is read from.
const (
	VarRefRegex     = "GUARD_REF_REGEX"
	VarStatusRegex  = "GUARD_STATUS_REGEX"
	VarTimeout      = "GUARD_TIMEOUT"
	VarNoWait       = "GUARD_NO_WAIT"
	VarOrder        = "GUARD_ORDER"
	VarCancelOlder  = "GUARD_CANCEL_OLDER"
	VarJobRegex     = "GUARD_JOB_REGEX"
	VarStageRegex   = "GUARD_STAGE_REGEX"
	VarEnable       = "PAAS_GUARD_PIPELINES"
	VarGuardToken   = "GUARD_PRIVATE_TOKEN"
	VarPrivateToken = "PRIVATE_TOKEN"
)

// get is a variable that is set and not empty (gitlab-job-guard ignores
// empty environment variables).
func get(l Lookup, name string) (string, bool) {
	v, ok := l(name)
	if !ok || v == "" {
		return "", false
	}
	return v, true
}

// Active says whether a job's variables ask for a pipeline guard:
// GUARD_REF_REGEX or GUARD_STATUS_REGEX set, or PAAS_GUARD_PIPELINES true.
func Active(l Lookup) (bool, error) {
	if _, ok := get(l, VarRefRegex); ok {
		return true, nil
	}
	if _, ok := get(l, VarStatusRegex); ok {
		return true, nil
	}
	return parseBool(l, VarEnable)
}

// SpecFromVariables reads a rule's variables on top of base (which holds
// defaults, e.g. a command line's flags): a variable that is set wins.
func SpecFromVariables(l Lookup, base Spec) (Spec, error) {
	s := base
	if v, ok := get(l, VarRefRegex); ok {
		s.RefRegex = v
	}
	if v, ok := get(l, VarStatusRegex); ok {
		s.StatusRegex = v
	}
	if v, ok := get(l, VarJobRegex); ok {
		s.JobRegex = v
	}
	if v, ok := get(l, VarStageRegex); ok {
		s.StageRegex = v
	}
	if v, ok := get(l, VarOrder); ok {
		s.Order = Order(v)
	}
	if v, ok := get(l, VarTimeout); ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 0 {
			return s, fmt.Errorf("%s: %q is not a whole number of seconds", VarTimeout, v)
		}
		s.Timeout = time.Duration(n) * time.Second
		if n == 0 {
			s.Timeout = DefaultTimeout
		}
	}
	for _, b := range []struct {
		name string
		dst  *bool
	}{{VarNoWait, &s.NoWait}, {VarCancelOlder, &s.CancelOlder}} {
		if _, ok := get(l, b.name); ok {
			v, err := parseBool(l, b.name)
			if err != nil {
				return s, err
			}
			*b.dst = v
		}
	}
	return s, nil
}

func parseBool(l Lookup, name string) (bool, error) {
	v, ok := get(l, name)
	if !ok {
		return false, nil
	}
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "1", "true", "yes", "on":
		return true, nil
	case "0", "false", "no", "off":
		return false, nil
	}
	return false, fmt.Errorf("%s: %q is not true or false", name, v)
}

// TokenVariable is the variable holding a job's guard API token:
// GUARD_PRIVATE_TOKEN, else PRIVATE_TOKEN (gitlab-job-guard's), else ""
// (use the runner's configured token). Callers store the name, never the
// token, and re-read it from the job's variables.
func TokenVariable(l Lookup) string {
	for _, n := range []string{VarGuardToken, VarPrivateToken} {
		if _, ok := get(l, n); ok {
			return n
		}
	}
	return ""
}

// Pipeline is one pipeline of the project (the list's fields we use).
type Pipeline struct {
	ID     int64  `json:"id"`
	Status string `json:"status"`
	Ref    string `json:"ref"`
	SHA    string `json:"sha"`
}

// String is gitlab-job-guard's line: "Pipeline #ID status sha ref".
func (p Pipeline) String() string {
	return fmt.Sprintf("Pipeline #%d %-10s %s %s", p.ID, p.Status, p.SHA, p.Ref)
}

// Job is one job of a pipeline (for narrowing).
type Job struct {
	ID     int64  `json:"id"`
	Name   string `json:"name"`
	Stage  string `json:"stage"`
	Status string `json:"status"`
}

// Snapshot is what one poll saw of a project: its pipelines matching the
// query, and, for narrowed rules, the jobs of the pipelines that needed a
// look. A Snapshot is shared by every waiter of the project and rule.
type Snapshot struct {
	Pipelines []Pipeline
	Jobs      map[int64][]Job // by pipeline id; absent = not fetched
	At        time.Time
}

// Matching are the pipelines that match the rule's ref and status and are
// not own, before the order rule and narrowing, in snapshot order.
func (r *Rule) Matching(pipelines []Pipeline, own int64) []Pipeline {
	var out []Pipeline
	for _, p := range pipelines {
		if p.ID != own && r.ref.MatchString(p.Ref) && r.status.MatchString(p.Status) {
			out = append(out, p)
		}
	}
	return out
}

// NeedJobs lists the pipelines whose jobs Evaluate needs to decide for own
// (narrowed rules only): the matching pipelines the order rule counts.
func (r *Rule) NeedJobs(pipelines []Pipeline, own int64) []int64 {
	if !r.Narrowed() {
		return nil
	}
	var ids []int64
	for _, p := range r.Matching(pipelines, own) {
		if r.Order == OldestFirst && p.ID > own {
			continue
		}
		ids = append(ids, p.ID)
	}
	return ids
}

// JobScope is the jobs-list filter (scope[]) for narrowing: the statuses
// the status regex matches.
func (r *Rule) JobScope() []string {
	var out []string
	for _, st := range PipelineStatuses {
		if r.status.MatchString(st) {
			out = append(out, st)
		}
	}
	return out
}

// jobConflicts: a narrowed pipeline conflicts only if one of its jobs whose
// name and stage match is itself in a matching status. Jobs not fetched
// count as conflicting (safe side).
func (r *Rule) jobConflicts(snap *Snapshot, pid int64) bool {
	if !r.Narrowed() {
		return true
	}
	jobs, ok := snap.Jobs[pid]
	if !ok {
		return true
	}
	for _, j := range jobs {
		if (r.job == nil || r.job.MatchString(j.Name)) && (r.stage == nil || r.stage.MatchString(j.Stage)) &&
			r.status.MatchString(j.Status) {
			return true
		}
	}
	return false
}

// Verdict is what a job does after one evaluation.
type Verdict int

// Verdicts.
const (
	Wait       Verdict = iota // conflicts remain: poll again
	Proceed                   // no conflict counts: go on
	Conflict                  // conflicts and GUARD_NO_WAIT: fail now
	Superseded                // newest_wins and a newer conflicting pipeline: give way
)

func (v Verdict) String() string {
	return [...]string{"wait", "proceed", "conflict", "superseded"}[v]
}

// Decision is the outcome of Evaluate for one job.
type Decision struct {
	Verdict Verdict
	// Blocking are the conflicting pipelines the job waits for (Wait) or
	// fails on (Conflict), in snapshot order.
	Blocking []Pipeline
	// SupersededBy is the newest newer conflicting pipeline (Superseded).
	SupersededBy int64
	// Cancel are older conflicting pipelines to cancel (newest_wins with
	// CancelOlder); the job waits until they no longer match.
	Cancel []Pipeline
	// Cancelled are the pipelines this poll cancelled for the job (as
	// listed, with the status GitLab answered to the cancel), for its log.
	Cancelled []Pipeline
	// Stopping are older pipelines of a matching ref being cancelled
	// (canceling: their jobs still stop) that a CancelOlder job waits for,
	// whatever the status regex: they are in Blocking too.
	Stopping []Pipeline
}

// Message is a one-line explanation for a job's log or failure.
func (d Decision) Message(r *Rule) string {
	switch d.Verdict {
	case Proceed:
		return "No other conflicting pipelines detected, proceeding ..."
	case Superseded:
		return fmt.Sprintf("superseded by pipeline %d", d.SupersededBy)
	}
	ids := make([]string, len(d.Blocking))
	for i, p := range d.Blocking {
		ids[i] = "#" + strconv.FormatInt(p.ID, 10)
	}
	return fmt.Sprintf("%d other pipelines in (%s) state: %s", len(d.Blocking), r.StatusRegex, strings.Join(ids, " "))
}

// Evaluate decides for the job of pipeline own from a snapshot. It is pure:
// no I/O, the same snapshot serves every job of the project.
func (r *Rule) Evaluate(snap *Snapshot, own int64) Decision {
	var older, newer []Pipeline
	for _, p := range r.Matching(snap.Pipelines, own) {
		if !r.jobConflicts(snap, p.ID) {
			continue
		}
		if p.ID < own {
			older = append(older, p)
		} else {
			newer = append(newer, p)
		}
	}
	var d Decision
	switch r.Order {
	case Any:
		d.Blocking = append(older, newer...)
		slices.SortFunc(d.Blocking, func(a, b Pipeline) int { return indexOf(snap, a.ID) - indexOf(snap, b.ID) })
	case OldestFirst:
		d.Blocking = older
	case NewestWins:
		if len(newer) > 0 {
			d.Verdict = Superseded
			for _, p := range newer {
				d.SupersededBy = max(d.SupersededBy, p.ID)
			}
			return d
		}
		d.Blocking = older
		if r.CancelOlder {
			d.Cancel = older
			// Going on while the cancelled deploy still stops would
			// overlap with it: wait until it is canceled.
			for _, p := range snap.Pipelines {
				if p.ID < own && p.Status == statusCanceling && r.ref.MatchString(p.Ref) && !slices.ContainsFunc(older, func(o Pipeline) bool { return o.ID == p.ID }) {
					d.Stopping = append(d.Stopping, p)
				}
			}
			if len(d.Stopping) > 0 {
				d.Blocking = append(slices.Clone(older), d.Stopping...)
				slices.SortFunc(d.Blocking, func(a, b Pipeline) int { return indexOf(snap, a.ID) - indexOf(snap, b.ID) })
			}
		}
	}
	switch {
	case len(d.Blocking) == 0:
		d.Verdict = Proceed
	case r.NoWait && len(d.Cancel) == 0 && len(d.Stopping) < len(d.Blocking):
		d.Verdict = Conflict
	default:
		d.Verdict = Wait
	}
	return d
}

func indexOf(snap *Snapshot, id int64) int {
	for i, p := range snap.Pipelines {
		if p.ID == id {
			return i
		}
	}
	return -1
}

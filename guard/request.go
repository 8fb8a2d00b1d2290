package guard

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"gitlab.com/paas-runner/paas-runner/job"
)

// Mode is a process mode: the order in which jobs waiting for the same lock
// or pool get it.
type Mode string

// Process modes, as GitLab's resource groups name them.
const (
	Unordered        Mode = "unordered"
	OldestFirst      Mode = "oldest_first"
	NewestFirst      Mode = "newest_first"
	NewestReadyFirst Mode = "newest_ready_first"
)

// ParseMode checks a process mode name.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case Unordered, OldestFirst, NewestFirst, NewestReadyFirst:
		return m, nil
	}
	return "", fmt.Errorf("unknown process mode %q (want unordered, oldest_first, newest_first or newest_ready_first)", s)
}

// class puts modes that order the same way together: newest_first and
// newest_ready_first are the same here (a runner sees only the jobs it
// acquired, all of them ready).
func (m Mode) class() int {
	switch m {
	case OldestFirst:
		return 0
	case NewestFirst, NewestReadyFirst:
		return 1
	}
	return 2
}

// Job variables a job declares its guards with.
const (
	VarLock      = "PAAS_LOCK"
	VarPool      = "PAAS_POOL"
	VarMode      = "PAAS_PROCESS_MODE"
	VarTimeout   = "PAAS_LOCK_TIMEOUT"
	VarNoWait    = "PAAS_LOCK_NO_WAIT"
	VarSupersede = "PAAS_LOCK_SUPERSEDE"
)

// Limits on what a job may declare.
const (
	MaxNames       = 16  // locks and pools together
	MaxNameLength  = 100 // one lock or pool name
	DefaultTimeout = time.Hour
)

// Demand is one thing a job needs: a lock of a pool. Lock "" is any free
// lock of the pool (Concourse acquire); a named one is that lock (claim).
// Mutex locks (project, group, environment) are one-lock pools.
type Demand struct {
	Pool string `json:"pool"`
	Lock string `json:"lock,omitempty"`
}

// Request is what one job asks for, read from its variables.
type Request struct {
	Job       JobRef
	Demands   []Demand
	Mode      Mode // "" when the job did not say
	Timeout   time.Duration
	NoWait    bool
	Supersede bool
	// JobTimeout is the job's own timeout (for the lease).
	JobTimeout time.Duration
	// Namespace is the job's top-level namespace (pool access).
	Namespace string
	// names as the job gave them, by demand index (for PAAS_LOCKS)
	display []string
}

// DeclarationError is a job asking for something it cannot have; the job
// is failed at once with it.
type DeclarationError struct{ Msg string }

func (e *DeclarationError) Error() string { return e.Msg }

// Mutex pool ids. A project lock "production" of acme/web is the one-lock
// pool "project:acme%2Fweb:production"; the lock inside is MutexLock.
const (
	MutexLock     = "lock"
	projectPrefix = "project:"
	groupPrefix   = "group:"
)

func projectPool(project, name string) string {
	return projectPrefix + escapeScope(project) + ":" + name
}

func groupPool(ns, name string) string { return groupPrefix + escapeScope(ns) + ":" + name }

func escapeScope(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "%", "%25"), "/", "%2F")
}

func unescapeScope(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "%2F", "/"), "%25", "%")
}

// IsMutex tells whether a pool id is a project or group lock.
func IsMutex(pool string) bool {
	return strings.HasPrefix(pool, projectPrefix) || strings.HasPrefix(pool, groupPrefix)
}

// DisplayName is how logs and metrics name a pool id: "lock production of
// acme/web", "lock group:deploy of acme", "pool aws".
func DisplayName(pool string) string {
	kind, scope, name, ok := splitMutex(pool)
	switch {
	case !ok:
		return "pool " + pool
	case kind == groupPrefix:
		return fmt.Sprintf("lock group:%s of %s", name, scope)
	default:
		return fmt.Sprintf("lock %s of %s", name, scope)
	}
}

// GuardLabel is the metrics label of a pool id.
func GuardLabel(pool string) string {
	kind, scope, name, ok := splitMutex(pool)
	switch {
	case !ok:
		return "pool:" + pool
	case kind == groupPrefix:
		return "lock:" + scope + ":group:" + name
	default:
		return "lock:" + scope + ":" + name
	}
}

func splitMutex(pool string) (kind, scope, name string, ok bool) {
	for _, p := range []string{projectPrefix, groupPrefix} {
		if rest, found := strings.CutPrefix(pool, p); found {
			scope, name, ok = strings.Cut(rest, ":")
			return p, unescapeScope(scope), name, ok
		}
	}
	return "", "", "", false
}

// ValidName is the charset of lock and pool names: letters, digits, '.',
// '_', '-', not starting with '.' (hidden files are not locks in a git
// repository), at most MaxNameLength long.
func ValidName(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty name")
	case len(s) > MaxNameLength:
		return fmt.Errorf("name %.20q… is longer than %d characters", s, MaxNameLength)
	case s[0] == '.':
		return fmt.Errorf("name %q starts with '.'", s)
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("name %q has the character %q (allowed: letters, digits, '.', '_', '-')", s, c)
		}
	}
	return nil
}

// PoolPolicy is what the admin says about one pool.
type PoolPolicy struct {
	// Namespaces allowed to use the pool; empty: all.
	Namespaces []string
	Mode       Mode // "" = default_process_mode
	Supersede  bool
	// Locks are the pool's locks, name → metadata, when the pools are the
	// configuration's (Policy.Declared: the local backend).
	Locks map[string]string
}

// Policy is the admin side of the decisions: declared pools and defaults.
type Policy struct {
	DefaultMode      Mode
	LockEnvironments bool
	// Pools by name. With the local backend a pool exists only here; with
	// the git backend pools are the repository's and this only restricts.
	Pools map[string]PoolPolicy
	// Declared: the pools and their locks are Pools' (the local backend),
	// not the store's. A pool or lock removed from Pools goes once free;
	// a job waiting for one fails.
	Declared bool
}

// declaredLocks are the declared pools' locks (pool → lock → metadata).
func (p *Policy) declaredLocks() map[string]map[string]string {
	out := make(map[string]map[string]string, len(p.Pools))
	for name, pp := range p.Pools {
		locks := pp.Locks
		if locks == nil {
			locks = map[string]string{}
		}
		out[name] = locks
	}
	return out
}

// checkDeclared reports a demand the declared pools, and the locks added
// to st with `paas-runner pool`, do not have (nil with the git backend,
// whose pools are the repository's, or for mutexes).
func (p *Policy) checkDeclared(ds []Demand, st *State) error {
	if p == nil || !p.Declared {
		return nil
	}
	for _, d := range ds {
		if IsMutex(d.Pool) {
			continue
		}
		if !p.declaresPool(d.Pool, st) {
			return &DeclarationError{Msg: fmt.Sprintf("%s: pool %q does not exist on this runner", VarPool, d.Pool)}
		}
		if _, ok := p.Pools[d.Pool].Locks[d.Lock]; d.Lock != "" && !ok && !added(st, d.Pool, d.Lock) {
			return &DeclarationError{Msg: fmt.Sprintf("%s: pool %q has no lock %q on this runner", VarPool, d.Pool, d.Lock)}
		}
	}
	return nil
}

// declaresPool: a pool of the configuration, or one with a lock added
// with `paas-runner pool` (local backend).
func (p *Policy) declaresPool(pool string, st *State) bool {
	if _, ok := p.Pools[pool]; ok {
		return true
	}
	if st == nil || st.Pools[pool] == nil {
		return false
	}
	for _, l := range st.Pools[pool].Locks {
		if l.Added {
			return true
		}
	}
	return false
}

func added(st *State, pool, lock string) bool {
	if st == nil || st.Pools[pool] == nil {
		return false
	}
	l := st.Pools[pool].Locks[lock]
	return l != nil && l.Added
}

func (p *Policy) defaultMode() Mode {
	if p == nil || p.DefaultMode == "" {
		return OldestFirst
	}
	return p.DefaultMode
}

// ParseRequest reads a job's guard declarations. It returns nil, nil for a
// job that declares none. poolExists tells whether a pool exists (the
// backend knows). Errors are *DeclarationError.
func ParseRequest(p *job.Payload, pol *Policy, ref JobRef, poolExists func(string) bool) (*Request, error) {
	vars := p.Variables
	get := func(k string) string { return strings.TrimSpace(vars.Expand(vars.Get(k))) }
	fail := func(format string, a ...any) (*Request, error) {
		return nil, &DeclarationError{Msg: fmt.Sprintf(format, a...)}
	}
	// The scope (project, top-level namespace) and the order (pipeline)
	// are GitLab's predefined variables, the first of their name in the
	// payload: GitLab gives predefined variables the lowest precedence, so
	// a job's own variables of the same name come after them, and they
	// must not let a job of another namespace into a pool, take another
	// project's lock or supersede its jobs.
	project := firstNonEmpty(predefined(vars, "CI_PROJECT_PATH"), p.JobInfo.ProjectFullPath)
	ns := predefined(vars, "CI_PROJECT_ROOT_NAMESPACE")
	if ns == "" {
		ns, _, _ = strings.Cut(project, "/")
	}
	ref.Project = project
	if ref.PipelineID == 0 {
		ref.PipelineID = p.JobInfo.PipelineID
		if v, err := strconv.ParseInt(predefined(vars, "CI_PIPELINE_ID"), 10, 64); err == nil && ref.PipelineID == 0 {
			ref.PipelineID = v
		}
	}
	if ref.Ref == "" {
		ref.Ref = firstNonEmpty(predefined(vars, "CI_COMMIT_REF_NAME"), p.GitInfo.Ref)
	}
	r := &Request{Job: ref, Namespace: ns, Timeout: DefaultTimeout, JobTimeout: time.Duration(p.RunnerInfo.Timeout) * time.Second}
	if r.JobTimeout <= 0 {
		r.JobTimeout = time.Hour
	}
	seen := map[Demand]bool{}
	add := func(d Demand, display string) bool {
		if seen[d] {
			return false
		}
		seen[d] = true
		r.Demands = append(r.Demands, d)
		r.display = append(r.display, display)
		return true
	}
	locks, pools := get(VarLock), get(VarPool)
	env := vars.Get("CI_ENVIRONMENT_NAME")
	if locks == "" && pools == "" && !(pol != nil && pol.LockEnvironments && env != "") {
		return nil, nil
	}
	if project == "" {
		return fail("%s: the job has no CI_PROJECT_PATH: cannot scope its locks", VarLock)
	}
	lockNames, err := splitNames(VarLock, locks)
	if err != nil {
		return nil, err
	}
	poolNames, err := splitNames(VarPool, pools)
	if err != nil {
		return nil, err
	}
	if n := len(lockNames) + len(poolNames); n > MaxNames {
		return fail("%s and %s name %d locks and pools: at most %d", VarLock, VarPool, n, MaxNames)
	}
	for _, name := range lockNames {
		if g, ok := strings.CutPrefix(name, "group:"); ok {
			if err := ValidName(g); err != nil {
				return fail("%s: %q: %v", VarLock, name, err)
			}
			if ns == "" {
				return fail("%s: %q: the job has no CI_PROJECT_ROOT_NAMESPACE", VarLock, name)
			}
			if !add(Demand{Pool: groupPool(ns, g), Lock: MutexLock}, name) {
				return fail("%s: %q is named twice", VarLock, name)
			}
			continue
		}
		if err := ValidName(name); err != nil {
			return fail("%s: %q: %v (a group lock is written group:NAME)", VarLock, name, err)
		}
		if !add(Demand{Pool: projectPool(project, name), Lock: MutexLock}, name) {
			return fail("%s: %q is named twice", VarLock, name)
		}
	}
	if pol != nil && pol.LockEnvironments && env != "" {
		// environment names are GitLab's: kept as they are
		add(Demand{Pool: projectPool(project, "environment:"+env), Lock: MutexLock}, "environment:"+env)
	}
	for _, name := range poolNames {
		pool, lock, named := strings.Cut(name, "/")
		if err := ValidName(pool); err != nil {
			return fail("%s: %q: %v", VarPool, name, err)
		}
		if named {
			if err := ValidName(lock); err != nil {
				return fail("%s: %q: lock: %v", VarPool, name, err)
			}
		}
		if poolExists != nil && !poolExists(pool) {
			return fail("%s: pool %q does not exist on this runner", VarPool, pool)
		}
		if pp, ok := pol.pool(pool); ok && len(pp.Namespaces) > 0 && !contains(pp.Namespaces, ns) {
			return fail("%s: pool %q is not open to namespace %q (allowed: %s)", VarPool, pool, ns, strings.Join(pp.Namespaces, ", "))
		}
		if !add(Demand{Pool: pool, Lock: lock}, name) {
			return fail("%s: %q is named twice", VarPool, name)
		}
	}
	if m := get(VarMode); m != "" {
		mode, err := ParseMode(m)
		if err != nil {
			return fail("%s: %v", VarMode, err)
		}
		r.Mode = mode
	}
	if t := get(VarTimeout); t != "" {
		n, err := strconv.ParseInt(t, 10, 64)
		if err != nil || n <= 0 || n > 7*24*3600 {
			return fail("%s: %q is not a number of seconds between 1 and 604800", VarTimeout, t)
		}
		r.Timeout = time.Duration(n) * time.Second
	}
	if r.NoWait, err = parseBool(VarNoWait, get(VarNoWait)); err != nil {
		return nil, err
	}
	if r.Supersede, err = parseBool(VarSupersede, get(VarSupersede)); err != nil {
		return nil, err
	}
	return r, nil
}

func (p *Policy) pool(name string) (PoolPolicy, bool) {
	if p == nil {
		return PoolPolicy{}, false
	}
	pp, ok := p.Pools[name]
	return pp, ok
}

func splitNames(key, s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	if len(parts) > MaxNames {
		return nil, &DeclarationError{Msg: fmt.Sprintf("%s names %d locks: at most %d", key, len(parts), MaxNames)}
	}
	out := make([]string, 0, len(parts))
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" {
			return nil, &DeclarationError{Msg: fmt.Sprintf("%s: name %d of %q is empty", key, i+1, s)}
		}
		out = append(out, p)
	}
	return out, nil
}

func parseBool(key, s string) (bool, error) {
	switch strings.ToLower(s) {
	case "", "false", "0", "no":
		return false, nil
	case "true", "1", "yes":
		return true, nil
	}
	return false, &DeclarationError{Msg: fmt.Sprintf("%s: %q is not true or false", key, s)}
}

// predefined is the first variable named key: GitLab's predefined value
// when the job also sets one of that name (GitLab sends both, predefined
// first; the runner, and the job, see the last).
func predefined(vars job.Variables, key string) string {
	for _, v := range vars {
		if v.Key == key {
			return v.Value
		}
	}
	return ""
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Variables are what a job holding its locks is handed: PAAS_LOCKS, and
// per pool lock PAAS_POOL_<POOL>_NAME / _METADATA, plus PAAS_POOL_NAME /
// PAAS_POOL_METADATA when it holds exactly one pool lock.
func (r *Request) Variables(claims []Claim, metadata func(Claim) string) []job.Variable {
	var held []string
	var poolVars []job.Variable
	npool := 0
	for i, d := range r.Demands {
		c := claims[i]
		if IsMutex(d.Pool) {
			held = append(held, r.display[i])
			continue
		}
		npool++
		held = append(held, c.Pool+"/"+c.Lock)
		up := envName(c.Pool)
		md := metadata(c)
		poolVars = append(poolVars,
			job.Variable{Key: "PAAS_POOL_" + up + "_NAME", Value: c.Lock, Public: true},
			job.Variable{Key: "PAAS_POOL_" + up + "_METADATA", Value: md, Public: false, Raw: true})
		if npool == 1 {
			poolVars = append(poolVars,
				job.Variable{Key: "PAAS_POOL_NAME", Value: c.Lock, Public: true},
				job.Variable{Key: "PAAS_POOL_METADATA", Value: md, Public: false, Raw: true})
		}
	}
	if npool > 1 { // PAAS_POOL_NAME/_METADATA only for exactly one
		kept := poolVars[:0]
		for _, v := range poolVars {
			if v.Key != "PAAS_POOL_NAME" && v.Key != "PAAS_POOL_METADATA" {
				kept = append(kept, v)
			}
		}
		poolVars = kept
	}
	out := []job.Variable{{Key: "PAAS_LOCKS", Value: strings.Join(held, ","), Public: true}}
	return append(out, poolVars...)
}

func envName(pool string) string {
	b := []byte(strings.ToUpper(pool))
	for i, c := range b {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	return string(b)
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

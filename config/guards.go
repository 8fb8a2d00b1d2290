package config

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Guards is the [guards] section: deployment locks and environment pools.
// Without the section locks work with the local backend and the defaults.
type Guards struct {
	// Backend is "local" (this daemon's file beside the state file) or
	// "git" (a shared repository in Concourse pool-resource layout).
	Backend            string
	DefaultProcessMode string
	// MaxWaitingJobs jobs wait without taking a concurrent, limit or
	// provisioning slot; more wait holding theirs.
	MaxWaitingJobs int
	// LeaseMargin: a hold expires at the job's timeout plus this.
	LeaseMargin time.Duration
	// LockEnvironments: a job with CI_ENVIRONMENT_NAME takes the project
	// lock environment:<name>.
	LockEnvironments bool
	Git              GuardsGit
	Pools            []GuardPool
}

// GuardsGit is [guards.git].
type GuardsGit struct {
	URL      string
	Branch   string
	Username string
	// Password is password, or the content of password_file (trimmed);
	// never logged.
	Password     string
	PasswordFile string
	RetryDelay   time.Duration
}

// GuardPool is one [[guards.pools]] entry.
type GuardPool struct {
	Name        string
	Namespaces  []string
	ProcessMode string
	Supersede   bool
	// Locks: lock name → metadata (local backend only).
	Locks map[string]string
}

// Guards defaults.
const (
	DefaultGuardsMaxWaitingJobs = 200
	DefaultGuardsLeaseMargin    = 10 * time.Minute
	DefaultGuardsRetryDelay     = 2 * time.Second
	DefaultGuardsProcessMode    = "oldest_first"
)

var processModes = []string{"unordered", "oldest_first", "newest_first", "newest_ready_first"}

func defaultGuards() Guards {
	return Guards{Backend: "local", DefaultProcessMode: DefaultGuardsProcessMode, MaxWaitingJobs: DefaultGuardsMaxWaitingJobs,
		LeaseMargin: DefaultGuardsLeaseMargin, Git: GuardsGit{Branch: "main", RetryDelay: DefaultGuardsRetryDelay}}
}

// decodeGuards decodes and validates [guards] (prims nil: no section).
func (d *decoder) decodeGuards(prims map[string]toml.Primitive) Guards {
	g := defaultGuards()
	if prims == nil {
		return g
	}
	var git map[string]toml.Primitive
	var pools []map[string]toml.Primitive
	var leaseMargin string
	d.decodeFields("guards", prims, fieldSet{
		"backend":              &g.Backend,
		"default_process_mode": &g.DefaultProcessMode,
		"max_waiting_jobs":     &g.MaxWaitingJobs,
		"lease_margin":         &leaseMargin,
		"lock_environments":    &g.LockEnvironments,
		"git":                  &git,
		"pools":                &pools,
	}, nil)
	if leaseMargin != "" {
		g.LeaseMargin = d.duration("guards.lease_margin", leaseMargin)
	}
	if !oneOf(g.Backend, "local", "git") {
		d.errKey("guards.backend", fmt.Sprintf("unknown backend %q (want local or git)", g.Backend))
	}
	if !oneOf(g.DefaultProcessMode, processModes...) {
		d.errKey("guards.default_process_mode", badMode(g.DefaultProcessMode))
	}
	if g.MaxWaitingJobs <= 0 && d.defined("guards.max_waiting_jobs") {
		d.errKey("guards.max_waiting_jobs", "must be a positive number of jobs")
	}
	d.intRange("guards.max_waiting_jobs", g.MaxWaitingJobs, maxJobs)
	if git != nil {
		var retry string
		d.decodeFields("guards.git", git, fieldSet{
			"url": &g.Git.URL, "branch": &g.Git.Branch, "username": &g.Git.Username,
			"password": &g.Git.Password, "password_file": &g.Git.PasswordFile, "retry_delay": &retry,
		}, nil)
		if retry != "" {
			g.Git.RetryDelay = d.duration("guards.git.retry_delay", retry)
		}
		if g.Git.PasswordFile != "" {
			if g.Git.Password != "" {
				d.errKey("guards.git.password_file", "set password or password_file, not both")
			}
			// relative to the configuration's directory, as the other *_file keys
			if !filepath.IsAbs(g.Git.PasswordFile) {
				g.Git.PasswordFile = filepath.Join(filepath.Dir(d.file), g.Git.PasswordFile)
			}
			data, err := os.ReadFile(g.Git.PasswordFile)
			if err != nil {
				d.errKey("guards.git.password_file", fmt.Sprintf("cannot read %s: %v", g.Git.PasswordFile, unwrapPathError(err)))
			} else if g.Git.Password = strings.TrimSpace(string(data)); g.Git.Password == "" {
				d.errKey("guards.git.password_file", fmt.Sprintf("%s is empty", g.Git.PasswordFile))
			} else {
				d.warnExposedSecret("guards.git.password_file", g.Git.PasswordFile)
			}
		}
		if g.Git.Branch == "" {
			d.errKey("guards.git.branch", "must not be empty")
		}
	}
	// [guards.git] is checked with the local backend too (README)
	if g.Git.URL == "" {
		if g.Backend == "git" {
			d.errKey("guards.git.url", "required with backend = \"git\": the lock repository's URL")
		}
	} else if u, err := url.Parse(g.Git.URL); err != nil || !oneOf(u.Scheme, "http", "https", "file") || (u.Scheme != "file" && u.Host == "") {
		d.errKey("guards.git.url", fmt.Sprintf("%q is not an http://, https:// or file:// URL", g.Git.URL))
	} else if u.User != nil {
		d.errKey("guards.git.url", "put the credentials in username and password (or password_file), not in the URL")
	}
	seen := map[string]int{}
	for i, pp := range pools {
		p := fmt.Sprintf("guards.pools[%d]", i)
		var gp GuardPool
		var locks map[string]toml.Primitive
		d.decodeFields(p, pp, fieldSet{
			"name": &gp.Name, "namespaces": &gp.Namespaces, "process_mode": &gp.ProcessMode,
			"supersede": &gp.Supersede, "locks": &locks,
		}, nil)
		if err := validGuardName(gp.Name); err != nil {
			d.errKey(p+".name", err.Error())
		} else if j, dup := seen[gp.Name]; dup {
			d.errKey(p+".name", fmt.Sprintf("pool %q is also guards.pools[%d]", gp.Name, j))
		} else {
			seen[gp.Name] = i
		}
		if gp.ProcessMode != "" && !oneOf(gp.ProcessMode, processModes...) {
			d.errKey(p+".process_mode", badMode(gp.ProcessMode))
		}
		for j, ns := range gp.Namespaces {
			if ns == "" || strings.Contains(ns, "/") {
				key := fmt.Sprintf("%s.namespaces[%d]", p, j)
				d.keys[key] = d.guardsLine(key)
				d.errKey(key, fmt.Sprintf("%q is not a top-level namespace", ns))
			}
		}
		if locks != nil {
			if g.Backend == "git" {
				d.errKey(p+".locks", "with backend = \"git\" the locks are the repository's files: use paas-runner pool add")
			}
			gp.Locks = map[string]string{}
			for _, k := range sortedKeys(locks) {
				key := p + ".locks." + k
				d.note(key, locks[k])
				var md string
				if !d.decodeValue(key, locks[k], &md) {
					continue
				}
				if err := validGuardName(k); err != nil {
					d.errKey(key, err.Error())
					continue
				}
				gp.Locks[k] = md
			}
		} else if g.Backend == "local" && gp.Name != "" {
			// no line of its own: the line of the pool's name
			d.errs = append(d.errs, &Error{File: d.file, Line: d.lineOfKey(p + ".name"), Key: p + ".locks",
				Msg: "required with the local backend: the pool's locks (name = metadata)"})
		}
		g.Pools = append(g.Pools, gp)
	}
	return g
}

func badMode(m string) string {
	return fmt.Sprintf("unknown process mode %q (want %s)", m, strings.Join(processModes, ", "))
}

func (d *decoder) duration(key, s string) time.Duration {
	v, err := time.ParseDuration(s)
	if err != nil || v <= 0 {
		d.errKey(key, fmt.Sprintf("%q is not a positive duration such as \"10m\" or \"2s\"", s))
		return 0
	}
	return v
}

// validGuardName mirrors guard.ValidName (config imports no project package).
func validGuardName(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("required: letters, digits, '.', '_', '-'")
	case len(s) > 100:
		return fmt.Errorf("longer than 100 characters")
	case s[0] == '.':
		return fmt.Errorf("%q starts with '.'", s)
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%q has the character %q (allowed: letters, digits, '.', '_', '-')", s, c)
		}
	}
	return nil
}

var (
	guardPoolKeyRe = regexp.MustCompile(`^guards\.pools\[(\d+)\]\.(.+)$`)
	guardPoolsHdr  = regexp.MustCompile(`^\s*\[\[\s*guards\s*\.\s*pools\s*\]\]`)
)

// guardsLine finds the line of a key of a [[guards.pools]] entry in the
// text (toml's metadata keeps one position per dotted key, shared by every
// entry); 0 when key is not one.
func (d *decoder) guardsLine(key string) int {
	m := guardPoolKeyRe.FindStringSubmatch(key)
	if m == nil || d.loc == nil {
		return 0
	}
	i, _ := strconv.Atoi(m[1])
	want, k := "guards.pools", m[2]
	if rest, ok := strings.CutPrefix(k, "locks."); ok {
		want, k = "guards.pools.locks", rest
	} else if j := strings.IndexByte(k, '['); j > 0 {
		k = k[:j]
	}
	lines := d.loc.lines
	start, n := -1, -1
	for ln, line := range lines {
		if guardPoolsHdr.MatchString(line) {
			if n++; n == i {
				start = ln
				break
			}
		}
	}
	if start < 0 {
		return 0
	}
	keyRe := regexp.MustCompile(`^\s*"?` + regexp.QuoteMeta(k) + `"?\s*=`)
	table := "guards.pools"
	for ln := start + 1; ln < len(lines); ln++ {
		if guardPoolsHdr.MatchString(lines[ln]) {
			break
		}
		if h := anyHeader.FindStringSubmatch(lines[ln]); h != nil {
			table = strings.ReplaceAll(h[1], " ", "")
			if table == want+"."+k {
				return ln + 1
			}
			continue
		}
		if table == want && keyRe.MatchString(lines[ln]) {
			return ln + 1
		}
	}
	return 0
}

package main

// `paas-runner guard`: a drop-in gitlab-job-guard for job scripts on any
// runner. Same flags and long names, environment variables beating flags
// (gitlab-job-guard appends them to argv), same defaults, exit codes and
// output lines; plus GUARD_ORDER (default oldest_first: no deadlock between
// guarded pipelines), GUARD_NO_WAIT, GUARD_CANCEL_OLDER and the narrowing
// variables GUARD_JOB_REGEX / GUARD_STAGE_REGEX.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	// roots for job images without a CA bundle (busybox, scratch): used
	// only where the system has none
	_ "golang.org/x/crypto/x509roots/fallback"

	"gitlab.com/paas-runner/paas-runner/internal/version"
	"gitlab.com/paas-runner/paas-runner/jobrunner"
	"gitlab.com/paas-runner/paas-runner/pipeguard"
)

// gitlab-job-guard's exit codes.
const (
	guardExitConflict = 7
	guardExitTimeout  = 11
)

type guardFlag struct {
	names  []string // canonical long name first (the one derived from env)
	env    string
	bool   bool
	help   string
	defVal string
}

var guardFlags = []guardFlag{
	{names: []string{"--guard-ref-regex", "-c", "--check", "--guard"}, env: "GUARD_REF_REGEX", defVal: pipeguard.DefaultRefRegex,
		help: "regular expression searched in other pipelines' refs (branch or tag)"},
	{names: []string{"--guard-status-regex", "-s", "--status-regex"}, env: "GUARD_STATUS_REGEX", defVal: pipeguard.DefaultStatusRegex,
		help: "regular expression matched at the start of other pipelines' status"},
	{names: []string{"--ci-api-v4-url", "-u", "--api-url"}, env: "CI_API_V4_URL", help: "GitLab API (v4) URL"},
	{names: []string{"--ci-project-id", "-p", "--project-id"}, env: "CI_PROJECT_ID", help: "project whose pipelines are examined"},
	{names: []string{"--ci-pipeline-id", "-i", "--pipeline-id"}, env: "CI_PIPELINE_ID", help: "the job's own pipeline (never a conflict)"},
	{names: []string{"--private-token", "-t", "--access-token", "--api-token"}, env: "PRIVATE_TOKEN",
		help: "access token with the read_api scope (api for GUARD_CANCEL_OLDER); GUARD_PRIVATE_TOKEN beats PRIVATE_TOKEN"},
	{names: []string{"--guard-timeout", "-w", "--timeout"}, env: "GUARD_TIMEOUT", defVal: "3600", help: "seconds before giving up (exit 11)"},
	{names: []string{"--silent", "-q", "--quiet"}, bool: true, help: "do not print the conflicting pipelines nor the progress dots"},
	{names: []string{"--no-wait", "-x", "--exit"}, bool: true, help: "exit 7 at once on a conflict (also GUARD_NO_WAIT=true)"},
}

const guardUsage = `usage: paas-runner guard [-h] [-c REGEX] [-s REGEX] [-u URL] [-p ID] [-i ID] [-t TOKEN] [-w SECONDS] [-q] [-x]

Waits while other pipelines of the project match the ref and status regular
expressions (gitlab-job-guard). Environment variables take precedence over
the flags. Exit 0: proceed; 7: conflict with --no-wait, or superseded
(GUARD_ORDER=newest_wins); 11: timeout; 1: GitLab refused; 2: usage.

Also read from the environment: GUARD_ORDER (oldest_first, newest_wins, any),
GUARD_NO_WAIT, GUARD_CANCEL_OLDER, GUARD_JOB_REGEX, GUARD_STAGE_REGEX,
GUARD_PRIVATE_TOKEN.

`

// guardEnv is how the guard reads its environment (os.LookupEnv, or a map in
// tests).
type guardEnv func(string) (string, bool)

// guardOptions are the test seams of runGuard.
type guardOptions struct {
	clock    pipeguard.Clock
	interval func() time.Duration
	now      func() time.Time
	pid      int
}

// guardHTTPClient trusts, besides the system's roots, the runner's CA
// bundle a job gets in CI_SERVER_TLS_CA_FILE (a file variable, as
// gitlab-runner sets it for a GitLab behind a private CA); nil (the
// default client) without it. Where the job image has no CA bundle at all
// (busybox, scratch), the roots are golang.org/x/crypto's fallback set.
func guardHTTPClient(env guardEnv) (*http.Client, error) {
	f, ok := env("CI_SERVER_TLS_CA_FILE")
	if !ok || f == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(f)
	if err != nil {
		return nil, fmt.Errorf("CI_SERVER_TLS_CA_FILE: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CI_SERVER_TLS_CA_FILE %s: no PEM certificate found", f)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}, nil
}

// asJobGuard answers under gitlab-job-guard's name (the inner runner puts
// this executable into job containers as /usr/local/bin/gitlab-job-guard):
// exactly `paas-runner guard` with the same arguments. handled is false
// under any other name.
func asJobGuard(argv []string, stdout, stderr io.Writer) (code int, handled bool) {
	if len(argv) == 0 || filepath.Base(argv[0]) != jobrunner.GuardName {
		return 0, false
	}
	return guardCmd(argv[1:], stdout, stderr), true
}

func guardCmd(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return runGuard(ctx, args, os.LookupEnv, stdout, stderr, guardOptions{})
}

// parseGuardArgs parses like Python's argparse: --long=value, --long value,
// unique prefixes of long names, -c value, -cvalue, -c=value, grouped short
// booleans (-qx); the last occurrence wins. Then every set environment
// variable is applied on top (gitlab-job-guard's precedence).
func parseGuardArgs(args []string, env guardEnv) (map[string]string, bool, error) {
	vals := map[string]string{}
	byName := map[string]*guardFlag{}
	for i := range guardFlags {
		for _, n := range guardFlags[i].names {
			byName[n] = &guardFlags[i]
		}
	}
	lookupLong := func(name string) (*guardFlag, error) {
		if f, ok := byName[name]; ok {
			return f, nil
		}
		var matches []string
		var found *guardFlag
		for n, f := range byName {
			if strings.HasPrefix(n, "--") && strings.HasPrefix(n, name) {
				matches = append(matches, n)
				found = f
			}
		}
		if len(matches) == 1 || (len(matches) > 1 && allSame(matches, byName)) {
			return found, nil
		}
		if len(matches) > 1 {
			return nil, fmt.Errorf("ambiguous option: %s could match %s", name, strings.Join(sortStrings(matches), ", "))
		}
		return nil, fmt.Errorf("unrecognized arguments: %s", name)
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-h" || a == "--help":
			return nil, true, nil
		case a == "--":
			if i+1 < len(args) {
				return nil, false, fmt.Errorf("unrecognized arguments: %s", strings.Join(args[i+1:], " "))
			}
			i = len(args)
		case strings.HasPrefix(a, "--"):
			name, val, hasVal := strings.Cut(a, "=")
			f, err := lookupLong(name)
			if err != nil {
				return nil, false, err
			}
			if f.bool {
				if hasVal {
					return nil, false, fmt.Errorf("argument %s: ignored explicit argument %q", strings.Join(f.names, "/"), val)
				}
				vals[f.names[0]] = "true"
				continue
			}
			if !hasVal {
				if i+1 >= len(args) || looksLikeFlag(args[i+1]) {
					return nil, false, fmt.Errorf("argument %s: expected one argument", strings.Join(f.names, "/"))
				}
				i++
				val = args[i]
			}
			vals[f.names[0]] = val
		case strings.HasPrefix(a, "-") && len(a) > 1:
			rest := a[1:]
			for rest != "" {
				f, ok := byName["-"+rest[:1]]
				if !ok {
					return nil, false, fmt.Errorf("unrecognized arguments: %s", a)
				}
				rest = rest[1:]
				if f.bool {
					vals[f.names[0]] = "true"
					continue
				}
				val := strings.TrimPrefix(rest, "=")
				if rest == "" {
					if i+1 >= len(args) || looksLikeFlag(args[i+1]) {
						return nil, false, fmt.Errorf("argument %s: expected one argument", strings.Join(f.names, "/"))
					}
					i++
					val = args[i]
				}
				vals[f.names[0]] = val
				rest = ""
			}
		default:
			return nil, false, fmt.Errorf("unrecognized arguments: %s", strings.Join(args[i:], " "))
		}
	}
	// Environment variables beat flags, as gitlab-job-guard documents; an
	// empty variable is ignored.
	for _, f := range guardFlags {
		if f.env == "" {
			continue
		}
		if v, ok := env(f.env); ok && v != "" {
			vals[f.names[0]] = v
		}
	}
	if v, ok := env(pipeguard.VarGuardToken); ok && v != "" {
		vals["--private-token"] = v
	}
	return vals, false, nil
}

func allSame(names []string, byName map[string]*guardFlag) bool {
	for _, n := range names[1:] {
		if byName[n] != byName[names[0]] {
			return false
		}
	}
	return true
}

func sortStrings(s []string) []string {
	out := append([]string(nil), s...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// looksLikeFlag: argparse takes "-x…" as an option, not a value, unless it
// is a negative number.
func looksLikeFlag(s string) bool {
	if len(s) < 2 || s[0] != '-' {
		return false
	}
	_, err := strconv.ParseFloat(s, 64)
	return err != nil
}

// guardLog writes gitlab-job-guard's log lines: "<time> <LEVEL> <name>
// <process>[<pid>]: <message>" on stdout.
type guardLog struct {
	mu  sync.Mutex
	out io.Writer
	now func() time.Time
	pid int
}

func (l *guardLog) line(level, msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.now()
	fmt.Fprintf(l.out, "%s,%03d %s paas-runner-guard MainProcess[%d]: %s\n", t.Format("2006-01-02 15:04:05"),
		t.Nanosecond()/1e6, level, l.pid, msg)
}

func runGuard(ctx context.Context, args []string, env guardEnv, stdout, stderr io.Writer, o guardOptions) int {
	vals, help, err := parseGuardArgs(args, env)
	if help {
		fmt.Fprint(stdout, guardUsage)
		for _, f := range guardFlags {
			def := ""
			if f.defVal != "" {
				def = fmt.Sprintf(" (default %s)", f.defVal)
			}
			envs := ""
			if f.env != "" {
				envs = " [" + f.env + "]"
			}
			fmt.Fprintf(stdout, "  %s%s\n        %s%s\n", strings.Join(f.names, ", "), envs, f.help, def)
		}
		return exitOK
	}
	usage := func(err error) int {
		fmt.Fprintf(stderr, "paas-runner guard: error: %v (see --help)\n", err)
		return exitUsage
	}
	if err != nil {
		return usage(err)
	}
	var missing []string
	for _, f := range guardFlags {
		if f.defVal == "" && !f.bool && vals[f.names[0]] == "" {
			envs := f.env
			if f.names[0] == "--private-token" {
				envs = pipeguard.VarGuardToken + " or " + f.env // GUARD_PRIVATE_TOKEN beats PRIVATE_TOKEN
			}
			missing = append(missing, strings.Join(f.names, "/")+" (or "+envs+")")
		}
	}
	if len(missing) > 0 {
		return usage(fmt.Errorf("the following arguments are required: %s", strings.Join(missing, ", ")))
	}
	base := pipeguard.Spec{RefRegex: vals["--guard-ref-regex"], StatusRegex: vals["--guard-status-regex"],
		NoWait: vals["--no-wait"] == "true"}
	if t, ok := vals["--guard-timeout"]; ok {
		n, err := strconv.Atoi(strings.TrimSpace(t))
		if err != nil || n < 0 {
			return usage(fmt.Errorf("argument -w/--timeout/--guard-timeout (or GUARD_TIMEOUT): invalid int value: %q", t))
		}
		base.Timeout = time.Duration(n) * time.Second
	}
	// GUARD_REF_REGEX etc. were applied to vals already; the variables only
	// the daemon's rule knows (order, narrowing, no-wait, cancel) come here.
	lookup := pipeguard.Lookup(func(name string) (string, bool) {
		switch name {
		case pipeguard.VarRefRegex, pipeguard.VarStatusRegex, pipeguard.VarTimeout:
			return "", false
		}
		return env(name)
	})
	spec, err := pipeguard.SpecFromVariables(lookup, base)
	if err != nil {
		return usage(err)
	}
	rule, err := pipeguard.NewRule(spec)
	if err != nil {
		return usage(err)
	}
	pipelineID, err := strconv.ParseInt(vals["--ci-pipeline-id"], 10, 64)
	if err != nil {
		return usage(fmt.Errorf("argument -i/--pipeline-id/--ci-pipeline-id: %q is not a pipeline id", vals["--ci-pipeline-id"]))
	}
	now := o.now
	if now == nil {
		now = time.Now
	}
	pid := o.pid
	if pid == 0 {
		pid = os.Getpid()
	}
	log := &guardLog{out: stdout, now: now, pid: pid}
	silent := vals["--silent"] == "true"
	hc, err := guardHTTPClient(env)
	if err != nil {
		return usage(err)
	}
	w := &pipeguard.Watcher{Clock: o.clock, Interval: o.interval, UserAgent: version.UserAgent(), HTTP: hc}
	var last []pipeguard.Pipeline
	summary := func(blocking []pipeguard.Pipeline) string {
		return fmt.Sprintf("%d other pipelines in (%s) state.", len(blocking), rule.StatusRegex)
	}
	printSummary := func(blocking []pipeguard.Pipeline) {
		fmt.Fprintln(stdout)
		log.line("INFO", summary(blocking))
		for _, p := range blocking {
			log.line("INFO", p.String())
		}
	}
	dot := func() { fmt.Fprint(stderr, ".") }
	// GUARD_CANCEL_OLDER's cancels, even with -q: they act on others'
	// pipelines
	cancelled := func(ps []pipeguard.Pipeline) {
		for _, p := range ps {
			log.line("INFO", "Cancelled older "+p.String())
		}
	}
	d, err := w.Wait(ctx, pipeguard.Request{APIURL: vals["--ci-api-v4-url"], Project: vals["--ci-project-id"],
		Token: vals["--private-token"], PipelineID: pipelineID, Rule: rule}, func(e pipeguard.Event) {
		switch e.Kind {
		case pipeguard.EventAPIError:
			log.line("ERROR", fmt.Sprintf("GuardApiAccessException(\"Failed to retrieve project pipeline data, %v\")", e.Err))
		case pipeguard.EventPolled:
			cancelled(e.Decision.Cancelled)
			if !silent {
				if e.Changed {
					printSummary(e.Decision.Blocking)
				} else {
					dot()
				}
			}
			last = e.Decision.Blocking
		}
	})
	cancelled(d.Cancelled)
	var te *pipeguard.TimeoutError
	switch {
	case errors.As(err, &te):
		log.line("ERROR", te.Error())
		return guardExitTimeout
	case ctx.Err() != nil:
		log.line("ERROR", "interrupted, giving up ...")
		return exitFatal
	case err != nil:
		log.line("ERROR", err.Error())
		return exitFatal
	}
	switch d.Verdict {
	case pipeguard.Conflict:
		if !silent {
			printSummary(d.Blocking)
		}
		log.line("ERROR", summary(d.Blocking)+". Exiting on request.")
		return guardExitConflict
	case pipeguard.Superseded:
		log.line("ERROR", fmt.Sprintf("superseded by pipeline %d, giving way ...", d.SupersededBy))
		return guardExitConflict
	}
	if !silent {
		if len(last) > 0 {
			printSummary(nil)
		} else {
			dot()
		}
	}
	log.line("INFO", "No other conflicting pipelines detected, proceeding ...")
	return exitOK
}

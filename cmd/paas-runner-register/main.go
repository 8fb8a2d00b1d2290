// Command paas-runner-register registers a runner with GitLab and writes
// its [[runners]] section into paas-runner's configuration, asking for what
// the flags do not give. It also verifies and unregisters runners.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator"
	"gitlab.com/paas-runner/paas-runner/internal/cliflags"
	"gitlab.com/paas-runner/paas-runner/internal/systemid"
	"gitlab.com/paas-runner/paas-runner/internal/version"
)

const (
	exitOK    = 0
	exitFatal = 1 // GitLab or network said no
	exitUsage = 2 // bad flags, missing values, duplicate, bad config file
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

const usage = `usage:
  paas-runner-register [flags] CONFIG            register a runner, append it to CONFIG
  paas-runner-register verify CONFIG             check every runner's token with GitLab
  paas-runner-register unregister --name N CONFIG  remove runner N from GitLab and CONFIG

Flags of register (anything not given is asked for, unless --non-interactive):
`

// executorsOffered are the executors a section can be written for.
var executorsOffered = []struct{ name, help string }{
	{"local-docker", "one container per job on a Docker engine (development, small setups)"},
	{"clever-docker", "one Clever Cloud application per job"},
}

type regFlags struct {
	url, token, regToken, name, executor, stateFile  string
	concurrent, limit                                int
	nonInteractive                                   bool
	description, tagList, accessLevel                string
	runUntagged, locked, paused                      bool
	dockerHost, dockerNetwork, innerImage            string
	ccOrgaID, ccToken, ccZone, ccFlavor, ccAttrToken string
	ccMultiTenant                                    bool
	set                                              map[string]bool
}

type errUsage struct{ msg string }

func (e *errUsage) Error() string { return e.msg }

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "verify":
			return verify(args[1:], stdout, stderr)
		case "unregister":
			return unregister(args[1:], stdout, stderr)
		case "--version", "-version":
			fmt.Fprintln(stdout, version.String())
			return exitOK
		}
	}
	f := &regFlags{}
	fs := flag.NewFlagSet("paas-runner-register", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&f.url, "url", "", "GitLab URL, e.g. https://gitlab.example.com")
	fs.StringVar(&f.token, "token", "", "runner authentication token (glrt-…), created in GitLab's UI")
	fs.StringVar(&f.regToken, "registration-token", "", "legacy registration token (deprecated by GitLab)")
	fs.StringVar(&f.name, "name", "", "runner name (default: this host's name)")
	fs.StringVar(&f.executor, "executor", "", "local-docker or clever-docker")
	fs.IntVar(&f.limit, "limit", 0, "this runner's cap on concurrent jobs (0: none)")
	fs.IntVar(&f.concurrent, "concurrent", 0, "jobs at once across runners (new file only; default 10)")
	fs.StringVar(&f.stateFile, "state-file", "", "state file path (new file only; default /var/lib/paas-runner/state.json)")
	fs.BoolVar(&f.nonInteractive, "non-interactive", false, "never ask: fail when a required value is missing")
	fs.StringVar(&f.description, "description", "", "legacy registration: runner description (default: name)")
	fs.StringVar(&f.tagList, "tag-list", "", "legacy registration: comma-separated tags")
	fs.BoolVar(&f.runUntagged, "run-untagged", false, "legacy registration: also run untagged jobs")
	fs.BoolVar(&f.locked, "locked", false, "legacy registration: lock the runner to its project")
	fs.BoolVar(&f.paused, "paused", false, "legacy registration: create the runner paused")
	fs.StringVar(&f.accessLevel, "access-level", "", "legacy registration: not_protected or ref_protected")
	fs.StringVar(&f.dockerHost, "local-docker-host", "", "local-docker: Docker engine (default unix:///var/run/docker.sock)")
	fs.StringVar(&f.dockerNetwork, "local-docker-network-mode", "", "local-docker: network of the host containers")
	fs.StringVar(&f.innerImage, "inner-image", "", "base image of job hosts (a Heptapod Runner image)")
	fs.StringVar(&f.ccOrgaID, "cc-orga-id", "", "clever-docker: Clever Cloud organisation id")
	fs.StringVar(&f.ccToken, "cc-token", "", "clever-docker: Clever Cloud API token")
	fs.BoolVar(&f.ccMultiTenant, "cc-multi-tenant", false, "clever-docker: organisation from GitLab group custom attributes")
	fs.StringVar(&f.ccAttrToken, "cc-gitlab-namespace-attributes-token", "", "clever-docker multi-tenant: GitLab admin token reading custom attributes")
	fs.StringVar(&f.ccZone, "cc-zone", "", "clever-docker: zone (default par)")
	fs.StringVar(&f.ccFlavor, "cc-default-flavor", "", "clever-docker: default flavor (default M)")
	pos, err := cliflags.Parse(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stderr, usage)
		fs.SetOutput(stderr)
		fs.PrintDefaults()
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "paas-runner-register: %v (see --help)\n", err)
		return exitUsage
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "paas-runner-register: expected exactly one CONFIG path (see --help)")
		return exitUsage
	}
	f.set = map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { f.set[fl.Name] = true })
	code, err := register(f, pos[0], newPrompter(stdin, stdout), stdout)
	if err != nil {
		fmt.Fprintf(stderr, "paas-runner-register: %v\n", err)
	}
	return code
}

func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an http:// or https:// URL", s)
	}
	if strings.HasSuffix(strings.TrimRight(u.Path, "/"), "/api/v4") {
		// as the daemon's loader: requests would go to …/api/v4/api/v4/…
		return fmt.Errorf("%q: give GitLab's own URL, without /api/v4", s)
	}
	return nil
}

func checkPositive(s string) error {
	if n, err := strconv.Atoi(s); err != nil || n <= 0 {
		return fmt.Errorf("%q is not a positive whole number", s)
	}
	return nil
}

func checkNonEmpty(s string) error {
	if strings.TrimSpace(s) == "" {
		return errors.New("a value is required")
	}
	return nil
}

func checkExecutor(s string) error {
	for _, e := range executorsOffered {
		if s == e.name {
			return nil
		}
	}
	return fmt.Errorf("%q is not one of local-docker, clever-docker", s)
}

func checkDockerHost(s string) error {
	if !strings.HasPrefix(s, "unix://") && !strings.HasPrefix(s, "tcp://") {
		return fmt.Errorf("%q: only unix:// and tcp:// Docker hosts are supported", s)
	}
	return nil
}

func checkYesNo(s string) error {
	switch strings.ToLower(s) {
	case "y", "yes", "n", "no", "true", "false":
		return nil
	}
	return errors.New("answer yes or no")
}

func isYes(s string) bool { s = strings.ToLower(s); return s == "y" || s == "yes" || s == "true" }

// value returns the flag's value, or asks for it; with --non-interactive a
// missing required value is a usage error naming the flag.
func (f *regFlags) value(p *prompter, flagName, cur, help, question, def string, secret, required bool, check func(string) error) (string, error) {
	if f.set[flagName] {
		if err := check(cur); err != nil {
			return "", &errUsage{fmt.Sprintf("--%s: %v", flagName, err)}
		}
		return cur, nil
	}
	if f.nonInteractive {
		if required && def == "" {
			return "", &errUsage{fmt.Sprintf("--%s is required with --non-interactive", flagName)}
		}
		return def, nil
	}
	ans, err := p.ask(help, question, def, secret, check)
	if errors.Is(err, errNoAnswer) {
		return "", &errUsage{fmt.Sprintf("standard input ended before an answer for --%s was given", flagName)}
	}
	return ans, err
}

func register(f *regFlags, path string, p *prompter, stdout io.Writer) (int, error) {
	existing, err := os.ReadFile(path)
	isNew := errors.Is(err, os.ErrNotExist)
	if err != nil && !isNew {
		return exitUsage, fmt.Errorf("reading %s: %w", path, err)
	}
	var cur *config.Config
	if !isNew {
		if cur, err = config.Parse(path, existing, config.Options{}); err != nil {
			return exitUsage, fmt.Errorf("%s is not a valid configuration; fix it first:\n%w", path, err)
		}
	}
	stateFile, concurrent := "", 0
	if isNew {
		if !f.nonInteractive {
			fmt.Fprintf(stdout, "This is a brand new configuration file: %s\n", path)
		}
		if stateFile, err = f.value(p, "state-file", f.stateFile, "The state file keeps track of jobs across restarts; its directory must be writable by paas-runner.",
			"State file path", "/var/lib/paas-runner/state.json", false, true, checkNonEmpty); err != nil {
			return exitUsage, err
		}
		c, err := f.value(p, "concurrent", strconv.Itoa(f.concurrent), "How many jobs may run at once, across every runner of this file.",
			"Concurrency", "10", false, true, checkPositive)
		if err != nil {
			return exitUsage, err
		}
		concurrent, _ = strconv.Atoi(c)
	} else {
		stateFile = cur.StateFile
	}
	gitlabURL, err := f.value(p, "url", f.url, "The GitLab instance to run jobs for.", "GitLab URL (for example https://gitlab.example.com)", "", false, true, checkURL)
	if err != nil {
		return exitUsage, err
	}
	legacy := f.set["registration-token"]
	token := f.token
	switch {
	case f.set["token"] && legacy:
		return exitUsage, &errUsage{"give --token or --registration-token, not both"}
	case f.set["token"] && !strings.HasPrefix(f.token, "glrt-"):
		return exitUsage, &errUsage{"--token: expected a runner authentication token (glrt-…); use --registration-token for a legacy registration token"}
	case legacy:
		token = f.regToken
		if err := checkNonEmpty(token); err != nil {
			return exitUsage, &errUsage{"--registration-token: " + err.Error()}
		}
	case !f.set["token"]:
		if token, err = f.value(p, "token", "", "Create the runner in GitLab (Admin > CI/CD > Runners, or a group's or project's CI/CD settings) and paste its token (glrt-…); a legacy registration token also works where GitLab still allows it.",
			"Runner token", "", true, true, checkNonEmpty); err != nil {
			return exitUsage, err
		}
		legacy = !strings.HasPrefix(token, "glrt-")
	}
	host, _ := os.Hostname()
	name, err := f.value(p, "name", f.name, "A name for this runner in the configuration and in GitLab.", "Runner name", host, false, true, checkNonEmpty)
	if err != nil {
		return exitUsage, err
	}
	if cur != nil {
		for _, r := range cur.Runners {
			if r.Name == name {
				return exitUsage, fmt.Errorf("a runner named %q is already in %s; choose another name", name, path)
			}
			if r.Token == token && !legacy {
				return exitUsage, fmt.Errorf("this token is already used by runner %q in %s", r.DisplayName(), path)
			}
		}
	}
	var help strings.Builder
	help.WriteString("Executors available:")
	for _, e := range executorsOffered {
		fmt.Fprintf(&help, "\n  %-14s %s", e.name, e.help)
	}
	executor, err := f.value(p, "executor", f.executor, help.String(), "Executor", "local-docker", false, true, checkExecutor)
	if err != nil {
		return exitUsage, err
	}
	sec := runnerSection{Name: name, URL: gitlabURL, Executor: executor, Limit: f.limit, Tables: map[string][]kv{}}
	if err := f.executorQuestions(p, &sec); err != nil {
		return exitUsage, err
	}

	// Ask GitLab.
	// The system id GitLab records the runner manager under is stored
	// next to the state file only once GitLab has accepted the runner: a
	// failed registration leaves the state directory as it was.
	sysID, freshID, sysErr := systemid.Peek(stateFile)
	if sysErr != nil {
		sysID, freshID = "", false
	}
	client, err := coordinator.New(coordinator.Config{URL: gitlabURL, Token: token, SystemID: sysID, UserAgent: version.UserAgent(),
		Info:  coordinator.Info{Name: version.Name, Version: version.Version, Revision: version.Revision, Platform: runtime.GOOS, Architecture: runtime.GOARCH, Executor: "docker"},
		Retry: coordinator.RetryPolicy{Attempts: 3}})
	if err != nil {
		return exitUsage, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var creds *coordinator.RunnerCredentials
	if legacy {
		desc := f.description
		if desc == "" {
			desc = name
		}
		var tags []string
		for _, t := range strings.Split(f.tagList, ",") {
			if t = strings.TrimSpace(t); t != "" {
				tags = append(tags, t)
			}
		}
		creds, err = client.RegisterRunner(ctx, coordinator.Registration{Description: desc, Tags: tags, RunUntagged: f.runUntagged || len(tags) == 0,
			Locked: f.locked, Paused: f.paused, AccessLevel: f.accessLevel})
	} else {
		creds, err = client.VerifyRunner(ctx)
	}
	if err != nil {
		return exitFatal, explain(err, legacy, gitlabURL)
	}
	sec.ID, sec.Token, sec.TokenExpiresAt, sec.TokenObtainedAt = creds.ID, creds.Token, creds.TokenExpiresAt, time.Now()

	var data []byte
	if isNew {
		data = newFile(concurrent, stateFile, sec)
	} else {
		data = appendRunner(existing, sec)
	}
	oldMode, err := writeConfig(path, data)
	if err != nil {
		return exitFatal, fmt.Errorf("writing %s: %w (GitLab registered runner id %d: remove it there if you give up)", path, err, creds.ID)
	}
	fmt.Fprint(stdout, modeNote(path, oldMode))
	if freshID {
		if _, sysErr = systemid.Store(stateFile, sysID); sysErr == nil {
			sysErr = giveToDirOwner(filepath.Dir(stateFile), systemid.Paths(stateFile))
		}
	}
	if sysErr != nil {
		fmt.Fprintf(stdout, "Note: the system id could not be stored next to the state file (%v); paas-runner creates it at first start.\n", sysErr)
	}
	fmt.Fprintf(stdout, "Runner %q registered (id %d) and written to %s. Start it with: paas-runner %s\n", name, creds.ID, path, path)
	return exitOK, nil
}

// executorQuestions fills the executor's keys: the section is complete, so
// that paas-runner runs with it at once.
func (f *regFlags) executorQuestions(p *prompter, sec *runnerSection) error {
	if f.set["inner-image"] {
		sec.Keys = append(sec.Keys, kv{"inner_image", f.innerImage})
	}
	switch sec.Executor {
	case "local-docker":
		h, err := f.value(p, "local-docker-host", f.dockerHost, "The Docker engine the job hosts run on.", "Docker host", "unix:///var/run/docker.sock", false, true, checkDockerHost)
		if err != nil {
			return err
		}
		t := []kv{{"host", h}}
		if f.dockerNetwork != "" {
			t = append(t, kv{"network_mode", f.dockerNetwork})
		}
		sec.Tables["local_docker"] = t
	case "clever-docker":
		if !f.set["inner-image"] {
			img, err := f.value(p, "inner-image", f.innerImage, "The image Clever Cloud runs each job with: paas-runner's host image pushed to a registry, or a Heptapod Runner image.",
				"Inner image", "", false, true, checkNonEmpty)
			if err != nil {
				return err
			}
			sec.Keys = append(sec.Keys, kv{"inner_image", img})
		}
		mt := "no"
		if f.set["cc-multi-tenant"] {
			mt = strconv.FormatBool(f.ccMultiTenant)
		}
		var err error
		if !f.set["cc-multi-tenant"] && !f.nonInteractive {
			if mt, err = p.ask("Multi-tenant: each GitLab top-level group has its own Clever Cloud organisation, read from the group's custom attributes.",
				"Multi-tenant", "no", false, checkYesNo); err != nil {
				return &errUsage{"standard input ended before an answer for --cc-multi-tenant was given"}
			}
		}
		if isYes(mt) {
			sec.Keys = append(sec.Keys, kv{"cc_multi_tenant", true})
			tok, err := f.value(p, "cc-gitlab-namespace-attributes-token", f.ccAttrToken, "A GitLab administrator token able to read group custom attributes.", "GitLab attributes token", "", true, true, checkNonEmpty)
			if err != nil {
				return err
			}
			sec.Keys = append(sec.Keys, kv{"cc_gitlab_namespace_attributes_token", tok})
		} else {
			orga, err := f.value(p, "cc-orga-id", f.ccOrgaID, "The Clever Cloud organisation that pays for the job hosts (orga_…).", "Clever Cloud organisation id", "", false, true, checkNonEmpty)
			if err != nil {
				return err
			}
			tok, err := f.value(p, "cc-token", f.ccToken, "", "Clever Cloud API token", "", true, true, checkNonEmpty)
			if err != nil {
				return err
			}
			sec.Keys = append(sec.Keys, kv{"cc_orga_id", orga}, kv{"cc_token", tok})
		}
		zone, err := f.value(p, "cc-zone", f.ccZone, "", "Clever Cloud zone", "par", false, true, checkNonEmpty)
		if err != nil {
			return err
		}
		flavor, err := f.value(p, "cc-default-flavor", f.ccFlavor, "The flavor of job hosts when a job does not set CI_CLEVER_CLOUD_FLAVOR.", "Default flavor", "M", false, true, checkNonEmpty)
		if err != nil {
			return err
		}
		sec.Keys = append(sec.Keys, kv{"cc_zone", zone}, kv{"cc_default_flavor", flavor})
	}
	return nil
}

// explain turns a GitLab refusal into one line an admin can act on.
func explain(err error, legacy bool, gitlabURL string) error {
	what := "runner token"
	if legacy {
		what = "registration token"
	}
	var ne net.Error
	switch st := coordinator.StatusOf(err); {
	case st == 403:
		return fmt.Errorf("%s rejected by %s (403)", what, gitlabURL)
	case st == 410:
		return fmt.Errorf("%s refused: registration tokens are disabled on %s (410); create the runner in GitLab and use --token glrt-…", what, gitlabURL)
	case st == 422:
		return fmt.Errorf("%s refused by %s (422): %v", what, gitlabURL, err)
	case st >= 500:
		return fmt.Errorf("%s is failing (%d); try again later: %v", gitlabURL, st, err)
	case st != 0:
		return fmt.Errorf("GitLab at %s answered %d: %v", gitlabURL, st, err)
	case errors.As(err, &ne) || strings.Contains(err.Error(), "dial") || strings.Contains(err.Error(), "connect"):
		return fmt.Errorf("cannot reach GitLab at %s: %v", gitlabURL, err)
	}
	return fmt.Errorf("talking to GitLab at %s: %v", gitlabURL, err)
}

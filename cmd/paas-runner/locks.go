package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/guard"
	"gitlab.com/paas-runner/paas-runner/internal/cliflags"
	"gitlab.com/paas-runner/paas-runner/state"
)

const locksUsage = `usage:
  paas-runner locks [--json] CONFIG                 holders, waiters in order, leases
  paas-runner locks release CONFIG NAME --yes       force-release one lock (as locks shows it)
  paas-runner pool add|add-claimed|remove|update CONFIG POOL LOCK [--metadata-file F]
                                                    pool-resource's operations (local backend: with the daemon stopped)
`

// locksCmd is `paas-runner locks …`.
func locksCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("paas-runner locks", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	asJSON := fs.Bool("json", false, "print JSON (as GET /debug/locks)")
	yes := fs.Bool("yes", false, "confirm a force release")
	pos, err := cliflags.Parse(fs, args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stderr, locksUsage)
		return exitOK
	case err != nil:
		return verbMistake(stderr, "locks", err.Error())
	case len(pos) == 0:
		return verbMistake(stderr, "locks", "missing CONFIG")
	}
	release := pos[0] == "release"
	if release {
		pos = pos[1:]
	}
	switch {
	case release && len(pos) == 0:
		return verbMistake(stderr, "locks", "release: missing CONFIG and NAME")
	case release && len(pos) == 1:
		return verbMistake(stderr, "locks", "release: missing NAME")
	case release && len(pos) > 2:
		return verbMistake(stderr, "locks", "release: unexpected arguments after NAME: "+strings.Join(pos[2:], " "))
	case !release && len(pos) > 1 && !isFile(pos[0]) && !strings.HasSuffix(pos[0], ".toml"):
		// `locks relase CONFIG NAME`: a mistyped subcommand, not a CONFIG
		return verbMistake(stderr, "locks", fmt.Sprintf("unknown subcommand %q (the only one is release)", pos[0]))
	case !release && len(pos) > 1:
		return verbMistake(stderr, "locks", "unexpected arguments after CONFIG: "+strings.Join(pos[1:], " "))
	}
	cfg, err := config.Load(pos[0], config.Options{})
	if err != nil {
		fmt.Fprintln(stderr, prefixLines("paas-runner: ", err.Error()))
		return exitUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pol := guardPolicy(cfg.Guards)
	if !release {
		st, err := readGuards(ctx, cfg)
		if err != nil {
			fmt.Fprintf(stderr, "paas-runner: locks: %v\n", err)
			return exitFatal
		}
		rep := guard.ReportOf(st, pol, backendBranch(cfg))
		if *asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			_ = enc.Encode(rep)
			return exitOK
		}
		printReport(stdout, rep)
		return exitOK
	}
	if !*yes {
		fmt.Fprintf(stderr, "paas-runner: locks release: a force release lets another job in while the holder may still deploy; add --yes\n")
		return exitUsage
	}
	name := pos[1]
	var freed *guard.Holder
	err = updateGuards(ctx, cfg, false, func(s *guard.State) (bool, error) {
		pool, lock, err := guard.ResolveLock(s, name)
		if err != nil {
			return false, err
		}
		h, ok := guard.ForceRelease(s, pool, lock)
		if !ok {
			return false, fmt.Errorf("%s is not held", name)
		}
		freed = h
		return true, nil
	})
	if err != nil {
		fmt.Fprintf(stderr, "paas-runner: locks release: %v\n", err)
		return exitFatal
	}
	fmt.Fprintf(stderr, "paas-runner: released %s, held by %s\n", name, describeHolder(*freed))
	return exitOK
}

// poolCmd is `paas-runner pool add|add-claimed|remove|update CONFIG POOL LOCK`.
func poolCmd(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("paas-runner pool", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	mdFile := fs.String("metadata-file", "", "file whose content is the lock's metadata")
	pos, err := cliflags.Parse(fs, args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stderr, locksUsage)
		return exitOK
	case err != nil:
		return verbMistake(stderr, "pool", err.Error())
	case len(pos) < 4:
		return verbMistake(stderr, "pool", "missing "+[]string{"the operation (add, add-claimed, remove or update)", "CONFIG", "POOL", "LOCK"}[len(pos)])
	case len(pos) > 4:
		return verbMistake(stderr, "pool", "unexpected arguments after LOCK: "+strings.Join(pos[4:], " "))
	}
	op, cfgPath, pool, lock := pos[0], pos[1], pos[2], pos[3]
	cfg, err := config.Load(cfgPath, config.Options{})
	if err != nil {
		fmt.Fprintln(stderr, prefixLines("paas-runner: ", err.Error()))
		return exitUsage
	}
	var md string
	if *mdFile != "" {
		b, err := os.ReadFile(*mdFile)
		if err != nil {
			fmt.Fprintf(stderr, "paas-runner: pool %s: --metadata-file: %v\n", op, err)
			return exitUsage
		}
		md = string(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	var declared map[string]map[string]string // local: the configuration's pools
	if cfg.Guards.Backend != "git" {
		declared = declaredPools(cfg)
	}
	for {
		wait := false
		err := updateGuards(ctx, cfg, declared != nil, func(s *guard.State) (bool, error) {
			changed, w, err := guard.PoolOp(s, op, pool, lock, md, declared)
			wait = w
			return changed, err
		})
		if err != nil {
			fmt.Fprintf(stderr, "paas-runner: pool %s: %v\n", op, err)
			if strings.Contains(err.Error(), "unknown pool operation") || strings.Contains(err.Error(), "name") {
				return exitUsage
			}
			return exitFatal
		}
		if !wait {
			return exitOK
		}
		fmt.Fprintf(stderr, "paas-runner: pool update: %s/%s is claimed; waiting for its release\n", pool, lock)
		select {
		case <-ctx.Done():
			fmt.Fprintf(stderr, "paas-runner: pool update: %s/%s still claimed\n", pool, lock)
			return exitFatal
		case <-time.After(cfg.Guards.Git.RetryDelay):
		}
	}
}

// backendBranch is the git backend's branch ("" with the local backend).
func backendBranch(cfg *config.Config) string {
	if cfg.Guards.Backend == "git" {
		return cfg.Guards.Git.Branch
	}
	return ""
}

func openGit(ctx context.Context, cfg *config.Config) (*guard.Git, error) {
	g := cfg.Guards.Git
	return guard.OpenGit(ctx, guard.GitOptions{URL: g.URL, Branch: g.Branch, Username: g.Username, Password: g.Password,
		RetryDelay: g.RetryDelay, Daemon: "operator"})
}

// readGuards reads the state without changing it (the daemon may run).
func readGuards(ctx context.Context, cfg *config.Config) (*guard.State, error) {
	if cfg.Guards.Backend != "git" {
		st, err := guard.ReadLocal(guard.LocalPath(cfg.StateFile))
		if err == nil {
			// the pools as the daemon has them with this configuration
			// (it syncs them at its start and on reload): nothing written
			guard.SyncPools(st, declaredPools(cfg))
		}
		return st, err
	}
	g, err := openGit(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return g.Read(ctx)
}

// updateGuards changes the state: pushed to the repository (the daemons
// read it at their next fetch), or written to the local file while the
// daemon is stopped (it owns the file while it runs; it reads it at its
// start). Without the daemon's files the local backend's are made only
// when create is set (a pool's lock added before the first start).
func updateGuards(ctx context.Context, cfg *config.Config, create bool, fn func(*guard.State) (bool, error)) error {
	var ferr error
	apply := func(s *guard.State) bool {
		changed, err := fn(s)
		ferr = err
		return err == nil && changed
	}
	if cfg.Guards.Backend == "git" {
		g, err := openGit(ctx, cfg)
		if err != nil {
			return err
		}
		if _, err := g.Update(ctx, apply); err != nil {
			return err
		}
		return ferr
	}
	// Nothing to change without the daemon's files: opening the store
	// would create them.
	if !create && missing(cfg.StateFile) && missing(guard.LocalPath(cfg.StateFile)) {
		return fmt.Errorf("no state file %s: no lock is held (the daemon has not run with this configuration)", cfg.StateFile)
	}
	store, err := state.Open(cfg.StateFile)
	if err != nil {
		return fmt.Errorf("%w (with the local backend, stop the daemon first: it owns its guards file while it runs)", err)
	}
	defer store.Close()
	l, err := guard.OpenLocal(guard.LocalPath(store.Path()), declaredPools(cfg))
	if err != nil {
		return err
	}
	if _, err := l.Update(ctx, apply); err != nil {
		return err
	}
	return ferr
}

// declaredPools are the local backend's configured pools (pool → lock →
// metadata).
func declaredPools(cfg *config.Config) map[string]map[string]string {
	pools := map[string]map[string]string{}
	for _, p := range cfg.Guards.Pools {
		pools[p.Name] = p.Locks
	}
	return pools
}

// missing: path does not exist (another error is left to the open).
func missing(path string) bool {
	_, err := os.Lstat(path)
	return errors.Is(err, fs.ErrNotExist)
}

func describeHolder(h guard.Holder) string {
	if h.JobID == 0 {
		return "someone outside paas-runner"
	}
	return fmt.Sprintf("job %d (pipeline %d, project %s, runner %s, daemon %s)", h.JobID, h.PipelineID, h.Project, h.Runner, h.Daemon)
}

func printReport(w io.Writer, r guard.Report) {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "HELD\tBY\tSINCE\tLEASE UNTIL\n")
	for _, h := range r.Holders {
		lock := h.Guard
		if strings.HasPrefix(h.Guard, "pool:") {
			lock += "/" + h.Lock
		}
		by := describeHolder(guard.Holder{JobRef: h.Job})
		since, until := "-", "-"
		if !h.Since.IsZero() {
			since = time.Since(h.Since).Truncate(time.Second).String()
		}
		if !h.Expires.IsZero() {
			until = h.Expires.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", lock, by, since, until)
	}
	fmt.Fprintf(tw, "\nWAITING\tJOB\tWANTS\tMODE\tSINCE\n")
	for _, wi := range r.Waiters {
		pos := fmt.Sprint(wi.Position)
		if wi.SupersededBy != 0 {
			pos = fmt.Sprintf("superseded by pipeline %d", wi.SupersededBy)
		}
		fmt.Fprintf(tw, "%s\tjob %d (pipeline %d, %s, daemon %s)\t%s\t%s\t%s\n", pos, wi.Job.JobID, wi.Job.PipelineID, wi.Job.Project,
			wi.Job.Daemon, strings.Join(wi.Wants, ","), wi.Mode, time.Since(wi.Since).Truncate(time.Second))
	}
	fmt.Fprintf(tw, "\nPOOL\tLOCKS\tAVAILABLE\n")
	for _, p := range r.Pools {
		fmt.Fprintf(tw, "%s\t%d\t%d\n", p.Name, p.Locks, p.Available)
	}
	_ = tw.Flush()
}

// isFile tells whether path names an existing file.
func isFile(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir()
}

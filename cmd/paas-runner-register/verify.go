package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator"
	"gitlab.com/paas-runner/paas-runner/internal/cliflags"
	"gitlab.com/paas-runner/paas-runner/internal/systemid"
	"gitlab.com/paas-runner/paas-runner/internal/version"
)

func loadConfig(path string, stderr io.Writer) (*config.Config, []byte, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(stderr, "paas-runner-register: %v\n", err)
		return nil, nil, false
	}
	cfg, err := config.Parse(path, data, config.Options{})
	if err != nil {
		fmt.Fprintf(stderr, "paas-runner-register: %s is not a valid configuration:\n%v\n", path, err)
		return nil, nil, false
	}
	return cfg, data, true
}

func clientFor(cfg *config.Config, r *config.Runner) (*coordinator.Client, error) {
	sysID, _ := systemid.ForStateFile(cfg.StateFile)
	return coordinator.New(coordinator.Config{URL: r.URL, Token: r.Token, TLSCAFile: r.TLSCAFile, SystemID: sysID, UserAgent: version.UserAgent(),
		Info:  coordinator.Info{Name: version.Name, Version: version.Version, Revision: version.Revision, Platform: runtime.GOOS, Architecture: runtime.GOARCH, Executor: "docker"},
		Retry: coordinator.RetryPolicy{Attempts: 3}})
}

// verify checks every runner's token: exit 0 when all are valid, 1 when
// GitLab rejects one or cannot be asked.
func verify(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	pos, err := cliflags.Parse(fs, args)
	if err != nil || len(pos) != 1 {
		fmt.Fprintln(stderr, "usage: paas-runner-register verify CONFIG")
		return exitUsage
	}
	cfg, _, ok := loadConfig(pos[0], stderr)
	if !ok {
		return exitUsage
	}
	code := exitOK
	for i := range cfg.Runners {
		r := &cfg.Runners[i]
		c, err := clientFor(cfg, r)
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			var creds *coordinator.RunnerCredentials
			creds, err = c.VerifyRunner(ctx)
			cancel()
			if err == nil {
				fmt.Fprintf(stdout, "runner %q: valid (id %d)\n", r.DisplayName(), creds.ID)
				continue
			}
		}
		code = exitFatal
		if coordinator.StatusOf(err) == 403 {
			fmt.Fprintf(stdout, "runner %q: INVALID: %s rejects its token (403)\n", r.DisplayName(), r.URL)
		} else {
			fmt.Fprintf(stdout, "runner %q: not verified: %v\n", r.DisplayName(), explain(err, false, r.URL))
		}
	}
	return code
}

// unregister deletes a runner in GitLab, then its section from CONFIG.
func unregister(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("unregister", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "", "name of the runner to remove")
	pos, err := cliflags.Parse(fs, args)
	if err != nil || len(pos) != 1 || *name == "" {
		fmt.Fprintln(stderr, "usage: paas-runner-register unregister --name NAME CONFIG")
		return exitUsage
	}
	path := pos[0]
	cfg, data, ok := loadConfig(path, stderr)
	if !ok {
		return exitUsage
	}
	idx := -1
	for i, r := range cfg.Runners {
		if r.Name == *name {
			idx = i
		}
	}
	if idx < 0 {
		fmt.Fprintf(stderr, "paas-runner-register: no runner named %q in %s\n", *name, path)
		return exitUsage
	}
	r := &cfg.Runners[idx]
	c, err := clientFor(cfg, r)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err = c.UnregisterRunner(ctx)
		cancel()
	}
	switch {
	case err == nil:
	case coordinator.StatusOf(err) == 403 || coordinator.StatusOf(err) == 404:
		fmt.Fprintf(stdout, "GitLab at %s no longer knows runner %q (%d); removing it from %s anyway\n", r.URL, *name, coordinator.StatusOf(err), path)
	default:
		fmt.Fprintf(stderr, "paas-runner-register: %v; %s left unchanged\n", explain(err, false, r.URL), path)
		return exitFatal
	}
	out, err := removeRunner(data, idx)
	var oldMode os.FileMode
	if err == nil {
		oldMode, err = writeConfig(path, out)
	}
	if err != nil {
		fmt.Fprintf(stderr, "paas-runner-register: updating %s: %v\n", path, err)
		return exitFatal
	}
	fmt.Fprint(stdout, modeNote(path, oldMode))
	fmt.Fprintf(stdout, "Runner %q unregistered and removed from %s\n", *name, path)
	return exitOK
}

package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/dispatcher"
	"gitlab.com/paas-runner/paas-runner/internal/cliflags"
	"gitlab.com/paas-runner/paas-runner/internal/systemid"
	"gitlab.com/paas-runner/paas-runner/state"
)

// statusCmd is paas-runner status CONFIG: the tracked jobs, from the
// running daemon (/debug/jobs on listen_address) or, when none answers,
// from the state file, read only (no lock taken, nothing written).
func statusCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("paas-runner status", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	asJSON := fs.Bool("json", false, "print the jobs as JSON (the /debug/jobs document)")
	pos, err := cliflags.Parse(fs, args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprintln(stderr, "usage: paas-runner status [--json] CONFIG\n\nLists the tracked jobs: from the running daemon (listen_address), else from the state file.")
		fs.SetOutput(stderr)
		fs.PrintDefaults()
		return exitOK
	case err != nil:
		return verbMistake(stderr, "status", err.Error())
	case len(pos) == 0:
		return verbMistake(stderr, "status", "missing CONFIG")
	case len(pos) > 1:
		return verbMistake(stderr, "status", "unexpected arguments after CONFIG: "+strings.Join(pos[1:], " "))
	}
	cfg, err := config.Load(pos[0], config.Options{Executors: newRegistry().names()})
	if err != nil {
		fmt.Fprintln(stderr, prefixLines("paas-runner: ", err.Error()))
		return exitUsage
	}
	doc, source, err := statusFromDaemon(cfg)
	if err != nil {
		jobs, rerr := state.Read(cfg.StateFile)
		if rerr != nil {
			fmt.Fprintf(stderr, "paas-runner: %v\n", rerr)
			return exitFatal
		}
		// the state file's system_id, read only (nothing is generated)
		sid, serr := systemid.Lookup(cfg.StateFile)
		if serr != nil {
			fmt.Fprintf(stderr, "paas-runner: %v\n", serr)
			return exitFatal
		}
		doc = debugJobs{SystemID: sid, Jobs: make([]dispatcher.JobView, 0, len(jobs))}
		names := map[string]string{}
		for i := range cfg.Runners {
			names[cfg.Runners[i].ID()] = cfg.Runners[i].DisplayName()
		}
		for _, j := range jobs {
			v := dispatcher.ViewOf(j)
			v.RunnerName = names[j.RunnerID]
			doc.Jobs = append(doc.Jobs, v)
		}
		source = fmt.Sprintf("state file %s (daemon not reachable: %v)", cfg.StateFile, err)
	}
	sortViews(doc.Jobs)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(doc)
		return exitOK
	}
	fmt.Fprintf(stdout, "source: %s\n", source)
	printJobs(stdout, doc.Jobs, time.Now())
	return exitOK
}

func statusFromDaemon(cfg *config.Config) (debugJobs, string, error) {
	var doc debugJobs
	if cfg.ListenAddress == "" {
		return doc, "", errors.New("no listen_address in the configuration")
	}
	addr := cfg.ListenAddress
	if host, port, err := net.SplitHostPort(addr); err == nil && (host == "" || host == "0.0.0.0" || host == "::") {
		addr = net.JoinHostPort("127.0.0.1", port)
	}
	url := "http://" + addr + "/debug/jobs"
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return doc, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return doc, "", fmt.Errorf("%s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		return doc, "", fmt.Errorf("%s: %w", url, err)
	}
	return doc, "daemon at " + addr, nil
}

func printJobs(w io.Writer, jobs []dispatcher.JobView, now time.Time) {
	if len(jobs) == 0 {
		fmt.Fprintln(w, "no tracked jobs")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RUNNER\tJOB\tSTATE\tHOST\tAGE\tWAITING FOR")
	for _, j := range jobs {
		runner := j.Runner
		if j.RunnerName != "" && j.RunnerName != j.Runner {
			runner = j.RunnerName + " (" + j.Runner + ")"
		}
		age := "-"
		if !j.AcquiredAt.IsZero() {
			age = now.Sub(j.AcquiredAt).Round(time.Second).String()
		}
		host := j.Host
		if host == "" {
			host = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", runner, strconv.FormatInt(j.JobID, 10), j.Phase, host, age, j.WaitingFor)
	}
	_ = tw.Flush()
}

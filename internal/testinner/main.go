// Command testinner stands in for an inner runner in tests of the executors
// and the daemon, until paas-runner exec-fetched-job exists: built static,
// it is put in a Heptapod-shaped image as /usr/bin/gitlab-runner. It reads
// the runner.toml and job.json it is given, appends to the job log at the
// offset the daemon left, and reports the job as the TEST_INNER job
// variable says: success (default), failed, crash (exit without reporting)
// or sleep (until killed).
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

func main() {
	if len(os.Args) != 5 || os.Args[1] != "exec-fetched-job" || os.Args[2] != "--config" {
		fmt.Fprintln(os.Stderr, "usage: testinner exec-fetched-job --config runner.toml job.json")
		os.Exit(2)
	}
	var cfg struct {
		Runners []struct {
			URL   string `toml:"url"`
			Token string `toml:"token"`
		} `toml:"runners"`
	}
	if _, err := toml.DecodeFile(os.Args[3], &cfg); err != nil || len(cfg.Runners) != 1 {
		fmt.Fprintln(os.Stderr, "runner.toml:", err)
		os.Exit(2)
	}
	if cfg.Runners[0].Token != "" {
		fmt.Fprintln(os.Stderr, "runner.toml holds the runner token: it must not")
		os.Exit(4)
	}
	raw, err := os.ReadFile(os.Args[4])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var job struct {
		ID        int64  `json:"id"`
		Token     string `json:"token"`
		Variables []struct {
			Key, Value string
		} `json:"variables"`
		PaasRunner struct {
			TraceOffset int64 `json:"trace_offset"`
		} `json:"paas_runner"`
	}
	if err := json.Unmarshal(raw, &job); err != nil {
		fmt.Fprintln(os.Stderr, "job.json:", err)
		os.Exit(2)
	}
	mode := "success"
	for _, v := range job.Variables {
		if v.Key == "TEST_INNER" {
			mode = v.Value
		}
	}
	base := strings.TrimRight(cfg.Runners[0].URL, "/") + "/api/v4/jobs/" + strconv.FormatInt(job.ID, 10)
	line := fmt.Sprintf("testinner: running job %d (%s)\n", job.ID, mode)
	fmt.Print(line)
	req, _ := http.NewRequest(http.MethodPatch, base+"/trace", strings.NewReader(line))
	req.Header.Set("Job-Token", job.Token)
	req.Header.Set("Content-Range", fmt.Sprintf("%d-%d", job.PaasRunner.TraceOffset, job.PaasRunner.TraceOffset+int64(len(line))-1))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, "trace:", err)
		os.Exit(3)
	}
	resp.Body.Close()
	fmt.Println("trace patch:", resp.Status)
	switch mode {
	case "crash":
		fmt.Println("crashing on purpose")
		os.Exit(3)
	case "sleep":
		time.Sleep(time.Hour)
	}
	state, reason := "success", ""
	if mode == "failed" {
		state, reason = "failed", "script_failure"
	}
	body, _ := json.Marshal(map[string]any{"token": job.Token, "state": state, "failure_reason": reason, "exit_code": 0})
	req, _ = http.NewRequest(http.MethodPut, base, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err = http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		fmt.Fprintln(os.Stderr, "final update:", err, resp)
		os.Exit(3)
	}
	fmt.Println("reported", state)
}

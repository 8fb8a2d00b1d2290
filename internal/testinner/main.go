// Command testinner stands in for Heptapod Runner in tests of the executors
// and the daemon: built static, it is put in a Heptapod-shaped image as
// /usr/bin/gitlab-runner and answers Heptapod's entry point
// (gitlab-runner exec-fetched-job --config runner.toml job.json). It reads
// the runner.toml and job.json it is given, appends to the job log at the
// offset the daemon left, and reports the job as the TEST_INNER job
// variable says: success (default), failed, crash (exit without reporting),
// sleep (until killed), idle (sleep before talking to GitLab), oom
// (allocate memory until killed, before talking to GitLab), or spawn (make
// a container, a network, a builds volume and a cache volume labelled as
// the inner runner labels them, from job.json's paas_runner system_id and
// runner_id, with the image of the TEST_SPAWN_IMAGE variable, then sleep).
// With the TEST_INNER_COUNT variable set, each run first makes a volume
// labelled paas-runner.test-run=<job id>, for tests that count runs.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"

	"gitlab.com/paas-runner/paas-runner/internal/labels"
)

// hog is what the oom mode allocates (kept reachable).
var hog [][]byte

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
			TraceOffset int64  `json:"trace_offset"`
			SystemID    string `json:"system_id"`
			RunnerID    string `json:"runner_id"`
		} `json:"paas_runner"`
	}
	if err := json.Unmarshal(raw, &job); err != nil {
		fmt.Fprintln(os.Stderr, "job.json:", err)
		os.Exit(2)
	}
	mode, spawnImage, countRuns := "success", "", false
	for _, v := range job.Variables {
		switch v.Key {
		case "TEST_INNER":
			mode = v.Value
		case "TEST_SPAWN_IMAGE":
			spawnImage = v.Value
		case "TEST_INNER_COUNT":
			countRuns = v.Value != ""
		}
	}
	if countRuns {
		// one volume per run, for tests that check a job runs once
		if err := countRun(job.ID, job.PaasRunner.RunnerID); err != nil {
			fmt.Fprintln(os.Stderr, "count:", err)
			os.Exit(5)
		}
	}
	if mode == "idle" {
		fmt.Println("idling until killed")
		time.Sleep(time.Hour)
	}
	if mode == "oom" {
		// before anything that can fail: GitLab may be unreachable
		fmt.Println("allocating until killed")
		for {
			b := make([]byte, 1<<20)
			for i := range b {
				b[i] = 1
			}
			hog = append(hog, b)
		}
	}
	if mode == "spawn" {
		// before anything that can fail: GitLab may be unreachable
		if err := spawn(job.ID, job.PaasRunner.SystemID, job.PaasRunner.RunnerID, spawnImage); err != nil {
			fmt.Fprintln(os.Stderr, "spawn:", err)
			os.Exit(5)
		}
		fmt.Println("spawned")
		time.Sleep(time.Hour)
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

// LabelRun marks the volumes countRun makes.
const LabelRun = "paas-runner.test-run"

// countRun records one run of the job: a volume labelled LabelRun=<job id>
// and with the runner (not role=job: it outlives the host, for the test
// to count).
func countRun(jobID int64, runnerID string) error {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	defer cli.Close()
	_, err = cli.VolumeCreate(context.Background(), volume.CreateOptions{
		Labels: map[string]string{LabelRun: strconv.FormatInt(jobID, 10), labels.LabelRunner: runnerID}})
	return err
}

// spawn makes what an inner runner makes for a job, labelled the same way.
func spawn(jobID int64, systemID, runnerID, img string) error {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	ctx := context.Background()
	l := func(role string) map[string]string {
		return map[string]string{labels.LabelSystemID: systemID, labels.LabelRunner: runnerID,
			labels.LabelJobID: strconv.FormatInt(jobID, 10), labels.LabelRole: role}
	}
	name := fmt.Sprintf("testinner-%s-%s-%d", systemID, runnerID, jobID)
	nw, err := cli.NetworkCreate(ctx, name, network.CreateOptions{Labels: l(labels.RoleJob)})
	if err != nil {
		return err
	}
	if _, err := cli.VolumeCreate(ctx, volume.CreateOptions{Name: name + "-builds", Labels: l(labels.RoleJob)}); err != nil {
		return err
	}
	if _, err := cli.VolumeCreate(ctx, volume.CreateOptions{Name: name + "-cache", Labels: l(labels.RoleCache)}); err != nil {
		return err
	}
	_, err = cli.ContainerCreate(ctx, &container.Config{Image: img, Cmd: []string{"job"}, Labels: l(labels.RoleJob)},
		&container.HostConfig{Binds: []string{name + "-builds:/builds"}},
		&network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{name: {NetworkID: nw.ID}}}, nil, name+"-job")
	return err
}

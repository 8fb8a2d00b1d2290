package dispatcher

import (
	"encoding/json"
	"time"

	"gitlab.com/paas-runner/paas-runner/state"
)

// Observer is told about lifecycle events, for metrics, health and the
// service manager. Calls are made from the dispatcher's goroutines and must
// return quickly. Config.Observer nil means none.
type Observer interface {
	// Started: the state file's jobs are resumed and polling starts.
	Started()
	// Draining: acquisition stopped; in-flight steps are finishing.
	Draining()
	// Polled reports a job request's answer: "job", "no_job",
	// "forbidden" (403) or "error".
	Polled(r *Runner, answer string)
	// RunnerPaused: r does not poll before until (too many 403s).
	RunnerPaused(r *Runner, until time.Time)
	// Provisioned: a host was created for a job, in took.
	Provisioned(r *Runner, took time.Duration)
	// LaunchFailed: a job failed before launch, with its failure_reason.
	LaunchFailed(r *Runner, reason string)
	// JobEnded: a launched job ended; its host is to be removed.
	JobEnded(r *Runner, k state.Key)
	// HostRemoved: the host of job k is gone.
	HostRemoved(r *Runner, k state.Key)
}

type nopObserver struct{}

func (nopObserver) Started()                           {}
func (nopObserver) Draining()                          {}
func (nopObserver) Polled(*Runner, string)             {}
func (nopObserver) RunnerPaused(*Runner, time.Time)    {}
func (nopObserver) Provisioned(*Runner, time.Duration) {}
func (nopObserver) LaunchFailed(*Runner, string)       {}
func (nopObserver) JobEnded(*Runner, state.Key)        {}
func (nopObserver) HostRemoved(*Runner, state.Key)     {}

func (d *Dispatcher) obs() Observer {
	if d.cfg.Observer == nil {
		return nopObserver{}
	}
	return d.cfg.Observer
}

// JobView is a tracked job as shown by /debug/jobs and paas-runner status:
// no token, no payload.
type JobView struct {
	Runner     string      `json:"runner"`
	RunnerName string      `json:"runner_name,omitempty"`
	JobID      int64       `json:"job_id"`
	Phase      state.Phase `json:"state"`
	Executor   string      `json:"executor,omitempty"`
	Host       string      `json:"host,omitempty"`
	AcquiredAt time.Time   `json:"acquired_at,omitzero"`
	LaunchedAt time.Time   `json:"launched_at,omitzero"`
	WaitingFor string      `json:"waiting_for,omitempty"`
	Failure    string      `json:"failure,omitempty"`
}

// ViewOf describes a state file job (no token).
func ViewOf(j state.Job) JobView {
	v := JobView{Runner: j.RunnerID, JobID: j.JobID, Phase: j.Phase, Executor: j.Executor, Host: HostName(j.Resource),
		AcquiredAt: j.AcquiredAt, LaunchedAt: j.LaunchedAt, Failure: j.Failure}
	if v.Phase == "" {
		v.Phase = state.Launched
	}
	v.WaitingFor = waitingFor(j)
	return v
}

func waitingFor(j state.Job) string {
	switch {
	case j.KeepResources:
		return "an admin to remove the host (kept)"
	case j.Failure != "" && !j.Reported:
		return "GitLab to accept the failure"
	}
	switch j.Phase {
	case state.Acquired:
		return "guards, then a host plan"
	case state.Provisioning:
		return "the host to be created"
	case state.Launching:
		return "the job to start on its host"
	case state.Launched, "":
		return "the job to end"
	case state.Decommissioning:
		return "the host to be removed"
	}
	return ""
}

// HostName is the host's name in an executor handle, when it has one.
func HostName(h []byte) string {
	var v struct {
		Name      string `json:"name"`
		Container string `json:"container"`
		ID        string `json:"id"`
	}
	if json.Unmarshal(h, &v) != nil {
		return ""
	}
	switch {
	case v.Name != "":
		return v.Name
	case v.Container != "":
		return v.Container
	}
	return v.ID
}

// Jobs lists the tracked jobs.
func (d *Dispatcher) Jobs() []JobView {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]JobView, 0, len(d.jobs))
	for _, t := range d.jobs {
		v := ViewOf(t.get())
		v.RunnerName = t.r.Name
		out = append(out, v)
	}
	return out
}

func pollAnswer(got bool, err error) string {
	switch {
	case err != nil && httpStatus(err) == 403:
		return "forbidden"
	case err != nil:
		return "error"
	case !got:
		return "no_job"
	}
	return "job"
}

package coordinatortest

import (
	"net/http"
	"strconv"
	"time"
)

// Two-phase job commit, as GitLab does it (app/services/ci/
// update_build_state_service.rb handle_runner_ack_workflow,
// lib/gitlab/ci/build/runner_ack_queue.rb, app/services/ci/
// retry_waiting_job_service.rb):
//
//   - a runner advertising two_phase_job_commit gets the job (201) but the
//     job stays pending, "waiting for ack" for AckTimeout;
//   - PUT state=pending is a keep-alive (200) that pushes the deadline back;
//   - PUT state=running confirms: the job runs, then the update goes on as
//     usual (200);
//   - any other state while waiting is 400;
//   - a job never confirmed in time is dropped with runner_provisioning_timeout
//     and, as GitLab's auto-retry does, a new job (a retry, new id and
//     token) is queued: the work is not lost, it is handed out again.
//
// Outside two-phase commit, state=pending is 400 (Rails'
// update_build_state! has no such state).

// awaitAckLocked hands j out with two-phase commit.
func (s *Server) awaitAckLocked(j *Job) {
	j.WaitingAck = true
	j.AckDeadline = time.Now().Add(s.AckTimeout)
	s.armAckTimer(j.ID, s.AckTimeout)
}

func (s *Server) armAckTimer(id int64, after time.Duration) {
	time.AfterFunc(after, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		j := s.jobs[id]
		if j == nil || !j.WaitingAck {
			return
		}
		if left := time.Until(j.AckDeadline); left > 0 {
			s.armAckTimer(id, left) // a keep-alive pushed it back
			return
		}
		s.dropUnconfirmedLocked(j)
	})
}

// dropUnconfirmedLocked is RetryWaitingJobService: drop, then auto-retry.
func (s *Server) dropUnconfirmedLocked(j *Job) {
	j.WaitingAck = false
	j.Status = "failed"
	j.FailureReason = "runner_provisioning_timeout"
	j.FinishedAt = time.Now()
	extra := map[string]any{}
	for k, v := range j.Payload {
		if k != "id" && k != "token" && k != "job_info" && k != "variables" {
			extra[k] = v
		}
	}
	retry := s.enqueueLocked(j.RunnerToken, extra)
	// the same job_info and variables, with the retry's id and token
	if ji, ok := j.Payload["job_info"].(map[string]any); ok {
		c := map[string]any{}
		for k, v := range ji {
			c[k] = v
		}
		c["id"] = retry.ID
		retry.Payload["job_info"] = c
	}
	if vars, ok := j.Payload["variables"].([]map[string]any); ok {
		var c []map[string]any
		for _, v := range vars {
			nv := map[string]any{}
			for k, x := range v {
				nv[k] = x
			}
			switch nv["key"] {
			case "CI_JOB_ID":
				nv["value"] = strconv.FormatInt(retry.ID, 10)
			case "CI_JOB_TOKEN":
				nv["value"] = retry.Token
			}
			c = append(c, nv)
		}
		retry.Payload["variables"] = c
	}
	retry.RetryOf = j.ID
	j.RetriedAs = retry.ID
	s.notify()
}

// ackWorkflowLocked answers a PUT for a job waiting for its runner's ack.
// done=false: the job is confirmed and the update goes on as usual.
func (s *Server) ackWorkflowLocked(j *Job, state string) (status int, done bool) {
	switch state {
	case "pending":
		j.AckDeadline = time.Now().Add(s.AckTimeout)
		return http.StatusOK, true
	case "running":
		j.WaitingAck = false
		j.Status = "running"
		s.notify()
		return 0, false
	}
	return http.StatusBadRequest, true
}

// ExpireAcks drops at once every job still waiting for its runner's ack,
// as if AckTimeout had passed.
func (s *Server) ExpireAcks() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, j := range s.jobs {
		if j.WaitingAck {
			s.dropUnconfirmedLocked(j)
		}
	}
}

// TwoPhase tells whether the runner advertised two_phase_job_commit in its
// last job request.
func (s *Server) TwoPhase(runnerToken string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.runners[runnerToken]
	return r != nil && r.TwoPhase
}

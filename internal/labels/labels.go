// Package labels names the Docker labels paas-runner puts on everything it
// creates, so that the daemon (decommission, the reaper) and the inner
// runner agree on them. It imports nothing: every package can use it.
package labels

// Label keys.
const (
	// LabelSystemID is the daemon's system_id (r_ + 12 alphanumerics).
	LabelSystemID = "paas-runner.system-id"
	// LabelRunner is the runner's identity (config.Runner.ID()).
	LabelRunner = "paas-runner.runner"
	// LabelJobID is the GitLab job id.
	LabelJobID = "paas-runner.job-id"
	// LabelRole tells what a resource is for: RoleJob, RoleHost or RoleCache.
	LabelRole = "paas-runner.role"
)

// Values of LabelRole.
const (
	// RoleJob: made by the inner runner for one job (its containers,
	// service containers, network, builds volume); gone with the job.
	RoleJob = "job"
	// RoleHost: a job host the executor made.
	RoleHost = "host"
	// RoleCache: a cache volume, kept across jobs.
	RoleCache = "cache"
)

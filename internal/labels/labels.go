// Package labels names the Docker labels paas-runner puts on everything it
// creates on an engine: the daemon's system_id, the runner, the job and the
// resource's role. Executors (reaping, decommission) and the inner runner
// (which labels the job's own containers, networks and volumes) agree on
// them through this package.
package labels

// Label keys.
const (
	// LabelSystemID is the daemon's system_id (r_ + 12 alphanumerics):
	// two daemons on one engine never touch each other's resources.
	LabelSystemID = "paas-runner.system-id"
	// LabelRunner is the runner's ID (config.Runner.ID).
	LabelRunner = "paas-runner.runner"
	// LabelJobID is the GitLab job ID.
	LabelJobID = "paas-runner.job-id"
	// LabelRole says what the resource is for: RoleJob, RoleHost, RoleCache.
	LabelRole = "paas-runner.role"
)

// Values of LabelRole.
const (
	// RoleJob: made by the inner runner for one job (job and service
	// containers, the job's network, its builds volume); removed with the
	// job's host.
	RoleJob = "job"
	// RoleHost: the job's host (local-docker's host container).
	RoleHost = "host"
	// RoleCache: a cache volume, shared between jobs; never removed with a
	// job.
	RoleCache = "cache"
)

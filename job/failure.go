package job

import "slices"

// FailureReasons is GitLab's failure_reason enum
// (app/models/concerns/enums/ci/commit_status.rb, newest known), the keys
// a job's features.failure_reasons lists. GitLab stores any other value
// sent with PUT state=failed as unknown_failure.
var FailureReasons = []string{
	"unknown_failure", "script_failure", "api_failure", "stuck_or_timeout_failure", "runner_system_failure",
	"missing_dependency_failure", "runner_unsupported", "stale_schedule", "job_execution_timeout", "archived_failure",
	"unmet_prerequisites", "scheduler_failure", "data_integrity_failure", "forward_deployment_failure", "user_blocked",
	"project_deleted", "ci_quota_exceeded", "pipeline_loop_detected", "no_matching_runner", "trace_size_exceeded",
	"builds_disabled", "environment_creation_failure", "deployment_rejected", "failed_outdated_deployment_job",
	"job_execution_server_timeout", "stuck_pending_with_matching_runners", "stuck_pending_no_matching_runners",
	"no_updates_running", "no_updates_canceling", "server_timeout_running", "server_timeout_canceling",
	"runner_configuration_error", "runner_external_dependency_failure", "runner_interrupted",
	"runner_provisioning_timeout", // two-phase commit: no PUT state=running in time
	"protected_environment_failure", "insufficient_bridge_permissions", "downstream_bridge_project_not_found",
	"invalid_bridge_trigger", "upstream_bridge_project_not_found", "insufficient_upstream_permissions",
	"bridge_pipeline_is_child_pipeline", "downstream_pipeline_creation_failed", "secrets_provider_not_found",
	"reached_max_descendant_pipelines_depth", "ip_restriction_failure", "reached_max_pipeline_hierarchy_size",
	"reached_downstream_pipeline_trigger_rate_limit", "duo_workflow_not_allowed", "job_router_failure",
	"job_token_expired", "id_token_burned_project_path", "downstream_project_trigger_resolved_to_empty",
}

// baseFailureReasons are in the enum of every GitLab this runner talks to
// (the enum as of the first GitLab releases with the v4 runner API and
// features.failure_reasons): what is assumed when a job did not say.
var baseFailureReasons = []string{
	"unknown_failure", "script_failure", "api_failure", "stuck_or_timeout_failure", "runner_system_failure",
	"missing_dependency_failure", "runner_unsupported", "stale_schedule", "job_execution_timeout", "archived_failure",
	"unmet_prerequisites", "scheduler_failure", "data_integrity_failure",
}

// MapFailureReason returns the reason to send to a GitLab whose jobs list
// supported as features.failure_reasons (nil: not known), the way
// gitlab-runner maps its own (common/failure_reason_mapper.go): an empty
// reason is script_failure; a supported one goes as it is; the newer
// runner_* reasons fall back to the older ones they refine; anything else
// is unknown_failure, which is what GitLab would store anyway.
func MapFailureReason(reason string, supported []string) string {
	if len(supported) == 0 {
		supported = baseFailureReasons
	}
	switch {
	case reason == "":
		return ScriptFailure
	case reason == ScriptFailure || reason == RunnerSystemFailure || reason == JobExecutionTimeout:
		return reason
	case slices.Contains(supported, reason):
		return reason
	}
	switch reason {
	case ConfigurationError:
		return ScriptFailure
	case ExternalDependency, "image_pull_failure":
		return RunnerSystemFailure
	}
	return UnknownFailure
}

package job

import (
	"slices"
	"testing"
)

func TestMapFailureReason(t *testing.T) {
	newGitLab := FailureReasons
	oldGitLab := baseFailureReasons
	for _, c := range []struct {
		reason    string
		supported []string
		want      string
	}{
		{"", newGitLab, ScriptFailure},
		{ConfigurationError, newGitLab, ConfigurationError},
		{ConfigurationError, oldGitLab, ScriptFailure},
		{ConfigurationError, nil, ScriptFailure},
		{ExternalDependency, oldGitLab, RunnerSystemFailure},
		{"image_pull_failure", newGitLab, RunnerSystemFailure},
		{"missing_dependency_failure", nil, "missing_dependency_failure"},
		{"environment_creation_failure", newGitLab, "environment_creation_failure"},
		{"environment_creation_failure", oldGitLab, UnknownFailure},
		{"runner_interrupted", oldGitLab, UnknownFailure},
		{"job_canceled", newGitLab, UnknownFailure},
		{JobExecutionTimeout, []string{"unknown_failure"}, JobExecutionTimeout},
	} {
		if got := MapFailureReason(c.reason, c.supported); got != c.want {
			t.Errorf("MapFailureReason(%q, %d reasons) = %q, want %q", c.reason, len(c.supported), got, c.want)
		}
	}
	// whatever it is given, it answers a value of GitLab's enum
	for _, r := range append(slices.Clone(FailureReasons), "", "job_canceled", "made_up") {
		for _, sup := range [][]string{nil, oldGitLab, newGitLab} {
			if got := MapFailureReason(r, sup); !slices.Contains(FailureReasons, got) || (len(sup) > 0 && !slices.Contains(sup, got) && got != ScriptFailure && got != RunnerSystemFailure && got != JobExecutionTimeout) {
				t.Errorf("MapFailureReason(%q) = %q: not a reason that GitLab knows", r, got)
			}
		}
	}
}

// Package executors defines what the dispatcher asks of a PaaS backend: plan,
// provision and launch one host per job, and remove it. Implementations live
// in sub-packages (localdocker, cleverdocker) and are put in a registry by
// main; the dispatcher only knows this interface.
package executors

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Handle is an executor's description of one host: opaque to everyone else,
// JSON-serialisable, and enough to find and remove the host after a crash.
type Handle = json.RawMessage

// Job is what an executor is told about a job.
type Job struct {
	// RunnerID identifies the runner (config.Runner.ID), used in resource
	// names and labels.
	RunnerID string
	ID       int64
	Token    string
	// Payload is the jobs/request payload, handed to the inner runner.
	Payload json.RawMessage
	// TraceOffset is where the daemon's writing to the job log stopped: the
	// inner runner continues from there.
	TraceOffset int64
	// TraceCRC is the CRC32 of the log up to TraceOffset, nil if unknown.
	TraceCRC *uint32
	// TraceLead is the daemon's own lines GitLab does not have yet (its
	// log stops at TraceOffset): given only to executors that are
	// LeadTakers, whose inner runner sends them first, at TraceOffset,
	// with its own first log update (TraceCRC is of the log before them).
	TraceLead []byte
}

// LeadTaker is implemented by executors whose inner runner sends the
// daemon's last lines (Job.TraceLead) with its first log update: the
// daemon then spends no request of its own on them.
type LeadTaker interface {
	TakesTraceLead() bool
}

// Executor provisions hosts. Every method takes the context first, is safe
// for concurrent use on different jobs, and is idempotent.
type Executor interface {
	// Plan returns the handle of the host job will run on without creating
	// anything: names are deterministic, so that a host created by a
	// Provision interrupted by a crash can be found again. The dispatcher
	// persists the handle before calling Provision.
	Plan(ctx context.Context, j Job) (Handle, error)

	// Provision creates the host described by h. A host that already
	// exists (a retry, a restart after a crash) is adopted, not duplicated.
	// It may return an updated handle (e.g. with a PaaS-assigned id), which
	// is persisted before Launch.
	Provision(ctx context.Context, h Handle, j Job) (Handle, error)

	// Launch hands the job to the inner runner on the host. A job already
	// launched on h must not be launched a second time: Launch then
	// returns success.
	Launch(ctx context.Context, h Handle, j Job) (Handle, error)

	// Decommission removes the host and everything created for it. A host
	// that is already gone is success.
	Decommission(ctx context.Context, h Handle) error
}

// End is a host that stopped by itself.
type End struct {
	JobID    int64
	ExitCode int
	// Detail says why, for the job log ("OOM killed", "exit status 137").
	Detail string
	// Reported: the host's inner runner said, by how it exited, that GitLab
	// accepted the job's final state (paas-runner's exec-fetched-job exits
	// 0 only then): the dispatcher need not ask GitLab whether the job
	// ended. False when unknown (another inner runner, a non-zero exit).
	Reported bool
}

// EndWatcher is implemented by executors that notice by themselves when a
// host stops (a container exits), so that the dispatcher need not wait for
// GitLab to tell it the job ended.
type EndWatcher interface {
	// WatchEnds calls fn for each host of this executor that stops, until
	// ctx is done. It returns ctx's error, or the error that stopped it.
	WatchEnds(ctx context.Context, fn func(End)) error
}

// HostStatus is what an Inspector sees of a host.
type HostStatus struct {
	// Exists is false when the host is gone (removed, never created).
	Exists bool
	// Running is true while the inner runner may still report the job.
	Running bool
	// ExitCode of the host's main process once it stopped.
	ExitCode int
	// Detail says what became of it, for the job log: "OOM killed",
	// "exit status 137", and the host's last output lines.
	Detail string
}

// Inspector is implemented by executors that can look at a host on demand:
// at a restart, the dispatcher checks every launched job's host, so that a
// host that died while the daemon was down fails its job at once instead
// of at GitLab's timeout.
type Inspector interface {
	Inspect(ctx context.Context, h Handle) (HostStatus, error)
}

// Reaper is implemented by executors that can list their own hosts and
// remove those nobody tracks (left by a crash between create and persist,
// or by a lost state file).
type Reaper interface {
	// Reap removes this executor's hosts that are not described by one of
	// keep, sparing those created less than grace ago (a job being
	// provisioned right now). It returns what it removed (names, for the
	// log). It never touches another runner's or another daemon's hosts.
	Reap(ctx context.Context, keep []Handle, grace time.Duration) ([]string, error)
}

// Error is an executor failure with what the dispatcher needs to decide:
// retry (transient) or fail the job (permanent), and what to tell the user.
type Error struct {
	Op        string // provision, launch, decommission, …
	Permanent bool
	// FailureReason for GitLab when the job fails because of this error;
	// runner_system_failure when empty.
	FailureReason string
	Err           error
}

func (e *Error) Error() string { return e.Op + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Permanent marks err as not worth retrying.
func Permanent(op string, err error) error {
	return &Error{Op: op, Permanent: true, Err: err}
}

// Transient marks err as worth retrying.
func Transient(op string, err error) error {
	return &Error{Op: op, Err: err}
}

// IsPermanent tells whether err should fail the job at once. Errors that are
// not *Error are transient; context errors are neither (the caller stops).
func IsPermanent(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Permanent
}

// FailureReason is the GitLab failure_reason for a job failed by err.
func FailureReason(err error) string {
	var e *Error
	if errors.As(err, &e) && e.FailureReason != "" {
		return e.FailureReason
	}
	return "runner_system_failure"
}

// ErrUnsupportedHandle is returned for a handle an executor cannot read
// (e.g. another executor's).
var ErrUnsupportedHandle = errors.New("unsupported host handle")

// BadHandle wraps ErrUnsupportedHandle with details.
func BadHandle(h Handle, why string) error {
	s := string(h)
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return Permanent("decode-handle", fmt.Errorf("%w %s: %s", ErrUnsupportedHandle, s, why))
}

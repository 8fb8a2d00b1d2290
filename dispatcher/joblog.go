package dispatcher

import (
	"context"
	"errors"
	"hash/crc32"
	"time"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/job"
	"gitlab.com/paas-runner/paas-runner/state"
)

// The daemon's own lines in a job's log.
//
// Progress lines ("provisioning a … host", "host ready after …") are held
// (holdLine) for at most Config.LogHold, GitLab's usual log interval, and
// go out together: with the next line written at once (traceLine: errors,
// retries, guard lines), when the hold expires, or, for executors whose
// inner runner takes them (executors.LeadTaker), in the inner runner's
// first log update, at the offset and checksum the daemon hands over. A
// fast host thus costs the daemon no log request at all, a slow one one
// request for both lines.
//
// Lines handed over that GitLab may not have yet are the job's lead: if
// the daemon writes again (its host died, its launch failed), the lead
// goes first unless GitLab shows the inner runner sent it (its log is
// longer than where the daemon's part ended).

// TraceAtWriter is a JobSource that can write to a job log at an offset
// without following GitLab's end: when GitLab's log is not offset bytes
// long (416), nothing is written and have says how long it is (have < 0
// when the data was written).
type TraceAtWriter interface {
	WriteTraceAt(ctx context.Context, id int64, jobToken string, offset int64, data []byte) (next, have int64, jobStatus string, err error)
}

// jobLog is a job's daemon-side log state (tracked.log), guarded by its mu.
type jobLog struct {
	held  []byte      // progress lines not sent yet
	timer *time.Timer // sends held when the hold expires
	lead  []byte      // handed to the inner runner; GitLab may lack it
}

// holdLine adds a progress line, sent within Config.LogHold.
func (d *Dispatcher) holdLine(t *tracked, line string) {
	t.logMu.Lock()
	defer t.logMu.Unlock()
	t.log.held = append(t.log.held, line+"\n"...)
	if t.log.timer == nil {
		t.log.timer = time.AfterFunc(d.cfg.LogHold, func() { d.flushHeld(t) })
	}
}

// flushHeld sends the held lines now (the hold expired, or the job's
// launch stops here).
func (d *Dispatcher) flushHeld(t *tracked) {
	ctx, cancel := context.WithTimeout(d.work, 30*time.Second)
	defer cancel()
	t.logMu.Lock()
	defer t.logMu.Unlock()
	if len(t.log.held) == 0 {
		return // sent meanwhile, or handed over: not the lead's moment
	}
	if !t.isConfirmed() && t.phase().Pending() {
		return // GitLab takes no log before the confirmation: kept for the next write
	}
	d.writeLocked(ctx, t, nil)
}

// traceLine writes one line to the job log at once, after the held lines
// (best effort). A job that is no longer running stops provisioning.
func (d *Dispatcher) traceLine(ctx context.Context, t *tracked, line string, isErr bool) {
	if !t.isConfirmed() && t.phase().Pending() {
		// not confirmed yet (two-phase commit): GitLab would answer 403
		// Job-Status: pending, read as "the job is not running"
		t.logger().Info("job log line kept back: the job is not confirmed to GitLab yet", zap.String("line", line))
		return
	}
	if isErr {
		line = ansiRed + line + ansiReset
	}
	t.logMu.Lock()
	defer t.logMu.Unlock()
	d.writeLocked(ctx, t, []byte(line+"\n"))
}

// handOver readies the job log for Launch: with an executor whose inner
// runner takes the daemon's last lines, they become ej's lead; otherwise
// they are written now. ej gets the offset and checksum to go on from.
func (d *Dispatcher) handOver(ctx context.Context, t *tracked, ej *executors.Job) {
	t.logMu.Lock()
	defer t.logMu.Unlock()
	lt, ok := t.r.Executor.(executors.LeadTaker)
	if ok && lt.TakesTraceLead() {
		t.log.lead = append(t.log.lead, t.log.held...)
		t.log.held = nil
		t.stopHoldLocked()
		ej.TraceLead = append([]byte(nil), t.log.lead...)
	} else {
		d.writeLocked(ctx, t, nil)
		ej.TraceLead = nil
	}
	cur := t.get()
	ej.TraceOffset, ej.TraceCRC = cur.TraceOffset, cur.TraceCRC
}

func (t *tracked) stopHoldLocked() {
	if t.log.timer != nil {
		t.log.timer.Stop()
		t.log.timer = nil
	}
}

// writeLocked writes the lead, the held lines and data (t.logMu held).
func (d *Dispatcher) writeLocked(ctx context.Context, t *tracked, data []byte) {
	data = append(append([]byte(nil), t.log.held...), data...)
	t.log.held = nil
	t.stopHoldLocked()
	rec := t.get()
	if len(t.log.lead) > 0 {
		lead := t.log.lead
		t.log.lead = nil
		if aw, ok := t.r.Source.(TraceAtWriter); ok {
			all := append(append([]byte(nil), lead...), data...)
			next, have, status, err := aw.WriteTraceAt(ctx, rec.JobID, rec.Token, rec.TraceOffset, all)
			if err == nil && have < 0 {
				d.wrote(t, rec.TraceOffset, all, next, status, nil)
				return
			}
			if err == nil && have > rec.TraceOffset {
				// the inner runner sent the lead, and maybe more: the
				// daemon's data goes after it
				t.update(d.store, func(j *state.Job) { j.TraceOffset, j.TraceCRC = have, nil })
			} else if err != nil {
				d.wrote(t, rec.TraceOffset, all, 0, "", err)
				if !errors.Is(err, job.ErrNotRunning) {
					t.log.lead = lead // not known written: tried again next time
				}
				return
			}
			if err == nil && have <= rec.TraceOffset {
				// GitLab's log is shorter than the daemon's part (it
				// lost some): the lead goes on after what it has
				data = all
			}
		}
		// a source that cannot tell whether GitLab has the lead: dropped
		// rather than risk it twice
	}
	if len(data) == 0 {
		return
	}
	rec = t.get()
	var next int64
	var status string
	var err error
	if sw, ok := t.r.Source.(TraceStatusWriter); ok {
		next, status, err = sw.WriteTraceStatus(ctx, rec.JobID, rec.Token, rec.TraceOffset, data)
	} else {
		next, err = t.r.Source.WriteTrace(ctx, rec.JobID, rec.Token, rec.TraceOffset, data)
	}
	d.wrote(t, rec.TraceOffset, data, next, status, err)
}

// wrote records the answer to a write of data at off.
func (d *Dispatcher) wrote(t *tracked, off int64, data []byte, next int64, status string, err error) {
	switch {
	case err == nil:
		if status == job.StatusCanceling && t.phase().Pending() {
			t.stopProvisioning("the job was canceled in GitLab", job.StatusCanceling)
		} else {
			d.tracker.touch(t) // GitLab answered: the job runs
		}
		t.update(d.store, func(j *state.Job) {
			if j.TraceOffset == 0 && j.TraceCRC == nil {
				zero := uint32(0)
				j.TraceCRC = &zero
			}
			if j.TraceCRC != nil && j.TraceOffset == off && next == off+int64(len(data)) {
				c := crc32.Update(*j.TraceCRC, crc32.IEEETable, data)
				j.TraceCRC = &c
			} else {
				j.TraceCRC = nil // appended after someone else's output
			}
			j.TraceOffset = next
		})
	case errors.Is(err, job.ErrNotRunning):
		if t.phase().Pending() {
			t.stopProvisioning("the job is not running in GitLab any more", job.StatusCanceled)
		}
	case ctx0(err):
	default:
		t.logger().Debug("could not write to the job log", zap.Error(err))
	}
}

func ctx0(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

package jobrunner

import (
	"context"
	"errors"
	"hash/crc32"
	"net/http"
	"sync"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator"
	"gitlab.com/paas-runner/paas-runner/job"
)

// Trace is the job log: an io.Writer that masks secrets (even split across
// writes), keeps a bounded buffer (writers wait when GitLab is slower than
// the job), and streams it with PATCH /jobs/:id/trace while the job runs:
// what was written goes out at the next tick of the interval GitLab asks
// for (X-GitLab-Trace-Update-Interval), batched (one PATCH per interval, or
// sooner when much is pending), resuming at GitLab's offset on 416.
type Trace struct {
	client *coordinator.Client
	id     int64
	token  string

	mu        sync.Mutex
	cond      *sync.Cond
	masker    *masker
	lastWrite time.Time
	kick      chan struct{} // much is pending: send without waiting for the tick
	pending   []byte        // masked, not sent yet
	// history: the last bytes GitLab acknowledged, from histStart on
	// (histCRC: the log's CRC up to histStart), to resend what GitLab says
	// it lost (416)
	history   []byte
	histStart int64
	histCRC   uint32
	offset    int64  // GitLab's log length after what was sent
	crc       uint32 // of the whole log, the daemon's part included
	crcKnown  bool
	total     int64 // bytes produced (sent or pending), for the final update
	interval  time.Duration
	linger    time.Duration // traceLinger; tests change it
	closed    bool
	limit     int64 // output limit; past it, output is dropped with a note
	limited   bool
	status    func(string) // called with every Job-Status seen
	sendErr   error
}

const (
	maxPending = 1 << 20 // bytes buffered before writers wait
	maxPatch   = 1 << 20 // bytes per PATCH
	maxHistory = 2 << 20 // bytes of sent log kept to resend on 416 (up to twice that)
)

// NewTrace continues a job log at offset, whose CRC32 so far is crc.
// secrets are replaced by [MASKED] wherever they appear, and so are the
// characters of tokens that begin with one of tokenPrefixes.
func NewTrace(client *coordinator.Client, id int64, token string, offset int64, crc *uint32, secrets, tokenPrefixes []string, limit int64, interval time.Duration, status func(string)) *Trace {
	t := &Trace{client: client, id: id, token: token, offset: offset, total: offset, interval: interval, linger: traceLinger, limit: limit, status: status,
		masker: newMasker(secrets, tokenPrefixes), kick: make(chan struct{}, 1)}
	switch {
	case crc != nil:
		t.crc, t.crcKnown = *crc, true
	case offset == 0:
		t.crcKnown = true
	}
	t.histStart, t.histCRC = offset, t.crc
	t.cond = sync.NewCond(&t.mu)
	return t
}

// Lead puts the daemon's last lines (job.json's trace_lead) first in the
// log, as they are: the daemon wrote none of its lines masked, and they
// go out with the first update, counted in the size and checksum.
func (t *Trace) Lead(p []byte) {
	if len(p) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pending = append(t.pending, p...)
	t.total += int64(len(p))
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// Write adds job output to the log.
func (t *Trace) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for len(t.pending) >= maxPending && !t.closed && t.sendErr == nil {
		t.cond.Wait()
	}
	if t.closed {
		return 0, errors.New("trace closed")
	}
	if t.sendErr != nil {
		return len(p), nil // GitLab takes no more: the output goes nowhere
	}
	was := len(t.pending)
	t.emit(t.masker.write(p))
	t.lastWrite = time.Now()
	if (was == 0 && len(t.pending) > 0) || len(t.pending) >= maxPatch/2 {
		// output after a send, or much of it: the sender decides
		// whether it goes now
		select {
		case t.kick <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

// releaseHeld sends on the output held back as the possible beginning of
// a secret when nothing was written for a while (half an interval): a
// line must not wait for output that may never come.
func (t *Trace) releaseHeld(quiet time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.masker.holding() && time.Since(t.lastWrite) >= quiet {
		t.emit(t.masker.release())
	}
}

func (t *Trace) emit(out []byte) {
	if t.limit > 0 && t.total+int64(len(out)) > t.limit {
		if !t.limited {
			t.limited = true
			// as gitlab-runner: what fits below the limit is kept, then the note
			if room := t.limit - t.total; room > 0 {
				t.pending = append(t.pending, out[:room]...)
				t.total += room
			}
			note := []byte("\n\x1b[31;1mJob's log exceeded limit of " + itoa(t.limit) + " bytes.\nJob execution will continue but no more output will be collected.\x1b[0;m\n")
			t.pending = append(t.pending, note...)
			t.total += int64(len(note))
		}
		return
	}
	t.pending = append(t.pending, out...)
	t.total += int64(len(out))
}

func itoa(n int64) string { return string(appendInt(nil, n)) }

func appendInt(b []byte, n int64) []byte {
	if n >= 10 {
		b = appendInt(b, n/10)
	}
	return append(b, byte('0'+n%10))
}

// How the log is sent: at most one PATCH per interval on average, as
// GitLab asks (X-GitLab-Trace-Update-Interval), but not on a fixed tick:
// a token bucket of traceBurst PATCHes, refilled one per interval, lets
// output that comes after a quiet spell (the job's first lines, the
// script's first line) go out after traceLinger instead of waiting for
// the next tick; a busy log settles at one PATCH per interval. Much
// pending output (half a PATCH) goes at once.
const (
	traceBurst  = 3
	traceLinger = 100 * time.Millisecond // output gathered before a send
)

// Run sends the log until ctx ends; Close sends what is left. When there
// was nothing to send for an interval, a keep-alive (PUT state=running)
// asks GitLab how the job is, so that a silent job is still canceled.
func (t *Trace) Run(ctx context.Context) {
	tokens, counted := float64(traceBurst), time.Now()
	lastContact := time.Now()
	var since time.Time // when the pending output began to wait
	timer := time.NewTimer(t.currentInterval() / 2)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.kick:
		case <-timer.C:
		}
		iv := t.currentInterval()
		t.releaseHeld(iv / 2)
		now := time.Now()
		tokens = min(traceBurst, tokens+float64(now.Sub(counted))/float64(iv))
		counted = now
		pending, big := t.pendingSize()
		if pending == 0 {
			since = time.Time{}
		} else if since.IsZero() {
			since = now
		}
		next := iv / 2 // to release held output, or keep alive
		switch {
		case pending > 0 && (big || tokens >= 1 && now.Sub(since) >= t.linger):
			tokens = max(0, tokens-1)
			since = time.Time{}
			if t.flush(ctx) == nil {
				lastContact = time.Now()
			}
			if p, _ := t.pendingSize(); p > 0 {
				next = 0 // written while sending: its own turn
			}
		case pending > 0 && tokens >= 1:
			next = t.linger - now.Sub(since)
		case pending > 0:
			next = time.Duration((1 - tokens) * float64(iv))
		case now.Sub(lastContact) >= min(iv, 30*time.Second):
			t.keepAlive(ctx)
			lastContact = time.Now()
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(max(next, time.Millisecond))
	}
}

// pendingSize is how much is waiting to be sent, and whether it is much.
func (t *Trace) pendingSize() (int, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pending), len(t.pending) >= maxPatch/2
}

func (t *Trace) currentInterval() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.interval
}

func (t *Trace) keepAlive(ctx context.Context) {
	res, err := t.client.UpdateJob(ctx, t.id, t.token, coordinator.Update{State: job.StatusRunning})
	if t.status == nil {
		return
	}
	switch {
	case res != nil && res.JobStatus != "":
		t.status(res.JobStatus)
	case errors.Is(err, job.ErrNotRunning):
		t.status(job.StatusCanceled)
	case coordinator.StatusOf(err) == http.StatusNotFound:
		t.status(statusRefused) // the job is gone
	}
}

// flush sends what is pending when it is called (output written while it
// sends waits for the next send: a busy log is not sent as fast as GitLab
// answers).
func (t *Trace) flush(ctx context.Context) error {
	ranges := 0
	t.mu.Lock()
	left := len(t.pending)
	t.mu.Unlock()
	for {
		t.mu.Lock()
		if len(t.pending) == 0 || left <= 0 || t.sendErr != nil {
			err := t.sendErr
			t.mu.Unlock()
			return err
		}
		chunk := t.pending[:min(len(t.pending), left, maxPatch)]
		off := t.offset
		t.mu.Unlock()

		res, err := t.client.PatchTrace(ctx, t.id, t.token, off, chunk)
		if res.JobStatus != "" && t.status != nil {
			t.status(res.JobStatus)
		}
		var re *coordinator.RangeError
		switch {
		case errors.As(err, &re) && ranges < 5:
			ranges++
			t.mu.Lock()
			t.resync(off, len(chunk), re.Have)
			left = len(t.pending) // what GitLab lost is sent again too
			t.mu.Unlock()
			continue
		case errors.Is(err, job.ErrNotRunning):
			// 403 (or 404): GitLab takes no more of this job's log. Without
			// Job-Status (the log is over GitLab's size limit, or the
			// token is refused) this stops the job too, like gitlab-runner.
			if res.JobStatus == "" && t.status != nil {
				t.status(statusRefused)
			}
			t.mu.Lock()
			t.sendErr = err
			t.pending = nil
			t.cond.Broadcast()
			t.mu.Unlock()
			return err
		case err != nil:
			return err
		}
		t.mu.Lock()
		t.sent(chunk)
		t.pending = t.pending[len(chunk):]
		left -= len(chunk)
		if len(t.pending) == 0 {
			t.pending = nil // let the buffer go
		}
		if res.UpdateInterval > 0 {
			t.interval = min(res.UpdateInterval, t.interval*20)
		}
		t.cond.Broadcast()
		t.mu.Unlock()
	}
}

// statusRefused is passed to the status callback when GitLab refuses the
// log without saying the job's status: the job must stop.
const statusRefused = "refused"

// sent records that GitLab has data at the end of its log (t.offset).
func (t *Trace) sent(data []byte) {
	t.crc = crc32.Update(t.crc, crc32.IEEETable, data)
	t.offset += int64(len(data))
	t.history = append(t.history, data...)
	if len(t.history) > 2*maxHistory {
		drop := len(t.history) - maxHistory
		t.histCRC = crc32.Update(t.histCRC, crc32.IEEETable, t.history[:drop])
		t.histStart += int64(drop)
		t.history = t.history[:copy(t.history, t.history[drop:])] // in place: no new buffer
	}
}

// resync follows a 416: GitLab's log is have bytes long, while a PATCH of
// n bytes was sent at off. Resending starts where GitLab is, from this
// trace's own buffer: of the chunk, what GitLab already has (its answer
// to an earlier try was lost) is not sent again; what GitLab lost is sent
// again from the history.
func (t *Trace) resync(off int64, n int, have int64) {
	switch {
	case have > off && have <= off+int64(n):
		// GitLab has the beginning of the chunk: ours
		k := int(have - off)
		t.sent(t.pending[:k])
		t.pending = t.pending[k:]
	case have > off:
		// someone else wrote meanwhile (the daemon): ours goes after, and
		// the checksum of the whole log cannot be known
		t.offset = have
		t.crcKnown = false
	case have >= t.histStart:
		// GitLab lost the end of what it had acknowledged
		k := int(have - t.histStart)
		t.pending = append(append([]byte(nil), t.history[k:]...), t.pending...)
		t.history = t.history[:k]
		t.offset = have
		t.crc = crc32.Update(t.histCRC, crc32.IEEETable, t.history)
	default:
		// lost before what this trace keeps (or the daemon's part): the
		// log has a gap; go on at GitLab's end
		t.offset = have
		t.crcKnown = false
	}
	t.cond.Broadcast()
}

// Close releases the held-back tail and sends everything; it returns the
// log's final size and checksum.
func (t *Trace) Close(ctx context.Context) (int64, string, error) {
	t.mu.Lock()
	t.emit(t.masker.release())
	t.closed = true
	t.cond.Broadcast()
	t.mu.Unlock()
	var err error
	for attempt := 0; attempt < 10; attempt++ {
		if err = t.flush(ctx); err == nil || errors.Is(err, job.ErrNotRunning) || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Duration(attempt+1) * 200 * time.Millisecond)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.crcKnown {
		return t.offset, "", err
	}
	return t.offset, coordinator.Checksum32(t.crc), err
}

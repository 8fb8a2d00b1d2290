package jobrunner

import (
	"bytes"
	"context"
	"errors"
	"hash/crc32"
	"sync"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator"
	"gitlab.com/paas-runner/paas-runner/job"
)

// Trace is the job log: an io.Writer that masks secrets (even split across
// writes), keeps a bounded buffer (writers wait when GitLab is slower than
// the job), and sends it incrementally with PATCH /jobs/:id/trace at the
// interval GitLab asks for, resuming at GitLab's offset on 416.
type Trace struct {
	client *coordinator.Client
	id     int64
	token  string

	mu       sync.Mutex
	cond     *sync.Cond
	masks    [][]byte
	maxMask  int
	carry    []byte // tail kept back: a secret may continue in the next write
	pending  []byte // masked, not sent yet
	offset   int64  // GitLab's log length after what was sent
	crc      uint32 // of the whole log, the daemon's part included
	crcKnown bool
	total    int64 // bytes produced (sent or pending), for the final update
	interval time.Duration
	closed   bool
	limit    int64 // output limit; past it, output is dropped with a note
	limited  bool
	status   func(string) // called with every Job-Status seen
	sendErr  error
}

const (
	maxPending = 1 << 20 // bytes buffered before writers wait
	maxPatch   = 1 << 20 // bytes per PATCH
)

// NewTrace continues a job log at offset, whose CRC32 so far is crc.
// secrets are replaced by [MASKED] wherever they appear.
func NewTrace(client *coordinator.Client, id int64, token string, offset int64, crc *uint32, secrets []string, limit int64, interval time.Duration, status func(string)) *Trace {
	t := &Trace{client: client, id: id, token: token, offset: offset, total: offset, interval: interval, limit: limit, status: status}
	switch {
	case crc != nil:
		t.crc, t.crcKnown = *crc, true
	case offset == 0:
		t.crcKnown = true
	}
	t.cond = sync.NewCond(&t.mu)
	for _, s := range secrets {
		if len(s) >= 4 { // like GitLab, shorter values cannot be masked safely
			t.masks = append(t.masks, []byte(s))
			t.maxMask = max(t.maxMask, len(s))
		}
	}
	return t
}

var masked = []byte("[MASKED]")

func (t *Trace) mask(b []byte) []byte {
	for _, m := range t.masks {
		if bytes.Contains(b, m) {
			b = bytes.ReplaceAll(b, m, masked)
		}
	}
	return b
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
	// Complete secrets are replaced; only a secret still incomplete can
	// end the buffer, within its last maxMask-1 bytes: hold those back.
	out := t.mask(append(t.carry, p...))
	keep := 0
	if t.maxMask > 1 {
		keep = min(len(out), t.maxMask-1)
	}
	t.carry = append([]byte(nil), out[len(out)-keep:]...)
	t.emit(out[:len(out)-keep])
	return len(p), nil
}

func (t *Trace) emit(out []byte) {
	if t.limit > 0 && t.total+int64(len(out)) > t.limit {
		if !t.limited {
			t.limited = true
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

// Run sends the log until ctx ends; Close sends what is left. When there
// was nothing to send for an interval, a keep-alive (PUT state=running)
// asks GitLab how the job is, so that a silent job is still canceled.
func (t *Trace) Run(ctx context.Context) {
	last := time.Now()
	for {
		t.mu.Lock()
		iv := t.interval
		had := len(t.pending) > 0
		t.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(iv):
		}
		if had || t.hasPending() {
			if t.flush(ctx) == nil {
				last = time.Now()
			}
			continue
		}
		if time.Since(last) >= min(iv, 30*time.Second) {
			t.keepAlive(ctx)
			last = time.Now()
		}
	}
}

func (t *Trace) hasPending() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pending) > 0
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
	}
}

// flush sends everything pending.
func (t *Trace) flush(ctx context.Context) error {
	for {
		t.mu.Lock()
		if len(t.pending) == 0 {
			t.mu.Unlock()
			return nil
		}
		chunk := t.pending[:min(len(t.pending), maxPatch)]
		off := t.offset
		t.mu.Unlock()

		res, err := t.client.AppendTrace(ctx, t.id, t.token, off, chunk)
		if res.JobStatus != "" && t.status != nil {
			t.status(res.JobStatus)
		}
		t.mu.Lock()
		if err != nil {
			if errors.Is(err, job.ErrNotRunning) {
				t.sendErr = err
				t.cond.Broadcast()
			}
			t.mu.Unlock()
			return err
		}
		t.crc = crc32.Update(t.crc, crc32.IEEETable, chunk)
		if res.Offset != off+int64(len(chunk)) {
			t.crcKnown = false // someone else wrote meanwhile
		}
		t.offset = res.Offset
		t.pending = t.pending[len(chunk):]
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

// Close releases the held-back tail and sends everything; it returns the
// log's final size and checksum.
func (t *Trace) Close(ctx context.Context) (int64, string, error) {
	t.mu.Lock()
	if t.carry != nil {
		t.emit(t.mask(t.carry))
		t.carry = nil
	}
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

// Package state is paas-runner's crash-safe memory: a versioned JSON file
// listing every job the daemon is responsible for, in the shape of Heptapod
// PAAS Runner's state file (launched / pending with the full payload /
// to_decommission), so that a Heptapod file imports.
//
// The file is only ever replaced atomically (temp file, fsync, rename, dir
// fsync), is mode 0600, and is protected by an exclusive flock on a lock
// file beside it. It is never deleted or truncated, whatever goes wrong.
//
// Between two rewrites, changes are appended to a journal beside it (see
// journal.go), so that making one change durable costs a small append and
// fdatasync however many jobs there are. Writes are grouped: any number of
// changes made while a write is in progress go to disk together in the
// next one (group commit). The journal is folded into the file when it
// grows, every 30 s, and at Save/Close.
package state

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gitlab.com/paas-runner/paas-runner/internal/atomicfile"
)

// Version is the state file format this build writes.
const Version = 1

// Phase is where a job is in its life, as far as the state file is concerned.
type Phase string

const (
	// Acquired: received from GitLab, nothing created yet.
	Acquired Phase = "acquired"
	// Provisioning: the host may be being created (its handle is recorded).
	Provisioning Phase = "provisioning"
	// Launching: the host exists; the job may be being handed to it.
	Launching Phase = "launching"
	// Launched: the job runs on its host.
	Launched Phase = "launched"
	// Decommissioning: the host must be removed.
	Decommissioning Phase = "decommissioning"
)

// Pending reports whether the job has not been launched yet (its full
// payload is kept).
func (p Phase) Pending() bool { return p == Acquired || p == Provisioning || p == Launching }

// Job is one job handle. The JSON keys are Heptapod's where it has them.
type Job struct {
	RunnerID    string `json:"runner_name"`
	JobID       int64  `json:"job_id"`
	Token       string `json:"token"`
	TraceOffset int64  `json:"trace_offset"`
	// TraceCRC is the CRC32 of the job log up to TraceOffset, when the
	// daemon wrote all of it (nil when unknown), so that the inner runner
	// can send the checksum of the whole log.
	TraceCRC       *uint32         `json:"trace_crc32,omitempty"`
	ExpectedWeight float64         `json:"expected_weight"`
	Resource       json.RawMessage `json:"paas_resource,omitempty"`
	Phase          Phase           `json:"phase,omitempty"`
	Executor       string          `json:"executor,omitempty"`
	AcquiredAt     time.Time       `json:"acquired_at,omitzero"`
	LaunchedAt     time.Time       `json:"launched_at,omitzero"`
	// KeepResources: never decommission (paas_finished_jobs_keep_resources,
	// paas_decommission_launch_failures=false). Still counted as a job.
	KeepResources bool `json:"keep_resources,omitempty"`
	// Failure, when set, is why the job failed before launch; it must be
	// reported to GitLab before the job is forgotten.
	Failure string `json:"failure,omitempty"`
	// Reported: GitLab has been told about Failure.
	Reported bool `json:"failure_reported,omitempty"`
	// Payload is the full jobs/request payload, kept while Phase.Pending().
	Payload json.RawMessage `json:"-"`
	// Imported marks a handle read from a Heptapod state file.
	Imported bool `json:"imported,omitempty"`
}

// Key identifies a job across runners.
type Key struct {
	Runner string
	ID     int64
}

func (j Job) Key() Key { return Key{j.RunnerID, j.JobID} }

func (k Key) String() string { return fmt.Sprintf("%s/%d", k.Runner, k.ID) }

// Errors that make loading refuse the file (and the daemon exit 2).
var (
	ErrLocked = errors.New("state file is in use by another paas-runner")
)

// FormatError is a file that cannot be read as a state file: corrupted, or
// written by a newer version. The file is left untouched.
type FormatError struct {
	Path string
	Msg  string
}

func (e *FormatError) Error() string { return e.Path + ": " + e.Msg }

// Store holds the jobs in memory and writes them to the file.
type Store struct {
	path string
	lock *os.File

	mu       sync.Mutex
	jobs     map[Key]*entry
	seq      uint64 // bumped on every change
	durable  uint64 // seq of the last durable write
	writeErr error  // last write error, nil once a write succeeded
	cond     *sync.Cond
	closed   bool
	wake     chan struct{}
	done     chan struct{}
	writes   uint64 // number of file writes, for tests and metrics
	imported bool
	waiters  int           // Sync calls waiting for a write
	urgent   chan struct{} // a Sync is waiting: write now

	journal      *os.File
	ops          [][]byte // journal records not written yet, in seq order
	opsLast      uint64   // seq of the last record in ops
	journalBytes int64    // bytes in the journal file
	snapSeq      uint64   // seq the state file holds
	snapWanted   uint64   // a Save asks for a snapshot holding this seq
	lastSnap     time.Time

	writeObs atomic.Pointer[WriteObserver]
	// journalSuspect: a failed append may have left bytes that could not
	// be cut off; only a snapshot (which empties the journal) is safe.
	journalSuspect bool
}

// lazyDelay is how long changes nobody waits for are held, so that they
// are written together and do not delay an urgent write-ahead Sync.
const lazyDelay = 100 * time.Millisecond

// A snapshot (full atomic rewrite of the state file) is taken when the
// journal passes snapshotBytes, or snapshotEvery after the last one.
var (
	snapshotBytes int64 = 4 << 20
	snapshotEvery       = 30 * time.Second
)

type entry struct {
	job Job
	enc []byte // the handle's JSON, cached between writes
}

// Open locks and loads the state file at path. A missing or empty file is an
// empty state; a Heptapod file (no version) is imported; a corrupted or
// future-version file is refused with a *FormatError.
func Open(path string) (*Store, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	lock, err := lockFile(abs + ".lock")
	if err != nil {
		return nil, err
	}
	s := &Store{path: abs, lock: lock, jobs: map[Key]*entry{}, wake: make(chan struct{}, 1), done: make(chan struct{}), urgent: make(chan struct{}, 1)}
	s.cond = sync.NewCond(&s.mu)
	if err := s.load(); err != nil {
		_ = unlock(lock)
		return nil, err
	}
	replayedTo, applied, err := replayJournal(journalPath(abs), s.snapSeq, s.jobs)
	if err != nil {
		_ = unlock(lock)
		return nil, &FormatError{Path: journalPath(abs), Msg: err.Error() + "; refusing to start (the files are left untouched)"}
	}
	s.seq, s.durable = replayedTo, replayedTo
	_, statErr := os.Lstat(journalPath(abs))
	jf, err := os.OpenFile(journalPath(abs), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		_ = unlock(lock)
		return nil, fmt.Errorf("opening the state journal: %w", err)
	}
	if errors.Is(statErr, os.ErrNotExist) {
		// A new journal's directory entry must be durable before anything
		// is acknowledged as written to it.
		if err := syncDir(filepath.Dir(abs)); err != nil {
			jf.Close()
			_ = unlock(lock)
			return nil, fmt.Errorf("syncing the state directory: %w", err)
		}
	}
	s.journal = jf
	if fi, err := jf.Stat(); err == nil {
		s.journalBytes = fi.Size()
	}
	if applied > 0 || s.journalBytes > 0 {
		// fold the journal into the state file before anything else
		if err := s.snapshot(); err != nil {
			jf.Close()
			_ = unlock(lock)
			return nil, fmt.Errorf("writing the state file: %w", err)
		}
	}
	s.lastSnap = time.Now()
	go s.writer()
	return s, nil
}

func lockFile(path string) (*os.File, error) {
	if fi, err := os.Stat(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("state_file: directory %s does not exist", filepath.Dir(path))
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", filepath.Dir(path))
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating state lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			if h := bytes.TrimSpace(holder); len(h) > 0 {
				return nil, fmt.Errorf("%w (pid %s holds %s)", ErrLocked, h, path)
			}
			return nil, fmt.Errorf("%w (%s is locked)", ErrLocked, path)
		}
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(fmt.Sprintf("%d\n", os.Getpid())), 0)
	return f, nil
}

func unlock(f *os.File) error {
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return f.Close()
}

// Path is the state file's absolute path.
func (s *Store) Path() string { return s.path }

// Imported tells whether the file loaded was a Heptapod state file.
func (s *Store) Imported() bool { return s.imported }

// Jobs returns a copy of every job, sorted by runner then job id.
func (s *Store) Jobs() []Job {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Job, 0, len(s.jobs))
	for _, e := range s.jobs {
		out = append(out, e.job)
	}
	sort.Slice(out, func(i, j int) bool { return less(out[i].Key(), out[j].Key()) })
	return out
}

func less(a, b Key) bool {
	if a.Runner != b.Runner {
		return a.Runner < b.Runner
	}
	return a.ID < b.ID
}

// Get returns the job with key k.
func (s *Store) Get(k Key) (Job, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.jobs[k]
	if !ok {
		return Job{}, false
	}
	return e.job, true
}

// Len is the number of jobs held.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.jobs)
}

// Put records j (replacing the job with the same key). It is durable once
// a later Sync returns nil.
func (s *Store) Put(j Job) {
	if !j.Phase.Pending() {
		j.Payload = nil
	}
	enc, err := encodeHandle(j)
	if err != nil {
		// Every field is plain data; this cannot happen with valid JSON
		// in Resource. Keep the job without its resource rather than lose it.
		j.Resource = nil
		enc, _ = encodeHandle(j)
	}
	e := &entry{job: j, enc: enc}
	s.mu.Lock()
	s.jobs[j.Key()] = e
	s.changed()
	s.ops = append(s.ops, putRecord(s.seq, e))
	s.opsLast = s.seq
	s.mu.Unlock()
}

// Delete forgets the job with key k.
func (s *Store) Delete(k Key) {
	s.mu.Lock()
	if _, ok := s.jobs[k]; ok {
		delete(s.jobs, k)
		s.changed()
		s.ops = append(s.ops, delRecord(s.seq, k))
		s.opsLast = s.seq
	}
	s.mu.Unlock()
}

func (s *Store) changed() {
	s.seq++
	if s.closed {
		return
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Sync returns once every change made before the call is on disk, or with
// the write error, or when ctx is done.
func (s *Store) Sync(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	target := s.seq
	if s.durable >= target {
		return nil
	}
	s.waiters++
	defer func() { s.waiters-- }()
	select {
	case s.urgent <- struct{}{}:
	default:
	}
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer stop()
	for s.durable < target {
		switch {
		case s.writeErr != nil:
			return s.writeErr
		case ctx.Err() != nil:
			return ctx.Err()
		case s.closed:
			return errors.New("state store closed")
		}
		s.cond.Wait()
	}
	return nil
}

// Save rewrites the state file now with everything (emptying the
// journal), and waits for it.
func (s *Store) Save(ctx context.Context) error {
	s.mu.Lock()
	s.snapWanted = s.seq + 1
	s.changed() // a seq with no record: only a snapshot makes it durable
	s.mu.Unlock()
	if err := s.Sync(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.snapSeq < s.snapWanted {
		return errors.New("state file not rewritten")
	}
	return nil
}

// Writes counts the file writes made so far.
func (s *Store) Writes() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writes
}

// writer is the single goroutine that writes: journal records as soon as
// a Sync waits (else grouped for lazyDelay), and snapshots of the whole
// state when the journal is large or old, or when Save asks. While the
// journal holds records, a timer folds it into the state file at most
// snapshotEvery after the last snapshot, even if nothing else happens: the
// state file on its own is never more than that behind.
func (s *Store) writer() {
	defer close(s.done)
	backoff := 50 * time.Millisecond
	for {
		var fold <-chan time.Time
		var foldTimer *time.Timer
		s.mu.Lock()
		if s.journalBytes > 0 || len(s.ops) > 0 {
			foldTimer = time.NewTimer(max(time.Until(s.lastSnap.Add(snapshotEvery)), lazyDelay))
			fold = foldTimer.C
		}
		s.mu.Unlock()
		var woken, open bool
		select {
		case _, open = <-s.wake:
			woken = true
		case <-fold:
		}
		if foldTimer != nil {
			foldTimer.Stop()
		}
		if woken && !open {
			return
		}
		if !woken {
			s.mu.Lock()
			if s.journalBytes > 0 || len(s.ops) > 0 {
				s.snapWanted = max(s.snapWanted, s.seq)
			}
			s.mu.Unlock()
		}
		s.mu.Lock()
		lazy := s.waiters == 0 && !s.closed && s.snapWanted <= s.snapSeq
		s.mu.Unlock()
		if lazy {
			t := time.NewTimer(lazyDelay)
			select {
			case <-t.C:
			case <-s.urgent:
			}
			t.Stop()
		}
		for {
			s.mu.Lock()
			if s.durable >= s.seq && s.snapWanted <= s.snapSeq {
				s.mu.Unlock()
				break
			}
			snap := s.snapWanted > s.snapSeq || s.journalBytes >= snapshotBytes || s.journalSuspect ||
				(s.journalBytes > 0 && time.Since(s.lastSnap) >= snapshotEvery) || s.opsLast < s.seq && len(s.ops) == 0
			var err error
			start := time.Now()
			if snap {
				s.mu.Unlock()
				err = s.snapshot()
			} else {
				ops, last := s.ops, s.opsLast
				s.ops = nil
				s.mu.Unlock()
				err = s.appendJournal(ops, last)
				if err != nil {
					s.mu.Lock()
					s.ops = append(ops, s.ops...) // keep them for the retry
					s.mu.Unlock()
				}
			}
			s.observeWrite(snap, time.Since(start), err)
			s.mu.Lock()
			s.writes++
			s.writeErr = err
			if err == nil {
				backoff = 50 * time.Millisecond
			}
			s.cond.Broadcast()
			closed := s.closed
			s.mu.Unlock()
			if err != nil {
				if closed {
					return
				}
				// A full disk or a permission change: keep the data in
				// memory, retry, and let Sync callers see the error.
				time.Sleep(backoff)
				backoff = min(backoff*2, 5*time.Second)
			}
		}
	}
}

// Fault injection for tests: how the journal is written and synced, and
// how a directory is synced.
var (
	writeJournal = func(f *os.File, b []byte) (int, error) { return f.Write(b) }
	syncJournal  = fdatasync
	syncDir      = atomicfile.SyncDir
)

// appendJournal writes records up to seq last and makes them durable.
func (s *Store) appendJournal(ops [][]byte, last uint64) error {
	if len(ops) > 0 {
		data := bytes.Join(ops, nil)
		n, err := writeJournal(s.journal, data)
		if err == nil && n < len(data) {
			err = io.ErrShortWrite
		}
		if err == nil {
			if err = syncJournal(s.journal); err != nil {
				err = fmt.Errorf("syncing the state journal: %w", err)
			}
		} else {
			err = fmt.Errorf("appending to the state journal: %w", err)
		}
		if err != nil {
			// A partial write (disk full) must not stay: the retry appends
			// the records again, and a torn line before them would make
			// the journal unreadable at the next start. Cut the file back
			// to its last good length; if even that fails, only a
			// snapshot may be written next.
			s.mu.Lock()
			good := s.journalBytes
			s.mu.Unlock()
			if terr := s.journal.Truncate(good); terr != nil {
				s.mu.Lock()
				s.journalSuspect = true
				s.mu.Unlock()
			}
			return err
		}
		s.mu.Lock()
		s.journalBytes += int64(n)
		s.mu.Unlock()
	}
	s.mu.Lock()
	s.durable = max(s.durable, last)
	s.mu.Unlock()
	return nil
}

// snapshot rewrites the state file atomically with every job, then empties
// the journal: everything up to the current seq is durable.
func (s *Store) snapshot() error {
	s.mu.Lock()
	target := s.seq
	data := s.encodeLocked(target)
	s.mu.Unlock()
	if err := atomicfile.WriteFile(s.path, data, 0o600); err != nil {
		return err
	}
	s.mu.Lock()
	// records up to target are in the state file now
	keep := s.ops[:0]
	for _, op := range s.ops {
		if recordSeq(op) > target {
			keep = append(keep, op)
		}
	}
	s.ops = keep
	s.snapSeq = target
	s.durable = max(s.durable, target)
	s.lastSnap = time.Now()
	j := s.journal
	s.mu.Unlock()
	if j != nil {
		// The state file holds everything the journal held: a crash before
		// this truncation only leaves records that replay skips by seq.
		if err := j.Truncate(0); err != nil {
			return fmt.Errorf("emptying the state journal: %w", err)
		}
		if err := syncJournal(j); err != nil {
			return fmt.Errorf("syncing the state journal: %w", err)
		}
		s.mu.Lock()
		s.journalBytes = 0
		s.journalSuspect = false
		s.mu.Unlock()
	}
	return nil
}

// recordSeq reads the seq at the start of a journal record.
func recordSeq(rec []byte) uint64 {
	rest := bytes.TrimPrefix(rec, []byte(`{"seq":`))
	end := bytes.IndexByte(rest, ',')
	if end < 0 {
		return 0
	}
	n, _ := strconv.ParseUint(string(rest[:end]), 10, 64)
	return n
}

// Release gives the state file up without rewriting it: for a daemon that
// refuses to start after Open (a problem found later in its
// configuration), so that the file stays byte for byte as it was (a
// Heptapod file is not converted, a hand-formatted one not reformatted).
// Changes made since Open that were made durable are in the journal,
// which the next Open replays; others are lost, as in a crash. After
// Close or Release it does nothing.
func (s *Store) Release() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.cond.Broadcast()
	s.mu.Unlock()
	close(s.wake)
	select {
	case s.urgent <- struct{}{}:
	default:
	}
	<-s.done
	s.closeJournal()
	return unlock(s.lock)
}

// closeJournal closes the journal and removes it when it holds nothing
// the state file does not.
func (s *Store) closeJournal() {
	if s.journal == nil {
		return
	}
	s.journal.Close()
	s.mu.Lock()
	empty := s.journalBytes == 0 && len(s.ops) == 0 && s.snapSeq >= s.seq
	s.mu.Unlock()
	if empty {
		_ = os.Remove(journalPath(s.path))
	}
}

// Close writes what is left, stops the writer and releases the lock.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	err := s.Save(ctx)
	cancel()
	s.mu.Lock()
	s.closed = true
	s.cond.Broadcast()
	s.mu.Unlock()
	close(s.wake)
	select {
	case s.urgent <- struct{}{}:
	default:
	}
	<-s.done
	s.closeJournal()
	if uerr := unlock(s.lock); err == nil {
		err = uerr
	}
	return err
}

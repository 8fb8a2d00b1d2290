package state

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sort"
	"time"
)

// WriteObserver is told about each write of the store: kind is "journal"
// (an append, fdatasync'ed) or "snapshot" (the state file rewritten).
type WriteObserver func(kind string, took time.Duration, err error)

// ObserveWrites installs f (for metrics); nil removes it.
func (s *Store) ObserveWrites(f WriteObserver) {
	if f == nil {
		s.writeObs.Store(nil)
		return
	}
	s.writeObs.Store(&f)
}

func (s *Store) observeWrite(snap bool, took time.Duration, err error) {
	f := s.writeObs.Load()
	if f == nil {
		return
	}
	kind := "journal"
	if snap {
		kind = "snapshot"
	}
	(*f)(kind, took, err)
}

// Read returns the jobs of the state file at path and its journal, as a
// daemon starting now would see them, without taking the lock a running
// daemon holds and without writing anything (paas-runner status). A
// missing file is an empty state.
func Read(path string) ([]Job, error) {
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("reading state file: %w", err)
	}
	jobs := map[Key]*entry{}
	var seq uint64
	if len(bytes.TrimSpace(data)) > 0 {
		list, _, jseq, err := decodeFile(data)
		if err != nil {
			return nil, &FormatError{Path: path, Msg: err.Error()}
		}
		seq = jseq
		for _, j := range list {
			jobs[j.Key()] = &entry{job: j}
		}
	}
	if _, _, err := replayJournal(journalPath(path), seq, jobs); err != nil {
		return nil, &FormatError{Path: journalPath(path), Msg: err.Error()}
	}
	out := make([]Job, 0, len(jobs))
	for _, e := range jobs {
		out = append(out, e.job)
	}
	sort.Slice(out, func(i, k int) bool { return less(out[i].Key(), out[k].Key()) })
	return out, nil
}

package guard

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"

	"gitlab.com/paas-runner/paas-runner/internal/atomicfile"
)

// Local keeps the state of one daemon's guards in a JSON file beside its
// state file (state.json.guards), rewritten atomically (write, fsync,
// rename) on every change, before the change is acted on: a hold is
// durable before provisioning starts, and holds and waiters survive a
// restart or SIGKILL.
type Local struct {
	path string
	mu   sync.Mutex
	st   *State
	// Writes counts file writes (tests, benchmarks).
	writes int
}

type localFile struct {
	Version int    `json:"version"`
	State   *State `json:"state"`
}

const localVersion = 1

// LocalPath is where the local backend keeps its file for a state file.
func LocalPath(statePath string) string { return statePath + ".guards" }

// OpenLocal loads (or starts) the file at path and makes the pools
// declared in pools (name → lock → metadata) exist: new locks are added,
// metadata updated, locks no longer declared (nor added with `paas-runner
// pool`) removed once free.
func OpenLocal(path string, pools map[string]map[string]string) (*Local, error) {
	l := &Local{path: path, st: NewState()}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("reading the guards file: %w", err)
	default:
		var f localFile
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil || f.State == nil {
			return nil, fmt.Errorf("%s: not a paas-runner guards file (%v); move it away to start with no locks held", path, err)
		}
		if f.Version != localVersion {
			return nil, fmt.Errorf("%s: version %d, this paas-runner reads version %d", path, f.Version, localVersion)
		}
		if f.State.Pools == nil {
			f.State.Pools = map[string]*Pool{}
		}
		if f.State.Waiters == nil {
			f.State.Waiters = map[string]*Waiter{}
		}
		l.st = f.State
	}
	if _, err := l.Update(context.Background(), func(s *State) bool { return SyncPools(s, pools) }); err != nil {
		return nil, err
	}
	return l, nil
}

// SyncPools makes s's admin pools those declared (mutex pools untouched),
// and the locks added with `paas-runner pool` (Lock.Added): a lock
// neither declared nor added goes once it is free.
func SyncPools(s *State, pools map[string]map[string]string) bool {
	changed := false
	for name, locks := range pools {
		p := s.Pools[name]
		if p == nil {
			p = &Pool{Locks: map[string]*Lock{}}
			s.Pools[name] = p
			changed = true
		}
		for ln, md := range locks {
			switch l := p.Locks[ln]; {
			case l == nil:
				p.Locks[ln] = &Lock{Metadata: md}
				changed = true
			case l.Metadata != md || l.Added:
				// declared now: the configuration's
				l.Metadata, l.Added = md, false
				changed = true
			}
		}
		for ln, l := range p.Locks {
			if _, ok := locks[ln]; !ok && l.Holder == nil && !l.Added {
				delete(p.Locks, ln)
				changed = true
			}
		}
	}
	for name, p := range s.Pools {
		if _, ok := pools[name]; ok || IsMutex(name) {
			continue
		}
		for ln, l := range p.Locks {
			if l.Holder == nil && !l.Added {
				delete(p.Locks, ln)
				changed = true
			}
		}
		if len(p.Locks) == 0 {
			delete(s.Pools, name)
			changed = true
		}
	}
	return changed
}

// Update implements Backend.
func (l *Local) Update(ctx context.Context, fn func(*State) bool) (*State, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	next := l.st.Clone()
	if !fn(next) {
		return l.st, nil
	}
	data, err := json.Marshal(localFile{Version: localVersion, State: next})
	if err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(l.path, data, 0o600); err != nil {
		return nil, fmt.Errorf("writing the guards file: %w", err)
	}
	l.writes++
	l.st = next
	return next, nil
}

// Branch implements Backend.
func (l *Local) Branch() string { return "local" }

// Writes is how many times the file was written.
func (l *Local) Writes() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.writes
}

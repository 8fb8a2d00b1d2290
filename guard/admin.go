package guard

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"
)

// Operator actions (paas-runner locks / pool), as state changes a backend
// applies with Update.

// ReadLocal reads a local backend's file without writing it (the daemon
// may be running).
func ReadLocal(path string) (*State, error) {
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return NewState(), nil
	}
	if err != nil {
		return nil, err
	}
	var f localFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil || f.State == nil {
		return nil, fmt.Errorf("%s: not a paas-runner guards file (%v)", path, err)
	}
	if f.State.Pools == nil {
		f.State.Pools = map[string]*Pool{}
	}
	if f.State.Waiters == nil {
		f.State.Waiters = map[string]*Waiter{}
	}
	return f.State, nil
}

// ReportOf describes a state as Manager.Report does (branch: the git
// backend's).
func ReportOf(st *State, pol *Policy, branch string) Report {
	return buildReport(st, Decide(st, pol, time.Now()), pol, branch)
}

// ResolveLock finds the pool id and lock a name as `paas-runner locks`
// shows it designates: lock:<project>:<name>, lock:<namespace>:group:<name>,
// pool:<pool>/<lock>, or <pool>/<lock>.
func ResolveLock(st *State, name string) (pool, lock string, err error) {
	for pn, p := range st.Pools {
		label := GuardLabel(pn)
		if IsMutex(pn) && label == name {
			return pn, MutexLock, nil
		}
		for ln := range p.Locks {
			if !IsMutex(pn) && (name == label+"/"+ln || name == pn+"/"+ln) {
				return pn, ln, nil
			}
		}
	}
	return "", "", fmt.Errorf("no lock %q (names are as `paas-runner locks` shows them: lock:PROJECT:NAME, pool:POOL/LOCK)", name)
}

// ForceRelease frees one lock whoever holds it; it returns the holder.
func ForceRelease(st *State, pool, lock string) (*Holder, bool) {
	l := st.Pools[pool].Locks[lock]
	if l == nil || l.Holder == nil {
		return nil, false
	}
	h := l.Holder
	l.Holder = nil
	return h, true
}

// PoolOp is pool-resource's add, add_claimed, remove and update on state.
// It reports whether it changed anything, or why it cannot be done now
// (update of a claimed lock: wait = true).
//
// declared is nil with the git backend (the pools are the repository's).
// With the local backend it is the configuration's pools (pool → lock →
// metadata): the locks it declares are the configuration's to change,
// the others are added here (Lock.Added) and kept across restarts and
// reloads; an update of a claimed lock fails at once (the daemon, which
// would release it, is stopped while the guards file is changed).
func PoolOp(st *State, op, pool, lock, metadata string, declared map[string]map[string]string) (changed, wait bool, err error) {
	if err := ValidName(pool); err != nil {
		return false, false, fmt.Errorf("pool: %w", err)
	}
	if err := ValidName(lock); err != nil {
		return false, false, fmt.Errorf("lock: %w", err)
	}
	if strings.HasPrefix(pool, MutexDirPrefix) {
		return false, false, fmt.Errorf("pool %q: reserved name", pool)
	}
	local := declared != nil
	if _, ok := declared[pool][lock]; ok && (op == "remove" || op == "update") {
		return false, false, fmt.Errorf("lock %s/%s is declared in the configuration ([[guards.pools]] %q, [guards.pools.locks]): %s there", pool, lock, pool,
			map[string]string{"remove": "remove it", "update": "change its metadata"}[op])
	}
	p := st.Pools[pool]
	switch op {
	case "add", "add-claimed":
		if p != nil && p.Locks[lock] != nil {
			return false, false, fmt.Errorf("lock %s/%s exists", pool, lock)
		}
		if p == nil {
			p = &Pool{Locks: map[string]*Lock{}}
			st.Pools[pool] = p
		}
		l := &Lock{Metadata: metadata, Added: local}
		if op == "add-claimed" {
			l.Holder = &Holder{} // held outside paas-runner, as pool-resource's add_claimed
		}
		p.Locks[lock] = l
		return true, false, nil
	case "remove":
		if p == nil || p.Locks[lock] == nil {
			return false, false, fmt.Errorf("no lock %s/%s", pool, lock)
		}
		delete(p.Locks, lock)
		if _, ok := declared[pool]; local && !ok && len(p.Locks) == 0 {
			delete(st.Pools, pool) // its last lock: the pool is gone
		}
		return true, false, nil
	case "update":
		if p == nil || p.Locks[lock] == nil {
			return PoolOp(st, "add", pool, lock, metadata, declared)
		}
		l := p.Locks[lock]
		if l.Holder != nil && local {
			return false, false, fmt.Errorf("lock %s/%s is claimed (by %s): release it first (paas-runner locks release)", pool, lock, holderLine(*l.Holder))
		}
		if l.Holder != nil {
			return false, true, nil
		}
		if l.Metadata == metadata {
			return false, false, nil
		}
		l.Metadata = metadata
		return true, false, nil
	}
	return false, false, fmt.Errorf("unknown pool operation %q (add, add-claimed, remove, update)", op)
}

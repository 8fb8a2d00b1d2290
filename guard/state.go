package guard

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// JobRef names a job across daemons and runners.
type JobRef struct {
	Daemon     string `json:"daemon"` // system_id of the daemon that acquired it
	Runner     string `json:"runner"` // runner id
	JobID      int64  `json:"job_id"`
	PipelineID int64  `json:"pipeline_id"`
	Project    string `json:"project,omitempty"`
	Ref        string `json:"ref,omitempty"`
}

// Key is unique per job and daemon.
func (j JobRef) Key() string { return fmt.Sprintf("%s/%s/%d", j.Daemon, j.Runner, j.JobID) }

// Holder is who holds a lock. A holder with JobID 0 is outside paas-runner
// (a Concourse pipeline): it has no lease and is never broken.
type Holder struct {
	JobRef
	Since   time.Time `json:"since"`
	Expires time.Time `json:"expires"` // lease end
	// Supersede: the job asked PAAS_LOCK_SUPERSEDE: an older job of its
	// project waiting for what it holds gives way.
	Supersede bool `json:"supersede,omitempty"`
}

// Lock is one lock of a pool; Holder nil when it is free.
type Lock struct {
	Metadata string  `json:"metadata,omitempty"`
	Holder   *Holder `json:"holder,omitempty"`
	// Added: made by `paas-runner pool add` on the local backend, not
	// declared in the configuration (which does not remove it).
	Added bool `json:"added,omitempty"`
}

// Pool is a set of locks. A project or group lock is a one-lock pool.
type Pool struct {
	Locks map[string]*Lock `json:"locks"`
}

// Waiter is a job waiting for its demands.
type Waiter struct {
	JobRef
	Demands   []Demand  `json:"demands"`
	Mode      Mode      `json:"mode,omitempty"` // what the job asked
	Supersede bool      `json:"supersede,omitempty"`
	Seq       uint64    `json:"seq"` // arrival order
	Since     time.Time `json:"since"`
	Deadline  time.Time `json:"deadline"`
	// JobTimeout is the job's timeout (its lease once granted).
	JobTimeout time.Duration `json:"job_timeout"`
	// SupersededBy is set when a newer pipeline's job superseded it; the
	// owning daemon fails the job and removes the record.
	SupersededBy int64 `json:"superseded_by,omitempty"`
}

// State is every pool, hold and waiter a backend keeps.
type State struct {
	Pools   map[string]*Pool   `json:"pools"`
	Waiters map[string]*Waiter `json:"waiters"`
	Seq     uint64             `json:"seq"`
}

// NewState is an empty state.
func NewState() *State { return &State{Pools: map[string]*Pool{}, Waiters: map[string]*Waiter{}} }

// Clone is a deep copy.
func (s *State) Clone() *State {
	c := &State{Pools: make(map[string]*Pool, len(s.Pools)), Waiters: make(map[string]*Waiter, len(s.Waiters)), Seq: s.Seq}
	for name, p := range s.Pools {
		np := &Pool{Locks: make(map[string]*Lock, len(p.Locks))}
		for ln, l := range p.Locks {
			nl := *l
			if l.Holder != nil {
				h := *l.Holder
				nl.Holder = &h
			}
			np.Locks[ln] = &nl
		}
		c.Pools[name] = np
	}
	for k, w := range s.Waiters {
		nw := *w
		nw.Demands = append([]Demand(nil), w.Demands...)
		c.Waiters[k] = &nw
	}
	return c
}

// Claim is one lock taken for a demand.
type Claim struct {
	Pool string `json:"pool"`
	Lock string `json:"lock"`
}

// HeldBy lists the claims held by job key, in demand order when the job
// is given (else sorted).
func (s *State) HeldBy(key string) []Claim {
	var out []Claim
	for _, pn := range sortedKeys(s.Pools) {
		p := s.Pools[pn]
		for _, ln := range sortedKeys(p.Locks) {
			if h := p.Locks[ln].Holder; h != nil && h.JobID != 0 && h.Key() == key {
				out = append(out, Claim{pn, ln})
			}
		}
	}
	return out
}

// Release frees every lock held by key and drops its waiter record; it
// reports whether anything changed.
func (s *State) Release(key string) bool {
	changed := false
	for _, p := range s.Pools {
		for _, l := range p.Locks {
			if l.Holder != nil && l.Holder.JobID != 0 && l.Holder.Key() == key {
				l.Holder = nil
				changed = true
			}
		}
	}
	if _, ok := s.Waiters[key]; ok {
		delete(s.Waiters, key)
		changed = true
	}
	return changed
}

// lockMode is the mode of one pool: the declared pool's, else the mode
// its waiters agree on, else the default. mixed: waiters disagree.
func lockMode(pol *Policy, pool string, askers []Mode) (m Mode, mixed bool) {
	if pp, ok := pol.pool(pool); ok {
		if pp.Mode != "" {
			return pp.Mode, false
		}
		return pol.defaultMode(), false
	}
	var agreed Mode
	for _, a := range askers {
		if a == "" {
			continue
		}
		if a == NewestReadyFirst {
			a = NewestFirst
		}
		if agreed == "" {
			agreed = a
		} else if agreed != a {
			return pol.defaultMode(), true
		}
	}
	if agreed == "" {
		return pol.defaultMode(), false
	}
	return agreed, false
}

// WaitStatus is why a waiter waits, for its log.
type WaitStatus struct {
	Mode  Mode
	Mixed bool // its locks or their waiters ask different modes: default applies
	// Blocked: what it waits for, first blocking demand first.
	Blocked []Blocked
}

// Blocked is one demand a waiter cannot have yet.
type Blocked struct {
	Pool    string
	Lock    string   // "" for any lock of the pool
	Holders []Holder // current holders of what it wants
	Ahead   int      // waiters before it wanting the same pool
	Free    int      // free locks of the pool (any-demands)
	Size    int      // locks in the pool
	Missing bool     // the pool or lock does not exist (yet)
}

// Decision is the outcome of one pass over the state.
type Decision struct {
	// Grants: waiter key → claims, one per demand, in demand order.
	Grants map[string][]Claim
	// Superseded: waiter key → newer pipeline id.
	Superseded map[string]int64
	// Broken: expired leases (pool/lock → holder) to free.
	Broken map[Claim]Holder
	// Expired waiters (deadline long gone: their daemon is not coming back).
	Expired []string
	Status  map[string]WaitStatus
	// Order is the waiters in decision order.
	Order []string
}

// waiterGrace is how long after its deadline a waiter record is dropped by
// anyone: its own daemon fails the job at the deadline.
const waiterGrace = 10 * time.Minute

// Decide runs one pass: expired leases are broken, supersede rules
// applied, then waiters are visited in one global order (by mode class,
// then pipeline id as the mode says, then arrival) and each is granted
// everything it asks if all of it is free and not reserved for a waiter
// before it; an ordered waiter that cannot be granted reserves what it
// asks, so later waiters do not overtake it on any of its locks. A waiter
// never holds part of its demands, so no two can deadlock, and the first
// waiter of the order gets its locks as soon as their holders release.
func Decide(s *State, pol *Policy, now time.Time) *Decision {
	d := &Decision{Grants: map[string][]Claim{}, Superseded: map[string]int64{}, Broken: map[Claim]Holder{}, Status: map[string]WaitStatus{}}
	// leases
	free := map[string]map[string]bool{} // pool → free locks (this pass)
	for _, pn := range sortedKeys(s.Pools) {
		p := s.Pools[pn]
		free[pn] = map[string]bool{}
		for ln, l := range p.Locks {
			if h := l.Holder; h != nil && h.JobID != 0 && !h.Expires.IsZero() && now.After(h.Expires) {
				d.Broken[Claim{pn, ln}] = *h
			} else if h != nil {
				continue
			}
			free[pn][ln] = true
		}
	}
	// waiters: drop long-expired, collect modes per pool
	askers := map[string][]Mode{}
	var live []*Waiter
	for _, k := range sortedKeys(s.Waiters) {
		w := s.Waiters[k]
		if !w.Deadline.IsZero() && now.After(w.Deadline.Add(waiterGrace)) {
			d.Expired = append(d.Expired, k)
			continue
		}
		if w.SupersededBy != 0 {
			continue
		}
		live = append(live, w)
		for _, dm := range w.Demands {
			askers[dm.Pool] = append(askers[dm.Pool], w.Mode)
		}
	}
	poolMode := map[string]Mode{}
	poolMixed := map[string]bool{}
	for pn, as := range askers {
		poolMode[pn], poolMixed[pn] = lockMode(pol, pn, as)
	}
	// supersede: on a pool whose rule (declared or asked) says so, a
	// waiter of the same project and an older pipeline gives way to a
	// newer one waiting for what it wants, or holding the very lock it
	// names (it would deploy older code after it; one asking any lock of
	// a pool may get another).
	for _, pn := range sortedKeys(s.Pools) {
		for ln, l := range s.Pools[pn].Locks {
			h := l.Holder
			if h == nil || h.JobID == 0 || !(h.Supersede || anySupersede(pol, []Demand{{Pool: pn}})) {
				continue
			}
			for _, o := range live {
				if o.Project != h.Project || o.PipelineID >= h.PipelineID || !names(o.Demands, Claim{pn, ln}) {
					continue
				}
				if cur, ok := d.Superseded[o.Key()]; !ok || h.PipelineID > cur {
					d.Superseded[o.Key()] = h.PipelineID
				}
			}
		}
	}
	for _, w := range live {
		for _, o := range live {
			if o == w || o.Project != w.Project || o.PipelineID >= w.PipelineID || !(w.Supersede || anySupersede(pol, w.Demands)) {
				continue
			}
			if shares(w.Demands, o.Demands) {
				if cur, ok := d.Superseded[o.Key()]; !ok || w.PipelineID > cur {
					d.Superseded[o.Key()] = w.PipelineID
				}
			}
		}
	}
	type cand struct {
		w     *Waiter
		mode  Mode
		mixed bool
	}
	var cands []cand
	for _, w := range live {
		if _, gone := d.Superseded[w.Key()]; gone {
			continue
		}
		var m Mode
		mixed := false
		for _, dm := range w.Demands {
			pm := poolMode[dm.Pool]
			mixed = mixed || poolMixed[dm.Pool]
			if m == "" {
				m = pm
			} else if m.class() != pm.class() {
				mixed = true
			}
		}
		if mixed {
			m = pol.defaultMode()
		}
		cands = append(cands, cand{w, m, mixed})
	}
	sort.SliceStable(cands, func(i, j int) bool {
		a, b := cands[i], cands[j]
		if ca, cb := a.mode.class(), b.mode.class(); ca != cb {
			return ca < cb
		}
		switch a.mode.class() {
		case 0:
			if a.w.PipelineID != b.w.PipelineID {
				return a.w.PipelineID < b.w.PipelineID
			}
		case 1:
			if a.w.PipelineID != b.w.PipelineID {
				return a.w.PipelineID > b.w.PipelineID
			}
		}
		if a.w.Seq != b.w.Seq {
			return a.w.Seq < b.w.Seq
		}
		return a.w.Key() < b.w.Key()
	})
	anyReserved := map[string]int{} // pool → any-demands reserved by earlier waiters
	waitedBy := map[string]int{}    // pool → earlier waiters wanting it
	for _, c := range cands {
		w := c.w
		d.Order = append(d.Order, w.Key())
		claims, ok := tryGrant(s, w.Demands, free, anyReserved)
		if ok {
			for _, cl := range claims {
				delete(free[cl.Pool], cl.Lock)
			}
			d.Grants[w.Key()] = claims
			continue
		}
		st := WaitStatus{Mode: c.mode, Mixed: c.mixed}
		for _, dm := range w.Demands {
			b := Blocked{Pool: dm.Pool, Lock: dm.Lock, Ahead: waitedBy[dm.Pool]}
			p := s.Pools[dm.Pool]
			if p == nil || (dm.Lock != "" && p.Locks[dm.Lock] == nil) {
				b.Missing = true
			} else {
				b.Size, b.Free = len(p.Locks), len(free[dm.Pool])-anyReserved[dm.Pool]
				for _, ln := range sortedKeys(p.Locks) {
					if dm.Lock != "" && ln != dm.Lock {
						continue
					}
					if h := p.Locks[ln].Holder; h != nil {
						if _, broken := d.Broken[Claim{dm.Pool, ln}]; !broken {
							b.Holders = append(b.Holders, *h)
						}
					}
				}
			}
			if !b.Missing && dm.Lock == "" && b.Free > 0 && b.Ahead == 0 {
				continue // this one is not what blocks it
			}
			if !b.Missing && dm.Lock != "" && free[dm.Pool][dm.Lock] && b.Ahead == 0 && len(free[dm.Pool])-1 >= anyReserved[dm.Pool] {
				continue
			}
			st.Blocked = append(st.Blocked, b)
		}
		d.Status[w.Key()] = st
		for _, dm := range w.Demands {
			waitedBy[dm.Pool]++
		}
		if c.mode.class() == 2 {
			continue // unordered: no place kept
		}
		for _, dm := range w.Demands {
			if dm.Lock != "" {
				delete(free[dm.Pool], dm.Lock)
			} else {
				anyReserved[dm.Pool]++
			}
		}
	}
	return d
}

// tryGrant picks a lock for each demand if all can be had.
func tryGrant(s *State, demands []Demand, free map[string]map[string]bool, anyReserved map[string]int) ([]Claim, bool) {
	claims := make([]Claim, len(demands))
	taken := map[Claim]bool{}
	takenIn := map[string]int{}
	// named locks first, so that "aws/env-1,aws" takes env-1 and another
	for i, dm := range demands {
		if dm.Lock == "" {
			continue
		}
		if s.Pools[dm.Pool] == nil || !free[dm.Pool][dm.Lock] {
			return nil, false
		}
		c := Claim(dm)
		taken[c] = true
		takenIn[dm.Pool]++
		claims[i] = c
	}
	for i, dm := range demands {
		if dm.Lock != "" {
			continue
		}
		var pick string
		for _, ln := range sortedKeys(free[dm.Pool]) {
			if !taken[Claim{dm.Pool, ln}] {
				pick = ln
				break
			}
		}
		if pick == "" {
			return nil, false
		}
		c := Claim{dm.Pool, pick}
		taken[c] = true
		takenIn[dm.Pool]++
		claims[i] = c
	}
	for pool, n := range takenIn {
		if len(free[pool])-n < anyReserved[pool] {
			return nil, false // would take what earlier waiters are owed
		}
	}
	return claims, true
}

func shares(a, b []Demand) bool {
	for _, x := range a {
		for _, y := range b {
			if x.Pool == y.Pool && (x.Lock == "" || y.Lock == "" || x.Lock == y.Lock) {
				return true
			}
		}
	}
	return false
}

// names tells whether demands ask for that very lock.
func names(ds []Demand, c Claim) bool {
	for _, d := range ds {
		if d.Pool == c.Pool && d.Lock == c.Lock {
			return true
		}
	}
	return false
}

func anySupersede(pol *Policy, ds []Demand) bool {
	for _, d := range ds {
		if pp, ok := pol.pool(d.Pool); ok && pp.Supersede {
			return true
		}
	}
	return false
}

// Line is the job log line for a status: `waiting for lock production
// (held by job 4711, pipeline 230 on main, since 3m12s; 2 jobs ahead;
// oldest_first)`. key is the same without times, to tell changes.
func (st WaitStatus) Line(now time.Time) (line, key string) {
	var parts, keys []string
	for _, b := range st.Blocked {
		p, k := b.describe(now, st.Mode)
		parts = append(parts, p)
		keys = append(keys, k)
	}
	if len(parts) == 0 {
		parts = []string{"its locks (being granted)"}
	}
	line = "waiting for " + strings.Join(parts, " and ")
	if st.Mixed {
		line += fmt.Sprintf(" — its locks or the jobs waiting for them ask for different process modes: default_process_mode %s applies", st.Mode)
	}
	return line, strings.Join(keys, "|") + fmt.Sprint(st.Mixed)
}

func (b Blocked) describe(now time.Time, mode Mode) (string, string) {
	name := DisplayName(b.Pool)
	if kind, _, n, ok := splitMutex(b.Pool); ok {
		name = "lock " + n
		if kind == groupPrefix {
			name = "lock group:" + n
		}
	} else if b.Lock != "" {
		name = "lock " + b.Pool + "/" + b.Lock
	}
	var info, key []string
	switch {
	case b.Missing:
		info = append(info, "not in the pool yet")
	case len(b.Holders) == 1 && (b.Lock != "" || b.Size == 1):
		h := b.Holders[0]
		info = append(info, h.describe(now))
		key = append(key, h.Key())
	case b.Lock == "":
		info = append(info, fmt.Sprintf("%d of %d locks claimed", len(b.Holders), b.Size))
		key = append(key, fmt.Sprint(len(b.Holders)))
	case len(b.Holders) == 0:
		info = append(info, "free, promised to a job ahead")
	}
	ahead := fmt.Sprintf("%d jobs ahead", b.Ahead)
	if b.Ahead == 1 {
		ahead = "1 job ahead"
	}
	info = append(info, ahead, string(mode))
	key = append(key, name, fmt.Sprint(b.Ahead), string(mode))
	return fmt.Sprintf("%s (%s)", name, strings.Join(info, "; ")), strings.Join(key, ",")
}

func (h Holder) describe(now time.Time) string {
	if h.JobID == 0 {
		return "held outside paas-runner"
	}
	s := fmt.Sprintf("held by job %d", h.JobID)
	if h.PipelineID != 0 {
		s += fmt.Sprintf(", pipeline %d", h.PipelineID)
	}
	if h.Ref != "" {
		s += " on " + h.Ref
	}
	if !h.Since.IsZero() {
		s += ", since " + now.Sub(h.Since).Truncate(time.Second).String()
	}
	return s
}

// Package guard holds acquired jobs between "acquired" and "provisioning"
// until their deployment locks and environment pools are free, so that a
// waiting deployment costs no PaaS money.
//
// A job declares what it needs in CI variables (PAAS_LOCK, PAAS_POOL, …,
// see ParseRequest). The Manager keeps holds and waiters in a Backend (this
// daemon's journal file, or a git repository in Concourse pool-resource
// layout shared with other daemons), decides who gets what with Decide (one
// deterministic pass every daemon computes alike), and waits with the
// shared waiting machinery of wait.go.
package guard

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/job"
)

// Backend keeps the state durable. It is declared here, by its consumer.
type Backend interface {
	// Update applies fn to the latest state and makes the change durable
	// before it returns the state as written (or as read, when fn reports
	// no change). fn may run more than once (someone else changed the
	// state meanwhile) and must decide from the state it is given.
	Update(ctx context.Context, fn func(*State) bool) (*State, error)
	// Branch labels pool metrics ("local" for the local backend).
	Branch() string
}

// Options configure a Manager.
type Options struct {
	// Daemon is this daemon's system_id: it owns the waiters it records.
	Daemon      string
	Policy      *Policy
	LeaseMargin time.Duration // default 10 min
	// Refresh is how often the state is re-read and leases checked
	// (default 5 s; the git backend's retry_delay).
	Refresh time.Duration
	// AsyncRelease: releases go out in the background (git: a push may
	// take long; the hold is safe meanwhile).
	AsyncRelease bool
	Logger       *zap.Logger
	Core         *Core
	// Now is the clock of leases (tests); default time.Now.
	Now func() time.Time
}

// Manager is the lock and pool guard.
type Manager struct {
	opt  Options
	be   Backend
	log  *zap.Logger
	core *Core

	// upd makes store updates and their publication one step: a state
	// read later is never published before one read earlier (a waiter
	// would miss its grant).
	upd      sync.Mutex
	qmu      sync.Mutex       // guards queue
	queue    []*pendingUpdate // changes waiting for the next commit
	mu       sync.Mutex
	policy   *Policy
	st       *State
	dec      *Decision
	changed  chan struct{}
	unsynced error // last backend error, shown to waiters
	synced   bool  // the store answered once: pools are known
	readAt   time.Time
	// pendingForget: ForgetUnknown to do again once the store answers
	pendingForget func(runnerID string, jobID int64) bool
	// freshening: a read for the metrics or the report is under way
	freshening atomic.Bool
	// asked are the jobs that declared guards (Admit registered, or tried
	// to register, them) and have not been released since: only they may
	// have something in the store the snapshot does not show.
	asked map[string]bool

	bg sync.WaitGroup

	// grantHook is told of this daemon's jobs granted their locks, before
	// the update that granted them returns (SetGrantHook).
	grantHook atomic.Pointer[func(runnerID string, jobID int64)]
}

// SetGrantHook sets the function told, synchronously, of each job of this
// daemon granted its locks while it waits: the dispatcher then keeps the
// next free slot for it (see dispatcher.Dispatcher.Granted).
func (m *Manager) SetGrantHook(fn func(runnerID string, jobID int64)) { m.grantHook.Store(&fn) }

// NewManager wraps a backend. Call Run to keep leases and the state fresh.
func NewManager(ctx context.Context, be Backend, opt Options) (*Manager, error) {
	if opt.LeaseMargin <= 0 {
		opt.LeaseMargin = 10 * time.Minute
	}
	if opt.Refresh <= 0 {
		opt.Refresh = 5 * time.Second
	}
	if opt.Logger == nil {
		opt.Logger = zap.NewNop()
	}
	if opt.Core == nil {
		opt.Core = NewCore()
	}
	if opt.Policy == nil {
		opt.Policy = &Policy{}
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	m := &Manager{opt: opt, be: be, log: opt.Logger, core: opt.Core, policy: opt.Policy, changed: make(chan struct{}), st: NewState(),
		asked: map[string]bool{}}
	m.dec = Decide(m.st, m.policy, opt.Now())
	m.core.AddSource(m.counts)
	if _, err := m.update(ctx, func(*State) bool { return false }); err != nil {
		// a shared store may be unreachable now: jobs without guards go
		// on; guarded jobs wait, saying so, until it answers
		m.log.Warn("guards: "+storeProblem(err)+"; guarded jobs wait until it answers", zap.Error(err))
	}
	return m, nil
}

// SetPolicy replaces pools' rules and process modes (configuration reload).
func (m *Manager) SetPolicy(p *Policy) {
	m.mu.Lock()
	m.policy = p
	m.mu.Unlock()
	m.Nudge()
}

func (m *Manager) pol() *Policy {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.policy
}

// Snapshot is the latest state seen and its decision.
func (m *Manager) Snapshot() (*State, *Decision) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st, m.dec
}

// Changed returns a channel closed at the next state change.
func (m *Manager) Changed() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.changed
}

// update runs fn then settles (leases, supersede, grants to this daemon's
// waiters) in one durable change, and publishes the result.
//
// Updates asked for while another is being made durable are made together,
// in one change (group commit): with the git backend a burst of acquired
// jobs registering as waiters is one pushed commit, not one each. The
// change is cancelled only when every caller's ctx has ended (one caller
// giving up does not fail the others); each caller returns once it is
// made, or failed.
func (m *Manager) update(ctx context.Context, fn func(*State) bool) (*State, error) {
	p := &pendingUpdate{ctx: ctx, fn: fn, done: make(chan struct{})}
	m.qmu.Lock()
	m.queue = append(m.queue, p)
	m.qmu.Unlock()
	m.upd.Lock()
	m.qmu.Lock()
	batch := m.queue
	m.queue = nil
	m.qmu.Unlock()
	if len(batch) > 0 {
		m.commit(batch)
	}
	m.upd.Unlock()
	<-p.done
	return p.st, p.err
}

// pendingUpdate is one caller's change waiting to be made durable.
type pendingUpdate struct {
	ctx  context.Context
	fn   func(*State) bool
	done chan struct{}
	st   *State
	err  error
}

// commit makes a batch of changes durable in one backend update, publishes
// the state and runs the events (after every caller of the batch is told).
func (m *Manager) commit(batch []*pendingUpdate) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(batch[0].ctx))
	defer cancel()
	var live atomic.Int32
	live.Store(int32(len(batch)))
	for _, p := range batch {
		defer context.AfterFunc(p.ctx, func() {
			if live.Add(-1) == 0 {
				cancel()
			}
		})()
	}
	pol := m.pol()
	var events []func()
	var granted []JobRef
	st, err := m.be.Update(ctx, func(s *State) bool {
		events, granted = events[:0], granted[:0]
		changed := false
		for _, p := range batch {
			changed = p.fn(s) || changed
		}
		ev, settled := m.settle(s, pol, m.opt.Now(), &granted)
		events = append(events, ev...)
		return changed || settled
	})
	m.mu.Lock()
	if err != nil {
		m.unsynced = err
	} else {
		m.unsynced, m.synced, m.readAt = nil, true, time.Now()
		if known := m.pendingForget; known != nil {
			m.pendingForget = nil
			m.bg.Add(1)
			go func() {
				defer m.bg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				if err := m.forgetUnknown(ctx, known); err != nil {
					m.log.Warn("guards: could not release the locks of jobs no longer in the state file; their leases free them", zap.Error(err))
				} else {
					m.log.Info("guards: the lock store answers: the locks of jobs no longer in the state file are released")
				}
			}()
		}
		m.st = st
		m.dec = Decide(st, pol, m.opt.Now())
		close(m.changed)
		m.changed = make(chan struct{})
	}
	m.mu.Unlock()
	if hook := m.grantHook.Load(); hook != nil && err == nil {
		for _, j := range granted {
			(*hook)(j.Runner, j.JobID)
		}
	}
	for _, p := range batch {
		p.st, p.err = st, err
		close(p.done)
	}
	if err == nil {
		for _, e := range events {
			e()
		}
	}
}

// settle applies a decision pass to s: expired leases are broken, long
// dead waiters dropped, superseded waiters marked, and this daemon's
// granted waiters made holders. The returned events log what happened
// once it is durable.
func (m *Manager) settle(s *State, pol *Policy, now time.Time, granted *[]JobRef) ([]func(), bool) {
	changed := false
	if pol.Declared {
		// the configuration's pools: new locks added, removed ones
		// dropped once free (before any is granted)
		changed = SyncPools(s, pol.declaredLocks())
	}
	d := Decide(s, pol, now)
	var events []func()
	for c, h := range d.Broken {
		if l := s.Pools[c.Pool].Locks[c.Lock]; l.Holder != nil && l.Holder.Key() == h.Key() {
			l.Holder = nil
			changed = true
			events = append(events, func() {
				m.log.Warn("lease expired: lock freed", zap.String("lock", DisplayName(c.Pool)+"/"+c.Lock),
					zap.Int64("job_id", h.JobID), zap.String("holder_daemon", h.Daemon), zap.Time("expired", h.Expires))
			})
		}
	}
	for _, k := range d.Expired {
		delete(s.Waiters, k)
		changed = true
	}
	for k, by := range d.Superseded {
		if w := s.Waiters[k]; w != nil && w.SupersededBy != by {
			w.SupersededBy = by
			changed = true
		}
	}
	for k, claims := range d.Grants {
		w := s.Waiters[k]
		if w == nil || w.Daemon != m.opt.Daemon {
			continue // another daemon's job: it claims for itself
		}
		lease := w.JobTimeout
		if lease <= 0 {
			lease = time.Hour
		}
		for _, c := range claims {
			s.Pools[c.Pool].Locks[c.Lock].Holder = &Holder{JobRef: w.JobRef, Since: now, Expires: now.Add(lease + m.opt.LeaseMargin), Supersede: w.Supersede}
		}
		delete(s.Waiters, k)
		changed = true
		*granted = append(*granted, w.JobRef)
	}
	changed = pruneMutexes(s) || changed
	return events, changed
}

// pruneMutexes drops free project/group locks nobody waits for.
func pruneMutexes(s *State) bool {
	wanted := map[string]bool{}
	for _, w := range s.Waiters {
		for _, d := range w.Demands {
			wanted[d.Pool] = true
		}
	}
	changed := false
	for name, p := range s.Pools {
		if !IsMutex(name) || wanted[name] {
			continue
		}
		if l := p.Locks[MutexLock]; l != nil && l.Holder == nil && len(p.Locks) == 1 {
			delete(s.Pools, name)
			changed = true
		}
	}
	return changed
}

// Nudge re-reads and settles the state in the background.
func (m *Manager) Nudge() {
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, _ = m.update(ctx, func(*State) bool { return false })
	}()
}

// freshen re-reads a shared store in the background when what this
// daemon last read of it is older than Refresh: it reads the store only
// while it has waiting jobs, and the pool metrics and the report must
// not show, for hours, what the pools were when it last had one.
func (m *Manager) freshen() {
	if _, local := m.be.(*Local); local { // the snapshot is the state
		return
	}
	m.mu.Lock()
	old := time.Since(m.readAt) > m.opt.Refresh
	m.mu.Unlock()
	if !old || !m.freshening.CompareAndSwap(false, true) {
		return
	}
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		defer m.freshening.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, _ = m.update(ctx, func(*State) bool { return false })
	}()
}

// Run re-reads the state and checks leases every Refresh until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	t := time.NewTicker(m.opt.Refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			m.bg.Wait()
			return
		case <-t.C:
			if !m.hasWaiters() {
				continue // nothing to claim for: no request to a shared store
			}
			if _, err := m.update(ctx, func(*State) bool { return false }); err != nil && ctx.Err() == nil {
				m.log.Warn("guards: reading the lock state failed", zap.Error(err))
				m.mu.Lock()
				close(m.changed) // waiters try again (one try per Refresh)
				m.changed = make(chan struct{})
				m.mu.Unlock()
			}
		}
	}
}

func (m *Manager) hasWaiters() bool {
	st, _ := m.Snapshot()
	for _, w := range st.Waiters {
		if w.Daemon == m.opt.Daemon {
			return true
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.unsynced != nil // retry: waiting jobs wait for the store to answer
}

// Wait returns once background work (releases) is done.
func (m *Manager) Wait() { m.bg.Wait() }

// Admit holds the job until it has every lock and pool lock it declares,
// and returns the variables to hand it. It implements dispatcher.Guard.
func (m *Manager) Admit(ctx context.Context, runnerID string, a *job.Acquired, jobLog func(string), blocking func()) ([]job.Variable, error) {
	ref := JobRef{Daemon: m.opt.Daemon, Runner: runnerID, JobID: a.ID}
	st, _ := m.Snapshot()
	pol := m.pol()
	m.mu.Lock()
	synced := m.synced
	m.mu.Unlock()
	// validate reads the declaration against a policy: the pools are the
	// policy's (local backend) or the store's (git).
	missed := false // a pool the store's state did not have
	validate := func(pol *Policy, st *State, synced bool) (*Request, error) {
		req, err := ParseRequest(a.Payload, pol, ref, func(pool string) bool {
			if pol.Declared {
				return pol.declaresPool(pool, st)
			}
			_, ok := st.Pools[pool]
			missed = missed || !ok
			return ok || !synced // pools unknown until the store answers
		})
		if err == nil && req != nil {
			err = pol.checkDeclared(req.Demands, st)
		}
		return req, err
	}
	req, err := validate(pol, st, synced)
	if err != nil && missed && !pol.Declared {
		// a shared store is read only while this daemon has waiting
		// jobs: a pool added since (pool add, Concourse) is looked up
		// before the job is failed for naming it
		if fresh, uerr := m.update(ctx, func(*State) bool { return false }); uerr == nil {
			st = fresh
			req, err = validate(pol, st, true)
		}
	}
	if err != nil {
		return nil, &WaitError{Reason: "declaration", Msg: err.Error()}
	}
	if req == nil {
		return nil, nil
	}
	key := req.Job.Key()
	m.mu.Lock()
	m.asked[key] = true
	m.mu.Unlock()
	since := time.Now()
	if w := st.Waiters[key]; w != nil {
		since = w.Since // resumed after a restart: same place, same deadline
	}
	registered := false
	register := func(ctx context.Context) (*State, error) {
		return m.update(ctx, func(s *State) bool {
			if _, ok := matchClaims(req.Demands, s.HeldBy(key)); ok {
				return false
			}
			if w := s.Waiters[key]; w != nil {
				since = w.Since
				return false
			}
			for _, d := range req.Demands {
				if IsMutex(d.Pool) && (s.Pools[d.Pool] == nil || s.Pools[d.Pool].Locks[MutexLock] == nil) {
					s.Pools[d.Pool] = &Pool{Locks: map[string]*Lock{MutexLock: {}}}
				}
			}
			s.Seq++
			s.Waiters[key] = &Waiter{JobRef: req.Job, Demands: req.Demands, Mode: req.Mode, Supersede: req.Supersede,
				Seq: s.Seq, Since: since, Deadline: since.Add(req.Timeout), JobTimeout: req.JobTimeout}
			return true
		})
	}
	var claims []Claim
	var labels []string
	for _, d := range req.Demands {
		if l := GuardLabel(d.Pool); !slices.Contains(labels, l) {
			labels = append(labels, l)
		}
	}
	err = m.core.Wait(ctx, Wait{
		Guard: "locks", Labels: labels, Since: since, Deadline: since.Add(req.Timeout), NoWait: req.NoWait,
		Log: jobLog, Changed: m.Changed, Blocking: blocking,
		Check: func(ctx context.Context) (bool, string, string, error) {
			var st *State
			var dec *Decision
			if !registered {
				if _, err := register(ctx); err != nil {
					if ctx.Err() != nil {
						return false, "", "", ctx.Err()
					}
					return false, "its locks: " + storeProblem(err) + " (" + shortErr(err) + "); retrying", "unreachable", nil
				}
				registered = true
			}
			st, dec = m.Snapshot()
			if c, ok := matchClaims(req.Demands, st.HeldBy(key)); ok {
				claims = c
				return true, "", "", nil
			}
			if !synced {
				// declared while the store had never answered (its pools
				// unknown): checked again once it has, so that a pool
				// that does not exist fails the job then, not at its
				// lock timeout
				m.mu.Lock()
				synced = m.synced
				m.mu.Unlock()
				if _, err := validate(pol, st, true); synced && err != nil {
					return false, "", "", &WaitError{Reason: "declaration", Msg: err.Error()}
				}
			}
			if cur := m.pol(); cur != pol {
				// reloaded: a pool or lock removed, or a namespace no
				// longer allowed, fails the job (a held lock stays held)
				pol = cur
				if _, err := validate(cur, st, true); err != nil {
					return false, "", "", &WaitError{Reason: "declaration", Msg: "the runner's configuration changed while the job waited: " + err.Error()}
				}
			}
			w := st.Waiters[key]
			if w == nil {
				registered = false // released by an operator or expired: ask again
				return false, "its locks (asking again)", "again", nil
			}
			if w.SupersededBy != 0 {
				return false, "", "", &WaitError{Reason: "superseded", Msg: fmt.Sprintf("superseded by pipeline %d", w.SupersededBy)}
			}
			line, k := dec.Status[key].Line(time.Now())
			m.mu.Lock()
			bad := m.unsynced
			m.mu.Unlock()
			if bad != nil {
				line += " (" + storeProblem(bad) + ": " + shortErr(bad) + "; retrying)"
				k += "unreachable"
			}
			return false, line, k, nil
		},
	})
	if err != nil {
		var we *WaitError
		if errors.As(err, &we) {
			m.release(key) // timed out, no-wait, superseded: leave the queue now
		}
		return nil, err
	}
	st, _ = m.Snapshot()
	md := func(c Claim) string {
		if p := st.Pools[c.Pool]; p != nil && p.Locks[c.Lock] != nil {
			return p.Locks[c.Lock].Metadata
		}
		return ""
	}
	m.log.Info("guards passed", zap.Int64("job_id", a.ID), zap.String("runner", runnerID), zap.String("locks", describeClaims(claims)),
		zap.Duration("waited", time.Since(since)))
	return req.Variables(claims, md), nil
}

// storeProblem says what is wrong with the lock store: a repository that
// answers but is not a lock repository is not "unreachable".
func storeProblem(err error) string {
	if errors.Is(err, ErrNotPoolLayout) {
		return "the lock repository is not in pool-resource layout (fix it, or guards.git.url)"
	}
	return "the lock store is unreachable"
}

func shortErr(err error) string {
	s := err.Error()
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

func describeClaims(cs []Claim) string {
	var out []string
	for _, c := range cs {
		out = append(out, GuardLabel(c.Pool)+"/"+c.Lock)
	}
	return strings.Join(out, ",")
}

// matchClaims maps held locks onto demands; ok when every demand is held.
func matchClaims(demands []Demand, held []Claim) ([]Claim, bool) {
	if len(held) < len(demands) || len(demands) == 0 {
		return nil, false
	}
	used := make([]bool, len(held))
	out := make([]Claim, len(demands))
	for pass := 0; pass < 2; pass++ { // named locks first
		for i, d := range demands {
			if (pass == 0) != (d.Lock != "") {
				continue
			}
			found := false
			for j, h := range held {
				if !used[j] && h.Pool == d.Pool && (d.Lock == "" || d.Lock == h.Lock) {
					used[j], out[i], found = true, h, true
					break
				}
			}
			if !found {
				return nil, false
			}
		}
	}
	return out, true
}

// Release frees what a job holds and drops its place in the queues; it
// implements dispatcher.Guard (called once the job's host is gone).
func (m *Manager) Release(runnerID string, jobID int64) {
	m.release(JobRef{Daemon: m.opt.Daemon, Runner: runnerID, JobID: jobID}.Key())
}

func (m *Manager) release(key string) {
	st, _ := m.Snapshot()
	m.mu.Lock()
	asked, synced := m.asked[key], m.synced
	delete(m.asked, key)
	m.mu.Unlock()
	// Nothing held, not waiting (most jobs): no write. With a shared store
	// (AsyncRelease) no round trip either when the job never declared
	// guards and the store answered once (a job resumed after a restart
	// has its holds in the snapshot): only this daemon adds a job of its
	// own to the store. A job that asked may be there unseen (a push made
	// whose answer was lost): it is released there.
	if _, waiting := st.Waiters[key]; !waiting && len(st.HeldBy(key)) == 0 && (!m.opt.AsyncRelease || (synced && !asked)) {
		return
	}
	do := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := m.update(ctx, func(s *State) bool { return s.Release(key) })
		return err
	}
	if !m.opt.AsyncRelease {
		if err := do(); err != nil {
			m.log.Error("guards: releasing a job's locks failed; its lease frees them", zap.String("job", key), zap.Error(err))
		}
		return
	}
	if ownWaiterWants(st, key, m.opt.Daemon) && do() == nil {
		// a release that may grant a job of this daemon is made before
		// the released job's slot is given back: the granted job gets it
		return
	}
	// Retried until it is made, or until the leases it would end have run
	// out (anyone may then break them): a store down for a minute must
	// not keep a lock claimed for the rest of an hour-long lease.
	until := m.opt.Now().Add(waiterGrace) // a waiter record only
	for _, c := range st.HeldBy(key) {
		if h := st.Pools[c.Pool].Locks[c.Lock].Holder; h.Expires.After(until) {
			until = h.Expires
		}
	}
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		delay := m.opt.Refresh
		for attempt := 0; ; attempt++ {
			err := do()
			if err == nil {
				if attempt > 0 {
					m.log.Info("guards: a job's locks released", zap.String("job", key), zap.Int("attempts", attempt+1))
				}
				return
			}
			if attempt == 0 {
				m.log.Warn("guards: releasing a job's locks failed; retrying", zap.String("job", key), zap.Error(err))
			}
			if m.opt.Now().After(until) {
				m.log.Error("guards: could not release a job's locks before their lease ran out; the lease frees them", zap.String("job", key), zap.Error(err))
				return
			}
			time.Sleep(delay)
			delay = min(2*delay, 30*m.opt.Refresh, time.Minute)
		}
	}()
}

// ownWaiterWants tells whether a waiter of daemon wants a pool key holds.
func ownWaiterWants(st *State, key, daemon string) bool {
	held := map[string]bool{}
	for _, c := range st.HeldBy(key) {
		held[c.Pool] = true
	}
	for _, w := range st.Waiters {
		if w.Daemon != daemon || w.Key() == key {
			continue
		}
		for _, d := range w.Demands {
			if held[d.Pool] {
				return true
			}
		}
	}
	return false
}

// ForgetUnknown releases holds and waiters of this daemon whose job is not
// known any more (not in the state file after a restart). When the store
// does not answer, it is done once it does (in the background): known
// must keep answering for the daemon's life.
func (m *Manager) ForgetUnknown(ctx context.Context, known func(runnerID string, jobID int64) bool) error {
	err := m.forgetUnknown(ctx, known)
	if err != nil {
		m.mu.Lock()
		m.pendingForget = known
		m.mu.Unlock()
	}
	return err
}

func (m *Manager) forgetUnknown(ctx context.Context, known func(runnerID string, jobID int64) bool) error {
	_, err := m.update(ctx, func(s *State) bool {
		changed := false
		keys := map[string]JobRef{}
		for _, w := range s.Waiters {
			keys[w.Key()] = w.JobRef
		}
		for _, p := range s.Pools {
			for _, l := range p.Locks {
				if l.Holder != nil && l.Holder.JobID != 0 {
					keys[l.Holder.Key()] = l.Holder.JobRef
				}
			}
		}
		for k, ref := range keys {
			if ref.Daemon == m.opt.Daemon && !known(ref.Runner, ref.JobID) {
				changed = s.Release(k) || changed
			}
		}
		return changed
	})
	return err
}

// HolderInfo and WaiterInfo describe the state for operators.
type HolderInfo struct {
	Guard   string    `json:"guard"`
	Lock    string    `json:"lock"`
	Job     JobRef    `json:"job"`
	Since   time.Time `json:"since"`
	Expires time.Time `json:"lease_expires"`
}

// Holders lists current holders, sorted.
func (m *Manager) Holders() []HolderInfo {
	st, _ := m.Snapshot()
	return holders(st)
}

func holders(st *State) []HolderInfo {
	var out []HolderInfo
	for _, pn := range sortedKeys(st.Pools) {
		for _, ln := range sortedKeys(st.Pools[pn].Locks) {
			if h := st.Pools[pn].Locks[ln].Holder; h != nil {
				out = append(out, HolderInfo{Guard: GuardLabel(pn), Lock: ln, Job: h.JobRef, Since: h.Since, Expires: h.Expires})
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Guard < out[j].Guard })
	return out
}

// Core is the waiting machinery this manager uses (shared with other kinds
// of guards).
func (m *Manager) Core() *Core { return m.core }

package guard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/job"
)

// orderChecker wraps a backend and checks, after each change, that no lock
// was granted to a job while a better-placed job (by the mode's order) was
// still waiting for that very lock.
type orderChecker struct {
	Backend
	t    *testing.T
	mode Mode // "" = mixed modes: no order to check
	bad  atomic.Int32
}

func better(mode Mode, a, b JobRef, as, bs uint64) bool {
	switch mode.class() {
	case 0:
		return a.PipelineID < b.PipelineID
	case 1:
		return a.PipelineID > b.PipelineID
	}
	return false
}

func (c *orderChecker) Update(ctx context.Context, fn func(*State) bool) (*State, error) {
	var before *State
	return c.Backend.Update(ctx, func(s *State) bool {
		before = s.Clone()
		changed := fn(s)
		if c.mode == "" || c.mode == Unordered {
			return changed
		}
		for pn, p := range s.Pools {
			for ln, l := range p.Locks {
				h := l.Holder
				if h == nil {
					continue
				}
				if bp := before.Pools[pn]; bp != nil && bp.Locks[ln] != nil && bp.Locks[ln].Holder != nil && bp.Locks[ln].Holder.Key() == h.Key() {
					continue // not new
				}
				for _, w := range s.Waiters {
					if w.SupersededBy != 0 {
						continue
					}
					for _, d := range w.Demands {
						if d.Pool == pn && d.Lock == ln && better(c.mode, w.JobRef, h.JobRef, 0, 0) {
							if c.bad.Add(1) < 5 {
								c.t.Errorf("%s: %s/%s granted to job %d (pipeline %d) while job %d (pipeline %d) waits for it",
									c.mode, pn, ln, h.JobID, h.PipelineID, w.JobID, w.PipelineID)
							}
						}
					}
				}
			}
		}
		return changed
	})
}

type daemonSim struct {
	t      *testing.T
	path   string
	pools  map[string]map[string]string
	policy *Policy
	mode   Mode
	clock  atomic.Int64

	mu     sync.RWMutex
	m      *Manager
	ctx    context.Context
	cancel context.CancelFunc
	admits sync.WaitGroup
}

func (d *daemonSim) now() time.Time { return time.Now().Add(time.Duration(d.clock.Load())) }

func (d *daemonSim) start() {
	be, err := OpenLocal(d.path, d.pools)
	if err != nil {
		d.t.Fatal(err)
	}
	m, err := NewManager(context.Background(), &orderChecker{Backend: be, t: d.t, mode: d.mode}, Options{Daemon: "r_prop", Policy: d.policy,
		LeaseMargin: time.Millisecond, Logger: zap.NewNop(), Now: d.now})
	if err != nil {
		d.t.Fatal(err)
	}
	d.m = m
	d.ctx, d.cancel = context.WithCancel(context.Background())
}

// restart stops every wait (as a daemon stopping or killed), then starts a
// new manager on the same file, as the next daemon start would.
func (d *daemonSim) restart() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cancel()
	d.admits.Wait()
	d.m.Wait()
	d.start()
}

func (d *daemonSim) release(id int64) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	d.m.Release("runner1", id)
}

func TestPropertyLocks(t *testing.T) {
	seeds := 40
	if testing.Short() {
		seeds = 8
	}
	for seed := 1; seed <= seeds; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { runProperty(t, int64(seed)) })
	}
}

func runProperty(t *testing.T, seed int64) {
	rng := rand.New(rand.NewSource(seed))
	modes := []Mode{Unordered, OldestFirst, NewestFirst, NewestReadyFirst, ""}
	mode := modes[seed%int64(len(modes))]
	pools := map[string]map[string]string{"p": {"a": "md-a", "b": "md-b"}}
	polMode := mode
	if polMode == "" {
		polMode = OldestFirst
	}
	d := &daemonSim{t: t, path: filepath.Join(t.TempDir(), "guards.json"), pools: pools, mode: mode,
		policy: &Policy{DefaultMode: polMode, Pools: map[string]PoolPolicy{"p": {Mode: polMode}}}}
	d.start()
	names := []string{"l0", "l1", "l2", "l3"}
	const n = 25
	pipelines := rng.Perm(n)
	var inUse sync.Map     // "lock" → holding
	var epoch atomic.Int32 // fake clock advances: dying jobs' leases end with them
	var wg sync.WaitGroup
	var ended, grants atomic.Int32
	for i := 0; i < n; i++ {
		j := &tjob{id: int64(i + 1), pipeline: int64(pipelines[i] + 100), timeout: 3600, vars: map[string]string{}}
		var locks, ps []string
		for _, k := range rng.Perm(len(names))[:1+rng.Intn(3)] {
			locks = append(locks, names[k])
		}
		switch rng.Intn(4) {
		case 0:
			ps = append(ps, "p")
		case 1:
			ps = append(ps, "p/a")
		case 2:
			ps = append(ps, "p/b", "p")
		}
		j.vars[VarLock] = strings.Join(locks, ",")
		if len(ps) > 0 {
			j.vars[VarPool] = strings.Join(ps, ",")
		}
		if mode == "" {
			j.vars[VarMode] = string(modes[rng.Intn(4)])
		} else if rng.Intn(2) == 0 {
			j.vars[VarMode] = string(mode)
		}
		supersede := mode != "" && rng.Intn(10) == 0
		if supersede {
			j.vars[VarSupersede] = "true"
		}
		dies := rng.Intn(10) == 0 // holds, and its daemon never releases: the lease does
		if dies {
			j.timeout = 1
		}
		cancelAfter := time.Duration(-1)
		if rng.Intn(7) == 0 {
			cancelAfter = time.Duration(rng.Intn(20)) * time.Millisecond
		}
		hold := time.Duration(rng.Intn(2000)) * time.Microsecond
		a := j.acquired(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer ended.Add(1)
			jctx, jcancel := context.WithCancel(context.Background())
			defer jcancel()
			if cancelAfter >= 0 {
				time.AfterFunc(cancelAfter, jcancel)
			}
			for {
				d.mu.RLock()
				m, ictx := d.m, d.ctx
				d.admits.Add(1)
				d.mu.RUnlock()
				asked := epoch.Load()
				actx, stop := context.WithCancel(jctx)
				unhook := context.AfterFunc(ictx, stop)
				vars, err := m.Admit(actx, "runner1", a, func(string) {}, nil)
				unhook()
				stop()
				d.admits.Done()
				if err == nil {
					grants.Add(1)
					held := strings.Split(job.Variables(vars).Get("PAAS_LOCKS"), ",")
					me := &holding{id: j.id, dying: dies, asked: asked}
					for _, l := range held {
						if v, dup := inUse.Swap(l, me); dup {
							// a dying job's lease may have run out since it
							// asked (the clock moved): it is presumed dead
							if o := v.(*holding); !o.dying || epoch.Load() == o.asked {
								t.Errorf("lock %s held by jobs %d and %d at once", l, o.id, j.id)
							}
						}
					}
					time.Sleep(hold) // the job's work
					for _, l := range held {
						inUse.CompareAndDelete(l, me)
					}
					if dies {
						epoch.Add(1)
						d.clock.Add(int64(2 * time.Second)) // its lease runs out
						d.mu.RLock()
						d.m.Nudge()
						d.mu.RUnlock()
						return
					}
					d.release(j.id)
					return
				}
				if jctx.Err() != nil { // canceled in GitLab: the dispatcher releases
					d.release(j.id)
					return
				}
				if ictx.Err() != nil {
					continue // the daemon restarted: resume waiting
				}
				var we *WaitError
				if errors.As(err, &we) && we.Reason == "superseded" {
					d.release(j.id)
					return
				}
				t.Errorf("job %d: %v", j.id, err)
				d.release(j.id)
				return
			}
		}()
	}
	// restarts while jobs wait and hold
	stuck := time.Now().Add(90 * time.Second)
	for r := 0; r < 2; r++ {
		target := int32(rng.Intn(n/2) + 1)
		for grants.Load() < target && ended.Load() < n {
			if time.Now().After(stuck) {
				st, _ := d.m.Snapshot()
				t.Fatalf("seed %d (%s): no progress: %d grants, %d ended; state %s", seed, mode, grants.Load(), ended.Load(), dump(st))
			}
			time.Sleep(100 * time.Microsecond) // wait for progress before the next restart
		}
		d.restart()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	ticker := time.NewTicker(50 * time.Millisecond)
	defer ticker.Stop()
	deadline := time.After(90 * time.Second)
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-ticker.C:
			// leases of dead jobs are checked by Run in a daemon; here by hand
			d.mu.RLock()
			d.m.Nudge()
			d.mu.RUnlock()
		case <-deadline:
			st, _ := d.m.Snapshot()
			t.Fatalf("seed %d (%s): %d of %d jobs ended: deadlock or lost wake-up; state %s", seed, mode, ended.Load(), n, dump(st))
		}
	}
	// nothing left: every lock released (dead jobs by lease)
	d.clock.Add(int64(time.Hour))
	d.mu.RLock()
	d.m.Nudge()
	d.m.Wait()
	st, _ := d.m.Snapshot()
	d.mu.RUnlock()
	for pn, p := range st.Pools {
		for ln, l := range p.Locks {
			if l.Holder != nil {
				t.Errorf("%s/%s still held by job %d", pn, ln, l.Holder.JobID)
			}
		}
	}
	if len(st.Waiters) != 0 {
		t.Errorf("%d waiters left", len(st.Waiters))
	}
}

type holding struct {
	id    int64
	dying bool
	asked int32
}

func dump(st *State) string {
	b, _ := json.MarshalIndent(st, "", " ")
	return string(b)
}

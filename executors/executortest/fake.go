// Package executortest has the executor conformance suite and two test
// executors: Fake (in memory, with hooks, for dispatcher tests) and Dir
// (hosts are files, so that they outlive a killed daemon, for process tests).
package executortest

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"gitlab.com/paas-runner/paas-runner/executors"
)

// Host is a fake host.
type Host struct {
	Name           string
	JobID          int64
	Provisions     int // Provision calls that found no host and created it
	Launches       int // Launch calls that actually started the job
	Decommissioned bool
	// Stopped: the host stopped by itself (Stop), with ExitCode and Detail.
	Stopped     bool
	ExitCode    int
	Detail      string
	TraceOffset int64
	Payload     json.RawMessage
	Created     time.Time
}

// Fake is an in-memory executor. Hooks run inside the calls and may block
// or fail them.
type Fake struct {
	Prefix string

	// Hooks; nil means succeed at once.
	OnProvision    func(ctx context.Context, j executors.Job) error
	OnLaunch       func(ctx context.Context, j executors.Job) error
	OnDecommission func(ctx context.Context, name string) error
	// OnInspect, when set, runs inside Inspect and may fail it.
	OnInspect func(ctx context.Context, name string) error

	mu    sync.Mutex
	hosts map[string]*Host
	gone  map[string]*Host
	ends  chan executors.End
	// Concurrency accounting of Provision calls.
	inProvision, maxInProvision int
	changed                     chan struct{}
}

var (
	_ executors.Executor   = (*Fake)(nil)
	_ executors.EndWatcher = (*Fake)(nil)
	_ executors.Reaper     = (*Fake)(nil)
	_ executors.Inspector  = (*Fake)(nil)
)

// NewFake returns an empty fake executor.
func NewFake() *Fake {
	return &Fake{Prefix: "fake", hosts: map[string]*Host{}, gone: map[string]*Host{}, ends: make(chan executors.End, 1024), changed: make(chan struct{})}
}

type fakeHandle struct {
	Name string `json:"name"`
}

func (f *Fake) name(j executors.Job) string {
	return fmt.Sprintf("%s-%s-%d", f.Prefix, j.RunnerID, j.ID)
}

func decode(h executors.Handle) (string, error) {
	var fh fakeHandle
	if err := json.Unmarshal(h, &fh); err != nil || fh.Name == "" {
		return "", executors.BadHandle(h, "not a fake handle")
	}
	return fh.Name, nil
}

func (f *Fake) Plan(_ context.Context, j executors.Job) (executors.Handle, error) {
	return json.Marshal(fakeHandle{Name: f.name(j)})
}

func (f *Fake) Provision(ctx context.Context, h executors.Handle, j executors.Job) (executors.Handle, error) {
	name, err := decode(h)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.inProvision++
	f.maxInProvision = max(f.maxInProvision, f.inProvision)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inProvision--
		f.mu.Unlock()
	}()
	if f.OnProvision != nil {
		if err := f.OnProvision(ctx, j); err != nil {
			return nil, err
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.hosts[name]; !ok {
		f.hosts[name] = &Host{Name: name, JobID: j.ID, Provisions: 1, Created: time.Now()}
		f.notifyLocked()
	}
	return h, nil
}

func (f *Fake) Launch(ctx context.Context, h executors.Handle, j executors.Job) (executors.Handle, error) {
	name, err := decode(h)
	if err != nil {
		return nil, err
	}
	if f.OnLaunch != nil {
		if err := f.OnLaunch(ctx, j); err != nil {
			return nil, err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	host, ok := f.hosts[name]
	if !ok {
		return nil, executors.Permanent("launch", fmt.Errorf("host %s does not exist", name))
	}
	if host.Launches == 0 {
		host.Launches = 1
		host.TraceOffset = j.TraceOffset
		host.Payload = j.Payload
		f.notifyLocked()
	}
	return h, nil
}

func (f *Fake) Decommission(ctx context.Context, h executors.Handle) error {
	name, err := decode(h)
	if err != nil {
		return err
	}
	if f.OnDecommission != nil {
		if err := f.OnDecommission(ctx, name); err != nil {
			return err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if host, ok := f.hosts[name]; ok {
		host.Decommissioned = true
		f.gone[name] = host
		delete(f.hosts, name)
		f.notifyLocked()
	}
	return nil
}

// WatchEnds delivers the ends announced with End.
func (f *Fake) WatchEnds(ctx context.Context, fn func(executors.End)) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e := <-f.ends:
			fn(e)
		}
	}
}

// End announces that the host of job id stopped by itself.
func (f *Fake) End(e executors.End) { f.ends <- e }

func (f *Fake) Reap(_ context.Context, keep []executors.Handle, grace time.Duration) ([]string, error) {
	kept := map[string]bool{}
	for _, h := range keep {
		if n, err := decode(h); err == nil {
			kept[n] = true
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var removed []string
	for name, host := range f.hosts {
		if !kept[name] && time.Since(host.Created) >= grace {
			host.Decommissioned = true
			f.gone[name] = host
			delete(f.hosts, name)
			removed = append(removed, name)
		}
	}
	f.notifyLocked()
	return removed, nil
}

// Plant creates a host nobody asked for (an orphan from a crash).
func (f *Fake) Plant(runner string, id int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	name := f.name(executors.Job{RunnerID: runner, ID: id})
	f.hosts[name] = &Host{Name: name, JobID: id, Provisions: 1, Created: time.Now()}
	f.notifyLocked()
}

func (f *Fake) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// WaitFor blocks until cond (called with the fake locked: use the Locked
// accessors) holds, waking on every change; it returns false on timeout.
func (f *Fake) WaitFor(timeout time.Duration, cond func(f *Fake) bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		f.mu.Lock()
		ok := cond(f)
		ch := f.changed
		f.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-ch:
		case <-deadline.C:
			return false
		}
	}
}

// LiveLocked and GoneLocked are for WaitFor conditions.
func (f *Fake) LiveLocked(name string) (Host, bool) {
	h, ok := f.hosts[name]
	if !ok {
		return Host{}, false
	}
	return *h, true
}

// GoneLocked reports whether name was decommissioned.
func (f *Fake) GoneLocked(name string) bool { _, ok := f.gone[name]; return ok }

// CountLocked returns the number of live and removed hosts.
func (f *Fake) CountLocked() (live, gone int) { return len(f.hosts), len(f.gone) }

// Live returns the hosts that exist now.
func (f *Fake) Live() map[string]Host {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]Host{}
	for n, h := range f.hosts {
		out[n] = *h
	}
	return out
}

// Removed returns the hosts decommissioned so far.
func (f *Fake) Removed() map[string]Host {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]Host{}
	for n, h := range f.gone {
		out[n] = *h
	}
	return out
}

// MaxConcurrentProvisions is the most Provision calls seen in flight at once.
func (f *Fake) MaxConcurrentProvisions() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.maxInProvision
}

// Observe implements Observer for the conformance suite.
func (f *Fake) Observe(_ context.Context, h executors.Handle) (exists bool, launches int, err error) {
	name, err := decode(h)
	if err != nil {
		return false, 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	host, ok := f.hosts[name]
	if !ok {
		return false, 0, nil
	}
	return true, host.Launches, nil
}

// Inspect implements executors.Inspector: a host runs once launched until
// Stop says it stopped.
func (f *Fake) Inspect(ctx context.Context, h executors.Handle) (executors.HostStatus, error) {
	name, err := decode(h)
	if err != nil {
		return executors.HostStatus{}, err
	}
	if f.OnInspect != nil {
		if err := f.OnInspect(ctx, name); err != nil {
			return executors.HostStatus{}, err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	host, ok := f.hosts[name]
	if !ok {
		return executors.HostStatus{}, nil
	}
	return executors.HostStatus{Exists: true, Running: host.Launches > 0 && !host.Stopped, ExitCode: host.ExitCode, Detail: host.Detail}, nil
}

// Stop marks the host of job id (of runner) as stopped by itself with
// exitCode and detail, without announcing it (as if the daemon was down);
// End announces it.
func (f *Fake) Stop(runner string, id int64, exitCode int, detail string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if host, ok := f.hosts[f.name(executors.Job{RunnerID: runner, ID: id})]; ok {
		host.Stopped, host.ExitCode, host.Detail = true, exitCode, detail
		f.notifyLocked()
	}
}

// Vanish removes the host of job id (of runner) behind the daemon's back
// (docker rm -f, a PaaS that lost it).
func (f *Fake) Vanish(runner string, id int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.hosts, f.name(executors.Job{RunnerID: runner, ID: id}))
	f.notifyLocked()
}

package executortest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"gitlab.com/paas-runner/paas-runner/executors"
)

// Dir is an executor whose hosts are files in a directory, so that they
// outlive a killed daemon and a test can count leaks and double launches:
//
//	<name>.host      the host (created by Provision, removed by Decommission)
//	<name>.launched  the job was handed to the host
//	launches.log     one line per real launch ("<runner>/<job id>") and per
//	                 host removal ("removed <name>"), never truncated: a
//	                 launch is this one append, so a kill cannot split it
//
// When Hold names a step (provision, launch, decommission), that step writes
// <name>.holding-<step> and waits until the file "release" exists in the
// directory or its context ends: a test can kill the daemon at that point.
//
// Delay > 0 makes every step take a random time up to Delay, so that a
// test killing the daemon at random times lands inside the steps (and in
// the window between a job's acquisition and its write-ahead, where Plan
// runs).
type Dir struct {
	Path  string
	Hold  string
	Delay time.Duration
}

func (d *Dir) delay(ctx context.Context) error {
	if d.Delay <= 0 {
		return nil
	}
	t := time.NewTimer(time.Duration(rand.Int64N(int64(d.Delay))))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

var (
	_ executors.Executor  = (*Dir)(nil)
	_ executors.Reaper    = (*Dir)(nil)
	_ executors.Inspector = (*Dir)(nil)
)

type dirHandle struct {
	Name string `json:"name"`
}

func (d *Dir) Plan(ctx context.Context, j executors.Job) (executors.Handle, error) {
	if err := d.delay(ctx); err != nil {
		return nil, err
	}
	return json.Marshal(dirHandle{Name: fmt.Sprintf("host-%s-%d", sanitize(j.RunnerID), j.ID)})
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == '.' || r == ' ' {
			return '_'
		}
		return r
	}, s)
}

func (d *Dir) decode(h executors.Handle) (string, error) {
	var dh dirHandle
	if err := json.Unmarshal(h, &dh); err != nil || dh.Name == "" || strings.ContainsAny(dh.Name, "/.") {
		return "", executors.BadHandle(h, "not a dir handle")
	}
	return dh.Name, nil
}

func (d *Dir) hold(ctx context.Context, step, name string) error {
	if d.Hold != step {
		return nil
	}
	marker := filepath.Join(d.Path, name+".holding-"+step)
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		return err
	}
	defer os.Remove(marker)
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if _, err := os.Stat(filepath.Join(d.Path, "release")); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (d *Dir) Provision(ctx context.Context, h executors.Handle, j executors.Job) (executors.Handle, error) {
	name, err := d.decode(h)
	if err != nil {
		return nil, err
	}
	if err := d.hold(ctx, "provision", name); err != nil {
		return nil, err
	}
	if err := d.delay(ctx); err != nil {
		return nil, err
	}
	p := filepath.Join(d.Path, name+".host")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if errors.Is(err, os.ErrExist) {
		return h, nil // adopted
	}
	if err != nil {
		return nil, executors.Transient("provision", err)
	}
	fmt.Fprintf(f, "%s %d\n", j.RunnerID, j.ID)
	return h, f.Close()
}

func (d *Dir) Launch(ctx context.Context, h executors.Handle, j executors.Job) (executors.Handle, error) {
	name, err := d.decode(h)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(d.Path, name+".host")); err != nil {
		return nil, executors.Permanent("launch", fmt.Errorf("host %s does not exist", name))
	}
	if err := d.hold(ctx, "launch", name); err != nil {
		return nil, err
	}
	if err := d.delay(ctx); err != nil {
		return nil, err
	}
	// The launch is one append to launches.log (atomic, whatever kills the
	// daemon): the log says whether this host runs its job already.
	key := fmt.Sprintf("%s/%d", j.RunnerID, j.ID)
	done, err := d.launchedInLog(name, key)
	if err != nil {
		return nil, executors.Transient("launch", err)
	}
	if !done {
		if err := d.appendLog(key); err != nil {
			return nil, executors.Transient("launch", err)
		}
	}
	// the marker observers look at (made again if a kill came before it)
	f, err := os.OpenFile(filepath.Join(d.Path, name+".launched"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err == nil {
		fmt.Fprintf(f, "offset %d\n", j.TraceOffset)
		err = f.Close()
	}
	if err != nil && !errors.Is(err, os.ErrExist) {
		return nil, executors.Transient("launch", err)
	}
	return h, nil
}

// launchedInLog tells whether launches.log has a launch of key on host
// name since the host was last removed.
func (d *Dir) launchedInLog(name, key string) (bool, error) {
	data, err := os.ReadFile(filepath.Join(d.Path, "launches.log"))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	launched := false
	for _, l := range strings.Split(string(data), "\n") {
		switch l {
		case key:
			launched = true
		case "removed " + name:
			launched = false
		}
	}
	return launched, nil
}

// appendLog appends one line to launches.log in one write.
func (d *Dir) appendLog(line string) error {
	f, err := os.OpenFile(filepath.Join(d.Path, "launches.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write([]byte(line + "\n")); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (d *Dir) Decommission(ctx context.Context, h executors.Handle) error {
	name, err := d.decode(h)
	if err != nil {
		return err
	}
	if err := d.hold(ctx, "decommission", name); err != nil {
		return err
	}
	if err := d.delay(ctx); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(d.Path, name+".host")); err == nil {
		if err := d.appendLog("removed " + name); err != nil {
			return executors.Transient("decommission", err)
		}
	}
	for _, suffix := range []string{".launched", ".exit", ".host"} {
		if err := os.Remove(filepath.Join(d.Path, name+suffix)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return executors.Transient("decommission", err)
		}
	}
	return nil
}

func (d *Dir) Reap(ctx context.Context, keep []executors.Handle, grace time.Duration) ([]string, error) {
	kept := map[string]bool{}
	for _, h := range keep {
		if n, err := d.decode(h); err == nil {
			kept[n] = true
		}
	}
	hosts, err := filepath.Glob(filepath.Join(d.Path, "*.host"))
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, p := range hosts {
		name := strings.TrimSuffix(filepath.Base(p), ".host")
		if kept[name] {
			continue
		}
		if fi, err := os.Stat(p); err != nil || time.Since(fi.ModTime()) < grace {
			continue
		}
		h, _ := json.Marshal(dirHandle{Name: name})
		if err := d.Decommission(ctx, h); err != nil {
			return removed, err
		}
		removed = append(removed, name)
	}
	return removed, nil
}

// Observe implements Observer.
func (d *Dir) Observe(_ context.Context, h executors.Handle) (bool, int, error) {
	name, err := d.decode(h)
	if err != nil {
		return false, 0, err
	}
	if _, err := os.Stat(filepath.Join(d.Path, name+".host")); err != nil {
		return false, 0, nil
	}
	launches := 0
	if _, err := os.Stat(filepath.Join(d.Path, name+".launched")); err == nil {
		launches = 1
	}
	return true, launches, nil
}

// Inspect implements executors.Inspector: a host runs from its launch until
// <name>.exit (the exit code, then detail lines) says it stopped.
func (d *Dir) Inspect(_ context.Context, h executors.Handle) (executors.HostStatus, error) {
	name, err := d.decode(h)
	if err != nil {
		return executors.HostStatus{}, err
	}
	if _, err := os.Stat(filepath.Join(d.Path, name+".host")); errors.Is(err, os.ErrNotExist) {
		return executors.HostStatus{}, nil
	} else if err != nil {
		return executors.HostStatus{}, err
	}
	st := executors.HostStatus{Exists: true}
	if data, err := os.ReadFile(filepath.Join(d.Path, name+".exit")); err == nil {
		code, detail, _ := strings.Cut(string(data), "\n")
		fmt.Sscanf(code, "%d", &st.ExitCode)
		st.Detail = strings.TrimSpace(detail)
		return st, nil
	}
	if _, err := os.Stat(filepath.Join(d.Path, name+".launched")); err == nil {
		st.Running = true
	}
	return st, nil
}

// WatchingDir is Dir with an end watch: a host ends when <name>.exit (exit
// code, then detail lines) appears, as Inspect reads it.
type WatchingDir struct {
	Dir
	// Every is the directory scan period (default 100 ms).
	Every time.Duration
}

var _ executors.EndWatcher = (*WatchingDir)(nil)

var hostNameRe = regexp.MustCompile(`^host-.*-(\d+)\.exit$`)

// WatchEnds reports each <name>.exit file once.
func (w *WatchingDir) WatchEnds(ctx context.Context, fn func(executors.End)) error {
	every := w.Every
	if every <= 0 {
		every = 100 * time.Millisecond
	}
	seen := map[string]bool{}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		ents, err := os.ReadDir(w.Path)
		if err != nil {
			return err
		}
		for _, ent := range ents {
			m := hostNameRe.FindStringSubmatch(ent.Name())
			if m == nil || seen[ent.Name()] {
				continue
			}
			seen[ent.Name()] = true
			var id int64
			fmt.Sscanf(m[1], "%d", &id)
			h, _ := json.Marshal(dirHandle{Name: strings.TrimSuffix(ent.Name(), ".exit")})
			st, err := w.Inspect(ctx, h)
			if err != nil {
				continue
			}
			fn(executors.End{JobID: id, ExitCode: st.ExitCode, Detail: st.Detail})
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

package executortest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gitlab.com/paas-runner/paas-runner/executors"
)

// Dir is an executor whose hosts are files in a directory, so that they
// outlive a killed daemon and a test can count leaks and double launches:
//
//	<name>.host      the host (created by Provision, removed by Decommission)
//	<name>.launched  the job was handed to the host (created once, O_EXCL)
//	launches.log     one line per real launch, never truncated
//
// When Hold names a step (provision, launch, decommission), that step writes
// <name>.holding-<step> and waits until the file "release" exists in the
// directory or its context ends: a test can kill the daemon at that point.
type Dir struct {
	Path string
	Hold string
}

var (
	_ executors.Executor = (*Dir)(nil)
	_ executors.Reaper   = (*Dir)(nil)
)

type dirHandle struct {
	Name string `json:"name"`
}

func (d *Dir) Plan(_ context.Context, j executors.Job) (executors.Handle, error) {
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
	f, err := os.OpenFile(filepath.Join(d.Path, name+".launched"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if errors.Is(err, os.ErrExist) {
		return h, nil // already launched: never twice
	}
	if err != nil {
		return nil, executors.Transient("launch", err)
	}
	fmt.Fprintf(f, "offset %d\n", j.TraceOffset)
	f.Close()
	log, err := os.OpenFile(filepath.Join(d.Path, "launches.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	_, err = fmt.Fprintf(log, "%s/%d\n", j.RunnerID, j.ID)
	return h, err
}

func (d *Dir) Decommission(ctx context.Context, h executors.Handle) error {
	name, err := d.decode(h)
	if err != nil {
		return err
	}
	if err := d.hold(ctx, "decommission", name); err != nil {
		return err
	}
	for _, suffix := range []string{".launched", ".host"} {
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

// Inspect implements Inspector.
func (d *Dir) Inspect(_ context.Context, h executors.Handle) (bool, int, error) {
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

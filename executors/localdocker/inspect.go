package localdocker

import (
	"context"
	"fmt"

	cerrdefs "github.com/containerd/errdefs"

	"gitlab.com/paas-runner/paas-runner/executors"
)

// Inspect says what became of a host: gone, running, or stopped with its
// exit code, whether it was OOM killed and its last output lines. The
// dispatcher asks at a restart, so that a host that died while the daemon
// was down fails its job at once.
func (e *Executor) Inspect(ctx context.Context, h executors.Handle) (executors.HostStatus, error) {
	hd, err := decodeHandle(h)
	if err != nil {
		return executors.HostStatus{}, err
	}
	name := hd.Container
	if hd.Heptapod && name == "" {
		c, err := e.findHeptapodHost(ctx, hd)
		if err != nil {
			return executors.HostStatus{}, err
		}
		if c == "" {
			return executors.HostStatus{Detail: "the host container Heptapod PAAS Runner started from " + hd.Image + " is gone"}, nil
		}
		name = c
	}
	info, err := e.cli.ContainerInspect(ctx, name)
	if cerrdefs.IsNotFound(err) {
		return executors.HostStatus{Detail: "the host container " + name + " is gone"}, nil
	}
	if err != nil {
		return executors.HostStatus{}, fmt.Errorf("inspecting %s: %w", name, err)
	}
	if !hd.Heptapod && (info.Config == nil || !e.ours(info.Config.Labels)) {
		return executors.HostStatus{Detail: "the container named " + name + " is not this daemon's host"}, nil
	}
	st := info.State
	switch {
	case st == nil:
		return executors.HostStatus{Exists: true}, nil
	case st.Running || st.Restarting || st.Paused:
		return executors.HostStatus{Exists: true, Running: true}, nil
	case !started(info):
		return executors.HostStatus{Exists: true, Detail: "the host container was created but never started"}, nil
	}
	end := endState{oom: st.OOMKilled, tail: e.tail(ctx, info.ID, info.Config != nil && info.Config.Tty)}
	detail := fmt.Sprintf("exit status %d", st.ExitCode)
	if d := end.detail(st.ExitCode); d != "" {
		detail += ": " + d
	}
	return executors.HostStatus{Exists: true, ExitCode: st.ExitCode, Detail: detail}, nil
}

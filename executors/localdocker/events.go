package localdocker

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/pkg/stdcopy"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/internal/labels"
)

// WatchEnds reports this runner's host containers that stop, with their
// exit status and last output lines, and the hosts imported from Heptapod
// (unlabelled: told by their hpd-job image). It reads the engine's events
// from Options.EventsSince, then, when called again after a failure, from
// the last event it saw: an end that happens while the daemon starts, or
// while the watch reconnects, is not missed (one may be reported twice).
func (e *Executor) WatchEnds(ctx context.Context, fn func(executors.End)) error {
	since := e.eventsSince()
	// One stream of all container ends, sorted here: this daemon's hosts
	// by their labels, Heptapod's (unlabelled) by their image. One stream
	// keeps the events in order, so that where the next watch starts is
	// exact.
	f := filters.NewArgs(filters.Arg("type", "container"), filters.Arg("event", "die"), filters.Arg("event", "oom"))
	msgs, errs := e.cli.Events(ctx, events.ListOptions{Since: fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond()), Filters: f})
	oom := map[string]bool{}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errs:
			return err
		case m := <-msgs:
			e.sawEvent(m)
			jobID, ok := e.hostOfEvent(m)
			if !ok {
				continue
			}
			if m.Action == events.ActionOOM {
				oom[m.Actor.ID] = true
				continue
			}
			code, _ := strconv.Atoi(m.Actor.Attributes["exitCode"])
			if reportedEnd(m.Actor.Attributes, code, oom[m.Actor.ID]) {
				// paas-runner's inner runner: GitLab has the job's end
				fn(executors.End{JobID: jobID, ExitCode: 0, Reported: true})
				continue
			}
			st := e.inspectID(ctx, m.Actor.ID)
			if oom[m.Actor.ID] {
				st.oom = true
				delete(oom, m.Actor.ID)
			}
			fn(executors.End{JobID: jobID, ExitCode: code, Detail: st.detail(code)})
		}
	}
}

// reportedEnd tells whether a host's end says that GitLab accepted the
// job's final state: paas-runner's inner runner (LabelInnerRunner)
// exited 0, not killed for memory.
func reportedEnd(attrs map[string]string, exitCode int, oom bool) bool {
	return exitCode == 0 && !oom && attrs[LabelInnerRunner] == paasShape.Name
}

// hostOfEvent tells whether a container event is about one of this
// runner's hosts (the attributes carry the container's labels and image),
// and its job.
func (e *Executor) hostOfEvent(m events.Message) (int64, bool) {
	a := m.Actor.Attributes
	if (a[labels.LabelRole] == labels.RoleHost || a[LabelManaged] == "true") && e.ours(a) {
		id, err := strconv.ParseInt(a[labels.LabelJobID], 10, 64)
		return id, err == nil && id > 0
	}
	return e.heptapodJob(a["image"])
}

func (e *Executor) eventsSince() time.Time {
	e.evMu.Lock()
	defer e.evMu.Unlock()
	return e.evSince
}

// sawEvent moves where the next watch starts to the event's time.
func (e *Executor) sawEvent(m events.Message) {
	t := time.Unix(0, m.TimeNano)
	e.evMu.Lock()
	if t.After(e.evSince) {
		e.evSince = t
	}
	e.evMu.Unlock()
}

// endState is what is known of a stopped container.
type endState struct {
	oom  bool
	tail string
}

func (s endState) detail(code int) string {
	d := ""
	if s.oom {
		d = "OOM killed"
	}
	if s.tail != "" {
		if d != "" {
			d += "; "
		}
		d += "last output: " + s.tail
	}
	return d
}

// inspectID reads what a stopped container says of its end (it may be gone
// already: Heptapod's ran with --rm).
func (e *Executor) inspectID(ctx context.Context, id string) endState {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	info, err := e.cli.ContainerInspect(ctx, id)
	if err != nil {
		return endState{}
	}
	st := endState{oom: info.State != nil && info.State.OOMKilled}
	st.tail = e.tail(ctx, id, info.Config != nil && info.Config.Tty)
	return st
}

// tail returns the last lines a container printed, on one line.
func (e *Executor) tail(ctx context.Context, id string, tty bool) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rc, err := e.cli.ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: "5"})
	if err != nil {
		return ""
	}
	defer rc.Close()
	var out bytes.Buffer
	if tty {
		_, err = io.Copy(&out, io.LimitReader(rc, 64<<10))
	} else {
		_, err = stdcopy.StdCopy(&out, &out, io.LimitReader(rc, 64<<10))
	}
	if err != nil && out.Len() == 0 {
		return ""
	}
	var lines []string
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	s := strings.Join(lines, " | ")
	if len(s) > 500 {
		s = "…" + s[len(s)-500:]
	}
	return s
}

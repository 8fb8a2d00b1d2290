package localdocker

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/volume"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/internal/labels"
)

// Reap removes this runner's host containers that no kept handle
// describes, and the resources the inner runner made for jobs no kept
// handle describes (containers, networks, builds volumes: role=job), all
// older than grace. Only resources labelled with this daemon's system_id
// and this runner are looked at: another daemon's or another runner's,
// cache volumes and unlabelled resources are never touched.
func (e *Executor) Reap(ctx context.Context, keep []executors.Handle, grace time.Duration) ([]string, error) {
	keepC, keepJ := map[string]bool{}, map[string]bool{}
	for _, h := range keep {
		if hd, err := decodeHandle(h); err == nil {
			keepC[hd.Container] = true
			keepJ[strconv.FormatInt(hd.JobID, 10)] = true
		}
	}
	cutoff := time.Now().Add(-grace).Unix()
	var removed []string
	hosts := filters.NewArgs(filters.Arg("label", labels.LabelRole+"="+labels.RoleHost))
	for k, v := range e.scope() {
		hosts.Add("label", k+"="+v)
	}
	cs, err := e.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: hosts})
	if err != nil {
		return nil, fmt.Errorf("listing containers: %w", err)
	}
	for _, c := range cs {
		name := ""
		if len(c.Names) > 0 {
			name = strings.TrimPrefix(c.Names[0], "/")
		}
		if keepC[name] || c.Created > cutoff {
			continue
		}
		if err := e.removeContainer(ctx, c.ID); err != nil {
			return removed, fmt.Errorf("removing container %s: %w", name, err)
		}
		removed = append(removed, "container "+name)
	}
	spare := func(l map[string]string, created int64) bool {
		return keepJ[l[labels.LabelJobID]] || created > cutoff
	}
	// the job resources of hosts just removed go too
	n, err := e.removeJobResourcesOnce(ctx, e.jobFilter(0), spare)
	if n > 0 {
		removed = append(removed, fmt.Sprintf("%d containers, networks or volumes of jobs", n))
	}
	return removed, err
}

func volumeCreated(v *volume.Volume) int64 {
	t, err := time.Parse(time.RFC3339, v.CreatedAt)
	if err != nil {
		return 0
	}
	return t.Unix()
}

package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"

	"gitlab.com/paas-runner/paas-runner/executors/localdocker"
)

// box is one container of a job's, as the engine's events tell it.
type box struct {
	ID      string
	Created time.Time
	Started time.Time // zero: never started (e.g. an image build's step)
	Gone    time.Time // destroyed
	Image   string    // the image id it ran
	// JobImage: its image carries the job's label (made for this job
	// alone), as opposed to a shared base image.
	JobImage bool
}

// hostTimes is what the engine's events tell of one job's host.
type hostTimes struct {
	Container string
	Created   time.Time
	Started   time.Time
	Gone      time.Time
	// JobImage is the host's image when it was made for this job alone,
	// "" when the host ran a shared image; ImageGone when it was deleted.
	JobImage  string
	ImageGone time.Time
}

// watcher follows the engine's events for the run's jobs: the containers
// labelled with each job's id (its host, the inner runner's containers,
// and, while a job image is built, the build's intermediate containers) and
// the removal of images. Times are the engine's. Jobs are told by their id
// label, not by the runner's: the run's job ids are its own (the fake
// GitLab numbers them from this process's pid), and the runner label's
// value is the daemon's business.
type watcher struct {
	cli *client.Client

	mu        sync.Mutex
	expected  map[int64]bool
	boxes     map[int64][]*box
	imageGone map[string]time.Time // image id → deleted
	errs      []error
}

// watch starts following events until ctx ends. It returns once both
// event streams are seen delivering (a probe container and a probe tag of
// probeImage come and go), so that nothing after it is missed.
func watch(ctx context.Context, cli *client.Client, probeImage string) (*watcher, error) {
	w := &watcher{cli: cli, expected: map[int64]bool{}, boxes: map[int64][]*box{}, imageGone: map[string]time.Time{}}
	cf := filters.NewArgs(filters.Arg("type", "container"), filters.Arg("label", localdocker.LabelJobID),
		filters.Arg("event", "create"), filters.Arg("event", "start"), filters.Arg("event", "destroy"))
	cmsgs, cerrs := cli.Events(ctx, events.ListOptions{Filters: cf})
	imf := filters.NewArgs(filters.Arg("type", "image"), filters.Arg("event", "delete"), filters.Arg("event", "untag"))
	imsgs, ierrs := cli.Events(ctx, events.ListOptions{Filters: imf})
	probes := make(chan string, 16) // actor ids of the probes' events
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case err := <-cerrs:
				w.fail(ctx, err)
				return
			case err := <-ierrs:
				w.fail(ctx, err)
				return
			case m := <-cmsgs:
				if m.Actor.Attributes[localdocker.LabelJobID] == "0" && m.Action == events.ActionDestroy {
					select {
					case probes <- m.Actor.ID:
					default:
					}
				}
				w.container(ctx, m)
			case m := <-imsgs:
				if m.Action == events.ActionUnTag {
					select {
					case probes <- m.Actor.ID:
					default:
					}
					continue
				}
				w.image(m)
			}
		}
	}()
	return w, w.probe(ctx, probeImage, probes)
}

// probe makes one event on each stream and waits (≤ 30 s) until both came
// through.
func (w *watcher) probe(ctx context.Context, probeImage string, seen <-chan string) error {
	name := fmt.Sprintf("paas-runner-bench-probe-%d-%d", os.Getpid(), time.Now().UnixNano())
	c, err := w.cli.ContainerCreate(ctx, &container.Config{Image: probeImage, Cmd: []string{"true"}, Labels: map[string]string{localdocker.LabelJobID: "0"}}, nil, nil, nil, name)
	if err != nil {
		return fmt.Errorf("probe container: %w", err)
	}
	if err := w.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil {
		return fmt.Errorf("probe container: %w", err)
	}
	info, err := w.cli.ImageInspect(ctx, probeImage)
	if err != nil {
		return err
	}
	if err := w.cli.ImageTag(ctx, probeImage, name+":probe"); err != nil {
		return fmt.Errorf("probe tag: %w", err)
	}
	if _, err := w.cli.ImageRemove(ctx, name+":probe", image.RemoveOptions{}); err != nil {
		return fmt.Errorf("probe tag: %w", err)
	}
	want := map[string]bool{c.ID: true, info.ID: true}
	deadline := time.After(30 * time.Second)
	for len(want) > 0 {
		select {
		case id := <-seen:
			delete(want, id)
		case <-deadline:
			return fmt.Errorf("the engine's events did not come through within 30 s")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (w *watcher) fail(ctx context.Context, err error) {
	if ctx.Err() != nil {
		return
	}
	w.mu.Lock()
	w.errs = append(w.errs, fmt.Errorf("docker events: %w", err))
	w.mu.Unlock()
}

func at(m events.Message) time.Time {
	if m.TimeNano != 0 {
		return time.Unix(0, m.TimeNano)
	}
	return time.Unix(m.Time, 0)
}

func (w *watcher) container(ctx context.Context, m events.Message) {
	id, _ := strconv.ParseInt(m.Actor.Attributes[localdocker.LabelJobID], 10, 64)
	if id <= 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if m.Action == events.ActionCreate {
		if !w.expected[id] {
			return // another run's, or another engineer's
		}
		b := &box{ID: m.Actor.ID, Created: at(m)}
		w.boxes[id] = append(w.boxes[id], b)
		go w.noteImage(ctx, id, b)
		return
	}
	for _, b := range w.boxes[id] {
		if b.ID != m.Actor.ID {
			continue
		}
		switch m.Action {
		case events.ActionStart:
			if b.Started.IsZero() {
				b.Started = at(m)
			}
		case events.ActionDestroy:
			b.Gone = at(m)
		}
	}
}

// noteImage finds out which image a container runs, and whether it is the
// job's own.
func (w *watcher) noteImage(ctx context.Context, id int64, b *box) {
	ictx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := w.cli.ContainerInspect(ictx, b.ID)
	if err != nil {
		return // gone already: a build step's
	}
	info, err := w.cli.ImageInspect(ictx, c.Image)
	if err != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	b.Image = info.ID
	b.JobImage = info.Config != nil && info.Config.Labels[localdocker.LabelJobID] == strconv.FormatInt(id, 10)
}

// expect makes job id one of the run's: call it before the job can be
// handed out.
func (w *watcher) expect(id int64) {
	w.mu.Lock()
	w.expected[id] = true
	w.mu.Unlock()
}

func (w *watcher) image(m events.Message) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.imageGone[m.Actor.ID] = at(m)
}

// host tells what is known of job id's host: the first container made for
// the job that was started and outlived its end (a build's intermediate
// containers are removed during the build), ok false when none is.
func (w *watcher) host(id int64, ended time.Time) (h hostTimes, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, b := range w.boxes[id] {
		if b.Started.IsZero() || (!b.Gone.IsZero() && b.Gone.Before(ended)) {
			continue
		}
		h = hostTimes{Container: b.ID, Created: b.Created, Started: b.Started, Gone: b.Gone}
		if b.JobImage {
			h.JobImage = b.Image
			h.ImageGone = w.imageGone[b.Image]
		}
		return h, true
	}
	return hostTimes{}, false
}

// script tells when job id's script container (the last container the
// inner runner made and started for it, not its host) was created and
// started, ok false when there is none.
func (w *watcher) script(id int64, host string) (created, started time.Time, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, b := range w.boxes[id] {
		if b.ID == host || b.Started.IsZero() || b.Created.Before(created) {
			continue
		}
		created, started, ok = b.Created, b.Started, true
	}
	return created, started, ok
}

// errors are the event streams' failures.
func (w *watcher) errors() []error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]error(nil), w.errs...)
}

// runContainers lists the run's containers: the runner's, and those
// labelled with one of the run's job ids made since it started.
func runContainers(ctx context.Context, cli *client.Client, runnerID string, jobs map[int64]bool, since time.Time) ([]container.Summary, error) {
	cs, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", localdocker.LabelRunner+"="+runnerID))})
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, c := range cs {
		seen[c.ID] = true
	}
	more, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", localdocker.LabelJobID))})
	if err != nil {
		return nil, err
	}
	for _, c := range more {
		id, _ := strconv.ParseInt(c.Labels[localdocker.LabelJobID], 10, 64)
		if jobs[id] && !seen[c.ID] && !time.Unix(c.Created, 0).Before(since.Add(-time.Second)) {
			cs = append(cs, c)
		}
	}
	return cs, nil
}

// runImages lists the run's images: the runner's, and those labelled with
// one of the run's job ids made since it started (per-job images); top
// images only (a build's intermediate images go with them).
func runImages(ctx context.Context, cli *client.Client, runnerID string, jobs map[int64]bool, since time.Time) ([]image.Summary, error) {
	is, err := cli.ImageList(ctx, image.ListOptions{Filters: filters.NewArgs(filters.Arg("label", localdocker.LabelRunner+"="+runnerID))})
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, im := range is {
		seen[im.ID] = true
	}
	more, err := cli.ImageList(ctx, image.ListOptions{Filters: filters.NewArgs(filters.Arg("label", localdocker.LabelJobID))})
	if err != nil {
		return nil, err
	}
	for _, im := range more {
		id, _ := strconv.ParseInt(im.Labels[localdocker.LabelJobID], 10, 64)
		if jobs[id] && !seen[im.ID] && !time.Unix(im.Created, 0).Before(since.Add(-time.Second)) {
			is = append(is, im)
		}
	}
	return is, nil
}

// remaining counts the run's containers and images still on the engine.
func remaining(ctx context.Context, cli *client.Client, runnerID string, jobs map[int64]bool, since time.Time) (containers, images int, err error) {
	cs, err := runContainers(ctx, cli, runnerID, jobs, since)
	if err != nil {
		return 0, 0, err
	}
	is, err := runImages(ctx, cli, runnerID, jobs, since)
	return len(cs), len(is), err
}

// cleanRun removes what one run left: its containers and images, and the
// networks and volumes labelled with one of its job ids made since it
// started. It returns what it removed.
func cleanRun(cli *client.Client, runnerID string, jobs map[int64]bool, since time.Time) []string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var removed []string
	cs, _ := runContainers(ctx, cli, runnerID, jobs, since)
	for _, c := range cs {
		if err := cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err == nil {
			removed = append(removed, "container "+c.ID[:12])
		}
	}
	is, _ := runImages(ctx, cli, runnerID, jobs, since)
	for _, im := range is {
		if _, err := cli.ImageRemove(ctx, im.ID, image.RemoveOptions{Force: true, PruneChildren: true}); err == nil {
			removed = append(removed, "image "+im.ID)
		}
	}
	jobbed := filters.NewArgs(filters.Arg("label", localdocker.LabelJobID))
	nets, _ := cli.NetworkList(ctx, network.ListOptions{Filters: jobbed})
	for _, n := range nets {
		id, _ := strconv.ParseInt(n.Labels[localdocker.LabelJobID], 10, 64)
		if jobs[id] && !n.Created.Before(since.Add(-time.Second)) {
			if cli.NetworkRemove(ctx, n.ID) == nil {
				removed = append(removed, "network "+n.Name)
			}
		}
	}
	vols, _ := cli.VolumeList(ctx, volume.ListOptions{Filters: jobbed})
	for _, v := range vols.Volumes {
		id, _ := strconv.ParseInt(v.Labels[localdocker.LabelJobID], 10, 64)
		if !jobs[id] {
			continue
		}
		if created, err := time.Parse(time.RFC3339, v.CreatedAt); err == nil && created.Before(since.Add(-time.Second)) {
			continue
		}
		if cli.VolumeRemove(ctx, v.Name, true) == nil {
			removed = append(removed, "volume "+v.Name)
		}
	}
	return removed
}

// baseImages lists the ids of local-docker's base images on the engine.
func baseImages(ctx context.Context, cli *client.Client) (map[string]bool, error) {
	is, err := cli.ImageList(ctx, image.ListOptions{Filters: filters.NewArgs(filters.Arg("label", localdocker.LabelHostImage))})
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, im := range is {
		out[im.ID] = true
	}
	return out, nil
}

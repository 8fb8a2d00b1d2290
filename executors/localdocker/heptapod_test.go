package localdocker

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
)

// heptapodHost makes a host the way Heptapod PAAS Runner's local-docker
// does (research notes §5.1, §7): `docker build -t hpd-job-<prefix>-<id>`
// of its Dockerfile FROM the inner image, with runner.toml and job.json,
// then `docker run --rm -t -v <socket>:/var/run/docker.sock <tag>`
// (started when run is true). It returns the tag, as Heptapod's state file
// records it.
func heptapodHost(t *testing.T, e *Executor, prefix string, id int64, mode string, run bool) string {
	t.Helper()
	ctx := ctxT(t)
	tag := fmt.Sprintf("hpd-job-%s-%d", strings.ToLower(prefix), id)
	dockerfile := "FROM " + innerImage + `
COPY runner.toml /etc/heptapod-runner/runner.toml
COPY job.json /etc/heptapod-runner/job.json
ENV DEBUG="true"
ENTRYPOINT ["/usr/bin/gitlab-runner", "exec-fetched-job", "--config", "/etc/heptapod-runner/runner.toml","/etc/heptapod-runner/job.json"]
`
	if err := localdockertest.BuildImage(ctx, e.cli, tag, map[string][]byte{
		"Dockerfile":  []byte(dockerfile),
		"runner.toml": []byte("[[runners]]\nexecutor = \"docker\"\nurl = \"http://127.0.0.1:1\"\n"),
		"job.json":    payload(id, mode),
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { localdockertest.RemoveImage(e.cli, tag) })
	if !run {
		return tag
	}
	c, err := e.cli.ContainerCreate(ctx, &container.Config{Image: tag, Tty: true},
		&container.HostConfig{AutoRemove: true, Binds: []string{e.sockPath + ":/var/run/docker.sock"}, NetworkMode: "host"}, nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.cli.ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true}) })
	if err := e.cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	return tag
}

// A job Heptapod PAAS Runner recorded (pending or launched, paas_resource
// = its image tag) whose host still runs is adopted and tracked to its
// end; a job whose host is gone fails.
func TestHeptapodHostAdopted(t *testing.T) {
	needDocker(t)
	if dockerSock() == "" {
		t.Skip("the engine is not on a unix socket")
	}
	legacy := "Hp" + testID(t, 6) // Heptapod's unique_name: 8 characters of the token
	e := newExec(t, func(o *Options) {
		o.InnerImage = innerImage
		o.NetworkMode = "host"
		o.LegacyRunnerIDs = []string{legacy}
	})
	ctx := ctxT(t)
	tag := heptapodHost(t, e, legacy, 121, "idle", true)
	h, _ := json.Marshal(tag) // the state file's paas_resource
	j := executors.Job{RunnerID: legacy, ID: 121, Payload: payload(121, "idle")}

	if st, err := e.Inspect(ctx, h); err != nil || !st.Exists || !st.Running {
		t.Fatalf("inspect the imported handle: %+v %v", st, err)
	}
	if _, err := e.Provision(ctx, h, j); err != nil {
		t.Fatal(err)
	}
	adopted, err := e.Launch(ctx, h, j)
	if err != nil {
		t.Fatalf("launch of the imported handle: %v", err)
	}
	if st, err := e.Inspect(ctx, adopted); err != nil || !st.Running {
		t.Fatalf("inspect the adopted host: %+v %v", st, err)
	}
	// launched once: a second Launch changes nothing
	if again, err := e.Launch(ctx, adopted, j); err != nil || string(again) != string(adopted) {
		t.Fatalf("launch again: %s %v", again, err)
	}

	// its end is reported
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ends := make(chan executors.End, 4)
	go e.WatchEnds(wctx, func(en executors.End) { ends <- en })
	hd, _ := decodeHandle(adopted)
	if err := e.cli.ContainerKill(ctx, hd.Container, "KILL"); err != nil {
		t.Fatal(err)
	}
	select {
	case en := <-ends:
		if en.JobID != 121 || en.ExitCode != 137 {
			t.Fatalf("end %+v", en)
		}
	case <-wctx.Done():
		t.Fatal("the Heptapod host's end was not reported")
	}
	if err := e.Decommission(ctx, adopted); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cli.ImageInspect(ctx, tag); !cerrdefs.IsNotFound(err) {
		t.Fatalf("Heptapod's job image left: %v", err)
	}

	// decommission of a running one, from the imported handle
	tag2 := heptapodHost(t, e, legacy, 123, "idle", true)
	h2, _ := json.Marshal(tag2)
	if err := e.Decommission(ctx, h2); err != nil {
		t.Fatal(err)
	}
	if st, _ := e.Inspect(ctx, h2); st.Exists {
		t.Fatalf("left after decommission: %+v", st)
	}
	if _, err := e.cli.ImageInspect(ctx, tag2); !cerrdefs.IsNotFound(err) {
		t.Fatalf("Heptapod's job image left: %v", err)
	}

	// a host that is gone (its image left, its --rm container not): the
	// job fails
	gone, _ := json.Marshal(heptapodHost(t, e, legacy, 122, "idle", false))
	jg := executors.Job{RunnerID: legacy, ID: 122, Payload: payload(122, "idle")}
	if st, err := e.Inspect(ctx, gone); err != nil || st.Exists {
		t.Fatalf("inspect a gone host: %+v %v", st, err)
	}
	if _, err := e.Launch(ctx, gone, jg); err == nil || !executors.IsPermanent(err) || !strings.Contains(err.Error(), "is gone") {
		t.Fatalf("launch of a gone host: %v", err)
	}
	if err := e.Decommission(ctx, gone); err != nil {
		t.Fatal(err)
	}

	// another runner's Heptapod host is not adopted
	foreign, _ := json.Marshal(fmt.Sprintf("hpd-job-other%s-124", testID(t, 3)))
	if _, err := e.Launch(ctx, foreign, executors.Job{ID: 124}); err == nil || !executors.IsPermanent(err) {
		t.Fatalf("launch of another runner's host: %v", err)
	}
}

func dockerSock() string {
	cli, err := localdockertest.Client()
	if err != nil {
		return ""
	}
	defer cli.Close()
	if !strings.HasPrefix(cli.DaemonHost(), "unix://") {
		return ""
	}
	return strings.TrimPrefix(cli.DaemonHost(), "unix://")
}

package localdocker

import (
	"context"
	"sync"
	"testing"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
)

// A daemon with several local-docker runners has one executor, so one
// baseImage, per runner; on the first jobs they all want the host image
// at once. It is made once: no second import leaves an untagged copy on
// the engine.
func TestBaseImageMadeOnceForSeveralRunners(t *testing.T) {
	needDocker(t)
	ctx := ctxT(t)
	cli, err := localdockertest.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	version := testVersion + "-once" // a tag no other test of this process makes
	label := "org.opencontainers.image.version=" + version
	t.Cleanup(func() { localdockertest.RemoveImagesLabelled(cli, label) })
	const runners = 4
	var wg sync.WaitGroup
	errs := make([]error, runners)
	for i := range runners {
		b := newBaseImage(cli, version, staticBin, "", zap.NewNop())
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = b.ensure(ctx) }()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	imgs, err := cli.ImageList(context.Background(), image.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", label))})
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 1 {
		var ids []string
		for _, im := range imgs {
			ids = append(ids, im.ID[:19]+" "+firstOr(im.RepoTags, "<untagged>"))
		}
		t.Fatalf("%d images of version %s on the engine, want 1: %v", len(imgs), version, ids)
	}
}

func firstOr(s []string, def string) string {
	if len(s) > 0 {
		return s[0]
	}
	return def
}

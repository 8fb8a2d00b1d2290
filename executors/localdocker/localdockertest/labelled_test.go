package localdockertest

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"
)

// Two runs' labelled busybox images are distinct images, each with its
// labels: removing one leaves the other whole.
func TestBuildBusyboxImageLabelled(t *testing.T) {
	cli, err := Client()
	if err != nil {
		if Required() {
			t.Fatalf("no Docker engine: %v", err)
		}
		t.Skip("no Docker engine")
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var ids []string
	for i := 0; i < 2; i++ {
		tag := fmt.Sprintf("paas-runner-test-labelled:%d-%d", os.Getpid(), i)
		run := fmt.Sprintf("%d-%d-%d", os.Getpid(), time.Now().UnixNano(), i)
		if err := BuildBusyboxImageLabelled(ctx, cli, tag, map[string]string{"paas-runner.test-run": run}); err != nil {
			t.Fatal(err)
		}
		defer RemoveImage(cli, tag)
		info, err := cli.ImageInspect(ctx, tag)
		if err != nil {
			t.Fatal(err)
		}
		if info.Config.Labels["paas-runner.test-run"] != run || info.Config.Labels["paas-runner.test"] != "true" {
			t.Errorf("labels %v", info.Config.Labels)
		}
		ids = append(ids, info.ID)
	}
	if ids[0] == ids[1] {
		t.Errorf("both builds made image %s", ids[0])
	}
}

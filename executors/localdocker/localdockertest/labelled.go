package localdockertest

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/docker/docker/client"
)

// BuildBusyboxImageLabelled is BuildBusyboxImage with labels of the
// caller's: an image whose labels are its own (say, a run's id) shares no
// layer cache and no image id with another's busybox image, so removing it
// never touches theirs.
func BuildBusyboxImageLabelled(ctx context.Context, cli *client.Client, tag string, labels map[string]string) error {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("busybox-static (Debian) is needed for the test job image: %w", err)
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var df strings.Builder
	df.WriteString("FROM scratch\n")
	for _, k := range keys {
		fmt.Fprintf(&df, "LABEL %q=%q\n", k, labels[k])
	}
	df.WriteString("COPY busybox /bin/sh\nCOPY busybox /bin/busybox\nLABEL paas-runner.test=true\n")
	return buildImage(ctx, cli, tag, map[string][]byte{"Dockerfile": []byte(df.String()), "busybox": bb})
}

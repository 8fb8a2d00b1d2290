package executors

import (
	"context"
	"strings"
	"testing"
)

// Executors that are no Weigher (local-docker) weigh 1 and know flavor M
// only, as Heptapod's.
func TestUnweightedExecutor(t *testing.T) {
	var ex Executor = struct{ Executor }{}
	if w, err := JobWeight(context.Background(), ex, Job{ID: 1}); w != 1 || err != nil {
		t.Fatalf("%v %v", w, err)
	}
	if w, err := FlavorWeight(context.Background(), ex, "M"); w != 1 || err != nil {
		t.Fatalf("%v %v", w, err)
	}
	if _, err := FlavorWeight(context.Background(), ex, "XL"); err == nil || !strings.Contains(err.Error(), `flavor "XL" is unknown`) {
		t.Fatalf("%v", err)
	}
}

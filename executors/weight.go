package executors

import (
	"context"
	"fmt"
)

// Weigher is implemented by executors whose hosts differ in size (PaaS
// flavors). Weights are Heptapod PAAS Runner's: (memory in GiB)^1.25 of the
// host's flavor, so that 16 times the memory counts 32 times. The weighted
// quota (quota_computation) caps the sum of the weights of the jobs in the
// daemon's care.
type Weigher interface {
	// Weight is the weight of the host job would get. A job asking for a
	// flavor it may not have fails with a permanent *Error.
	Weight(ctx context.Context, j Job) (float64, error)
	// FlavorWeight is the weight of the named flavor (the reference flavor
	// of quota_computation).
	FlavorWeight(ctx context.Context, flavor string) (float64, error)
}

// UnweightedFlavor is the only flavor of executors that are no Weigher,
// weighing 1, as Heptapod's local-docker (available_flavors = {M: 1}).
const UnweightedFlavor = "M"

// JobWeight is the weight of j's host on ex: 1 unless ex is a Weigher.
func JobWeight(ctx context.Context, ex Executor, j Job) (float64, error) {
	if w, ok := ex.(Weigher); ok {
		return w.Weight(ctx, j)
	}
	return 1, nil
}

// FlavorWeight is the weight of flavor on ex: for an executor that is no
// Weigher, 1 for UnweightedFlavor, an error for any other name.
func FlavorWeight(ctx context.Context, ex Executor, flavor string) (float64, error) {
	if w, ok := ex.(Weigher); ok {
		return w.FlavorWeight(ctx, flavor)
	}
	if flavor != UnweightedFlavor {
		return 0, fmt.Errorf("flavor %q is unknown: this executor has hosts of one size, flavor %s, weighing 1", flavor, UnweightedFlavor)
	}
	return 1, nil
}

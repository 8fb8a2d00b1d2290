package cleverdocker

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"gitlab.com/paas-runner/paas-runner/executors"
	"gitlab.com/paas-runner/paas-runner/job"
)

var _ executors.Weigher = (*Executor)(nil)

// Weight is the weight of the flavor the job would get (its
// CI_CLEVER_CLOUD_FLAVOR, else cc_default_flavor), from the cached
// products. A flavor that is unknown or above cc_max_flavor fails the job
// as provisioning would.
func (e *Executor) Weight(ctx context.Context, j executors.Job) (float64, error) {
	var p struct {
		Variables job.Variables `json:"variables"`
	}
	if len(j.Payload) > 0 {
		if err := json.Unmarshal(j.Payload, &p); err != nil {
			return 0, executors.Permanent("weigh", fmt.Errorf("job payload: %w", err))
		}
	}
	f, _, err := e.flavorFor(ctx, firstNonEmpty(p.Variables.Get(FlavorVariable), e.opts.DefaultFlavor))
	if err != nil {
		return 0, err
	}
	return f.weight(), nil
}

// FlavorWeight is the weight of the named flavor (short name: M, XL).
func (e *Executor) FlavorWeight(ctx context.Context, name string) (float64, error) {
	p, err := e.products(ctx, false)
	if err != nil {
		return 0, err
	}
	f, ok := p.flavors[name]
	if !ok {
		return 0, fmt.Errorf("flavor %q is not an available flavor (available: %s)", name, strings.Join(p.names(""), ", "))
	}
	return f.weight(), nil
}

package cleverdocker

import (
	"math"
	"strings"
	"testing"

	"gitlab.com/paas-runner/paas-runner/executors"
)

// Weights are Heptapod's (mem_GiB)^1.25 of the products' flavors: M (8 GiB)
// about 13.45, S (4 GiB) about 5.66; the default flavor when the job names
// none; the products are fetched once for all of it.
func TestWeightFromFlavors(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.MaxFlavor = "XL" })
	var ex executors.Executor = f.e
	for _, c := range []struct {
		vars []string
		want float64
	}{
		{nil, 13.4543}, // cc_default_flavor M
		{[]string{"CI_CLEVER_CLOUD_FLAVOR", "S"}, 5.6569},  // 4^1.25
		{[]string{"CI_CLEVER_CLOUD_FLAVOR", "XS"}, 2.3784}, // 2^1.25
		{[]string{"CI_CLEVER_CLOUD_FLAVOR", "XL"}, 76.1093},
	} {
		w, err := executors.JobWeight(ctx(t), ex, testJob(9, c.vars...))
		if err != nil || math.Abs(w-c.want) > 1e-3 {
			t.Fatalf("%v: weight %v, %v; want %v", c.vars, w, err, c.want)
		}
	}
	if w, err := executors.FlavorWeight(ctx(t), ex, "L"); err != nil || math.Abs(w-32) > 1e-9 {
		t.Fatalf("L: %v %v", w, err) // 16^1.25 = 32
	}
	// a flavor the job may not have fails it as provisioning would
	_, err := executors.JobWeight(ctx(t), ex, testJob(9, "CI_CLEVER_CLOUD_FLAVOR", "2XL"))
	if err == nil || !executors.IsPermanent(err) || executors.FailureReason(err) != "script_failure" || !strings.Contains(err.Error(), "bigger than this runner's maximum XL") {
		t.Fatalf("2XL: %v", err)
	}
	if _, err := executors.FlavorWeight(ctx(t), ex, "XXS"); err == nil || !strings.Contains(err.Error(), `flavor "XXS" is not an available flavor (available: XS, S, M, L, XL, 2XL, 3XL)`) {
		t.Fatalf("XXS: %v", err)
	}
	if n := f.s.Count("GET /products/flavors"); n != 1 {
		t.Fatalf("flavors fetched %d times", n)
	}
}

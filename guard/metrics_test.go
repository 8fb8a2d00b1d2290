package guard

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestMetricsAndReport(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	get(t, e.admit(ctx, &tjob{id: 1, pipeline: 1, vars: map[string]string{VarLock: "production", VarPool: "aws"}}))
	j2 := &tjob{id: 2, pipeline: 2, vars: map[string]string{VarLock: "production"}}
	ch := e.admit(ctx, j2)
	e.waitFor("2 waiting", waiting(1))
	waitLine(t, j2, "waiting for lock production")
	reg := prometheus.NewPedanticRegistry()
	for _, c := range e.m.Collectors() {
		reg.MustRegister(c)
	}
	got := gather(t, reg)
	for _, want := range []string{
		`paas_runner_guard_held{guard="lock:acme/web:production"} 1`,
		`paas_runner_guard_held{guard="pool:aws"} 1`,
		`paas_runner_guard_waiting_jobs{guard="lock:acme/web:production"} 1`,
		`resource_pool_num_available_locks{branch="local",pool="aws"} 1`,
		`resource_pool_num_claimed_locks{branch="local",pool="aws"} 1`,
	} {
		if !contains(got, want) {
			t.Errorf("metrics lack %s: %v", want, got)
		}
	}
	rec := httptest.NewRecorder()
	e.m.DebugHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/locks", nil))
	var r Report
	if err := json.Unmarshal(rec.Body.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Holders) != 2 || len(r.Waiters) != 1 || r.Waiters[0].Job.JobID != 2 || r.Waiters[0].Position != 1 || r.Pools[0].Available != 1 {
		t.Fatalf("%s", rec.Body)
	}
	if strings.Contains(rec.Body.String(), "tok") {
		t.Fatal("a token in the report")
	}
	e.m.Release("runner1", 1)
	get(t, ch)
	if got := gather(t, reg); !contains(got, `paas_runner_guard_wait_seconds{guard="lock:acme/web:production"}_count 1`) {
		t.Fatalf("wait histogram: %v", got)
	}
}

// gather renders metrics as "name{labels} value" lines.
func gather(t *testing.T, reg *prometheus.Registry) []string {
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			var labels []string
			for _, l := range m.Label {
				labels = append(labels, l.GetName()+"=\""+l.GetValue()+"\"")
			}
			name := mf.GetName()
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			switch mf.GetType() {
			case dto.MetricType_GAUGE:
				out = append(out, name+" "+strconv.FormatFloat(m.Gauge.GetValue(), 'g', -1, 64))
			case dto.MetricType_HISTOGRAM:
				out = append(out, name+"_count "+strconv.FormatUint(m.Histogram.GetSampleCount(), 10))
			}
		}
	}
	return out
}

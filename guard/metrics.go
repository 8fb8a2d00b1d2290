package guard

import (
	"encoding/json"
	"net/http"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	waitingDesc = prometheus.NewDesc("paas_runner_guard_waiting_jobs",
		"Jobs of this daemon waiting for a guard (a job waiting for two locks counts on both).", []string{"guard"}, nil)
	heldDesc = prometheus.NewDesc("paas_runner_guard_held",
		"Locks held by jobs of this daemon.", []string{"guard"}, nil)
	availableDesc = prometheus.NewDesc("resource_pool_num_available_locks",
		"Unclaimed locks of a pool (pool-resource's metric).", []string{"pool", "branch"}, nil)
	claimedDesc = prometheus.NewDesc("resource_pool_num_claimed_locks",
		"Claimed locks of a pool (pool-resource's metric).", []string{"pool", "branch"}, nil)
)

type collector struct{ m *Manager }

// Collectors are the guard metrics: the manager's gauges and the shared
// waiting machinery's histogram.
func (m *Manager) Collectors() []prometheus.Collector {
	return append([]prometheus.Collector{collector{m}}, m.core.Collectors()...)
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- waitingDesc
	ch <- heldDesc
	ch <- availableDesc
	ch <- claimedDesc
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	st, _ := c.m.Snapshot()
	me := c.m.opt.Daemon
	waiting, held := map[string]int{}, map[string]int{}
	for _, w := range st.Waiters {
		if w.Daemon != me || w.SupersededBy != 0 {
			continue
		}
		for _, d := range w.Demands {
			waiting[GuardLabel(d.Pool)]++
		}
	}
	branch := c.m.be.Branch()
	for _, pn := range sortedKeys(st.Pools) {
		p := st.Pools[pn]
		claimed := 0
		for _, l := range p.Locks {
			if l.Holder == nil {
				continue
			}
			claimed++
			if l.Holder.Daemon == me {
				held[GuardLabel(pn)]++
			}
		}
		if !IsMutex(pn) {
			ch <- prometheus.MustNewConstMetric(availableDesc, prometheus.GaugeValue, float64(len(p.Locks)-claimed), pn, branch)
			ch <- prometheus.MustNewConstMetric(claimedDesc, prometheus.GaugeValue, float64(claimed), pn, branch)
		}
	}
	for g, n := range waiting {
		ch <- prometheus.MustNewConstMetric(waitingDesc, prometheus.GaugeValue, float64(n), g)
	}
	for g, n := range held {
		ch <- prometheus.MustNewConstMetric(heldDesc, prometheus.GaugeValue, float64(n), g)
	}
}

// Report is what `paas-runner locks` and GET /debug/locks show: holders,
// waiters in decision order, leases. No tokens are ever in the state.
type Report struct {
	Backend string       `json:"backend"`
	Holders []HolderInfo `json:"holders"`
	Waiters []WaiterInfo `json:"waiters"`
	Pools   []PoolInfo   `json:"pools"`
}

// WaiterInfo is one waiting job.
type WaiterInfo struct {
	Position     int       `json:"position"`
	Job          JobRef    `json:"job"`
	Wants        []string  `json:"wants"`
	Mode         Mode      `json:"mode"`
	Since        time.Time `json:"since"`
	Deadline     time.Time `json:"deadline"`
	SupersededBy int64     `json:"superseded_by,omitempty"`
}

// PoolInfo is one admin pool.
type PoolInfo struct {
	Name      string `json:"name"`
	Locks     int    `json:"locks"`
	Available int    `json:"available"`
}

// Report describes the current state.
func (m *Manager) Report() Report {
	st, dec := m.Snapshot()
	return buildReport(st, dec, m.be.Branch())
}

func buildReport(st *State, dec *Decision, backend string) Report {
	r := Report{Backend: backend, Holders: holders(st), Waiters: []WaiterInfo{}, Pools: []PoolInfo{}}
	if r.Holders == nil {
		r.Holders = []HolderInfo{}
	}
	pos := map[string]int{}
	for i, k := range dec.Order {
		pos[k] = i + 1
	}
	for _, w := range st.Waiters {
		wi := WaiterInfo{Position: pos[w.Key()], Job: w.JobRef, Mode: dec.Status[w.Key()].Mode, Since: w.Since, Deadline: w.Deadline, SupersededBy: w.SupersededBy}
		for _, d := range w.Demands {
			s := GuardLabel(d.Pool)
			if d.Lock != "" && !IsMutex(d.Pool) {
				s += "/" + d.Lock
			}
			wi.Wants = append(wi.Wants, s)
		}
		r.Waiters = append(r.Waiters, wi)
	}
	sort.SliceStable(r.Waiters, func(i, j int) bool {
		a, b := r.Waiters[i], r.Waiters[j]
		if (a.Position == 0) != (b.Position == 0) {
			return b.Position == 0
		}
		return a.Position < b.Position
	})
	for _, pn := range sortedKeys(st.Pools) {
		if IsMutex(pn) {
			continue
		}
		pi := PoolInfo{Name: pn, Locks: len(st.Pools[pn].Locks)}
		for _, l := range st.Pools[pn].Locks {
			if l.Holder == nil {
				pi.Available++
			}
		}
		r.Pools = append(r.Pools, pi)
	}
	return r
}

// DebugHandler serves the report as JSON (GET /debug/locks).
func (m *Manager) DebugHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "GET only", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(m.Report())
	})
}

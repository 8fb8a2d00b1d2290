package guard

import (
	"encoding/json"
	"net/http"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	availableDesc = prometheus.NewDesc("resource_pool_num_available_locks",
		"Unclaimed locks of a pool (pool-resource's metric).", []string{"pool", "branch"}, nil)
	claimedDesc = prometheus.NewDesc("resource_pool_num_claimed_locks",
		"Claimed locks of a pool (pool-resource's metric).", []string{"pool", "branch"}, nil)
)

type collector struct{ m *Manager }

// Collectors are the guard metrics: pool-resource's pool gauges and the
// shared waiting machinery's (to register once per daemon, even when
// several kinds of guard share the Core).
func (m *Manager) Collectors() []prometheus.Collector {
	return append([]prometheus.Collector{collector{m}}, m.core.Collectors()...)
}

// counts is this daemon's waiting jobs and held locks by guard label (a
// Source of the Core).
func (m *Manager) counts() (waiting, held map[string]int) {
	st, _ := m.Snapshot()
	me := m.opt.Daemon
	waiting, held = map[string]int{}, map[string]int{}
	for _, w := range st.Waiters {
		if w.Daemon != me || w.SupersededBy != 0 {
			continue
		}
		for _, d := range w.Demands {
			waiting[GuardLabel(d.Pool)]++
		}
	}
	for pn, p := range st.Pools {
		for _, l := range p.Locks {
			if l.Holder != nil && l.Holder.JobID != 0 && l.Holder.Daemon == me {
				held[GuardLabel(pn)]++
			}
		}
	}
	return waiting, held
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- availableDesc
	ch <- claimedDesc
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	c.m.freshen() // for the next scrape
	st, _ := c.m.Snapshot()
	branch := c.m.be.Branch()
	for _, pn := range sortedKeys(st.Pools) {
		if IsMutex(pn) {
			continue
		}
		p := st.Pools[pn]
		claimed := 0
		for _, l := range p.Locks {
			if l.Holder != nil {
				claimed++
			}
		}
		ch <- prometheus.MustNewConstMetric(availableDesc, prometheus.GaugeValue, float64(len(p.Locks)-claimed), pn, branch)
		ch <- prometheus.MustNewConstMetric(claimedDesc, prometheus.GaugeValue, float64(claimed), pn, branch)
	}
}

// Report is what `paas-runner locks` and GET /debug/locks show: holders,
// waiters in decision order, leases. No tokens are ever in the state.
type Report struct {
	// Backend is "local" or "git"; Branch the git backend's branch.
	Backend string       `json:"backend"`
	Branch  string       `json:"branch,omitempty"`
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

// Report describes the current state (as last read; a shared store is
// read again in the background when that is older than Refresh).
func (m *Manager) Report() Report {
	m.freshen()
	st, dec := m.Snapshot()
	return buildReport(st, dec, m.pol(), m.be.Branch())
}

// buildReport: pol tells the backend (Declared: the local one), branch is
// the git backend's.
func buildReport(st *State, dec *Decision, pol *Policy, branch string) Report {
	r := Report{Backend: "git", Branch: branch, Holders: holders(st), Waiters: []WaiterInfo{}, Pools: []PoolInfo{}}
	if pol.Declared {
		r.Backend, r.Branch = "local", ""
	}
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

package dispatcher

import (
	"fmt"
	"time"
)

// Tuning is what a configuration reload changes while jobs run. Jobs,
// hosts, guards and waits are untouched.
type Tuning struct {
	Concurrent    int
	CheckInterval time.Duration
	TrackingRPS   float64
	// Limits by runner ID; a runner not listed keeps its limit.
	Limits map[string]int
}

// Retune applies t. Lowering concurrent or a limit below the jobs in
// flight takes no job away: acquisition waits until they end.
func (d *Dispatcher) Retune(t Tuning) error {
	if t.Concurrent <= 0 || t.CheckInterval <= 0 || t.TrackingRPS <= 0 {
		return fmt.Errorf("concurrent, check_interval and the tracking rate must be positive")
	}
	for id, l := range t.Limits {
		if _, ok := d.runners[id]; !ok {
			return fmt.Errorf("no runner %s", id)
		}
		if l < 0 {
			return fmt.Errorf("runner %s: negative limit", id)
		}
	}
	d.mu.Lock()
	d.cfg.Concurrent = t.Concurrent
	d.cfg.CheckInterval = t.CheckInterval
	d.cfg.TrackingRPS = t.TrackingRPS
	for id, l := range t.Limits {
		d.runners[id].Limit = l
	}
	d.signalLocked() // a raised limit frees slots now
	d.mu.Unlock()
	d.tracker.mu.Lock()
	ln := d.tracker.lanes[pollLane]
	ln.interval = t.CheckInterval
	ln.spacing = time.Duration(float64(time.Second) / t.TrackingRPS)
	d.tracker.signalLocked()
	d.tracker.mu.Unlock()
	return nil
}

func (d *Dispatcher) checkInterval() time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg.CheckInterval
}

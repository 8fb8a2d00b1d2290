package guard

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The waiting machinery every kind of guard shares (locks and pools here;
// pipeline conflicts next): it asks the guard whether the job may go on,
// writes the job log line when the reason changes and at least every
// LogEvery, gives the job's slots back before it blocks, and ends the wait
// on success, verdict, no-wait, timeout or cancellation.

// LogEvery is the longest time a waiting job's log goes without a line.
var LogEvery = time.Minute

// Check is one evaluation of a guard for a waiting job. done: the job may
// go on. Otherwise line is shown in the job log and key identifies the
// situation (line without its clock), so that only changes are logged.
// A non-nil err ends the wait with that error (superseded, …).
type Check func(ctx context.Context) (done bool, line, key string, err error)

// Wait describes one job's wait.
type Wait struct {
	// Guard names the kind of guard in messages ("lock", "pipelines").
	Guard string
	// Labels are the guards the job waits for, as the gauges' guard label
	// (lock:…, pool:…, pipelines:…): a blocked wait is observed in the
	// wait histogram once under each.
	Labels []string
	// Passed is the log line's start when the job goes on ("" = "<Guard>
	// acquired").
	Passed string
	// Since is when the wait started (kept across restarts), Deadline when
	// it fails; zero: no deadline.
	Since, Deadline time.Time
	NoWait          bool
	// Log writes one line to the job's log.
	Log func(line string)
	// Blocking is called once, before the first block (the dispatcher
	// then frees the job's slots). May be nil.
	Blocking func()
	// Changed returns a channel closed at the next change worth a new check.
	Changed func() <-chan struct{}
	Check   Check
}

// Core holds the waiting metrics. Each kind of guard adds a Source; the
// core serves paas_runner_guard_waiting_jobs{guard} and
// paas_runner_guard_held{guard} for all of them, and the wait histogram.
type Core struct {
	waitSeconds *prometheus.HistogramVec

	mu      sync.Mutex
	sources []Source
}

// Source reports one kind of guard's current counts by guard label.
type Source func() (waiting, held map[string]int)

// AddSource adds a kind of guard to the gauges.
func (c *Core) AddSource(s Source) {
	c.mu.Lock()
	c.sources = append(c.sources, s)
	c.mu.Unlock()
}

var (
	waitingDesc = prometheus.NewDesc("paas_runner_guard_waiting_jobs",
		"Jobs of this daemon waiting for a guard (a job waiting for two locks counts on both).", []string{"guard"}, nil)
	heldDesc = prometheus.NewDesc("paas_runner_guard_held",
		"Locks held by jobs of this daemon.", []string{"guard"}, nil)
)

type coreGauges struct{ c *Core }

func (g coreGauges) Describe(ch chan<- *prometheus.Desc) {
	ch <- waitingDesc
	ch <- heldDesc
}

func (g coreGauges) Collect(ch chan<- prometheus.Metric) {
	g.c.mu.Lock()
	sources := append([]Source(nil), g.c.sources...)
	g.c.mu.Unlock()
	waiting, held := map[string]int{}, map[string]int{}
	for _, s := range sources {
		w, h := s()
		for k, n := range w {
			waiting[k] += n
		}
		for k, n := range h {
			held[k] += n
		}
	}
	for k, n := range waiting {
		ch <- prometheus.MustNewConstMetric(waitingDesc, prometheus.GaugeValue, float64(n), k)
	}
	for k, n := range held {
		ch <- prometheus.MustNewConstMetric(heldDesc, prometheus.GaugeValue, float64(n), k)
	}
}

// NewCore makes the shared waiting machinery.
func NewCore() *Core {
	return &Core{waitSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "paas_runner", Name: "guard_wait_seconds",
		Help:    "Time jobs waited for a guard before they went on or were failed, by guard (a job waiting for two locks counts on both); jobs that did not wait are not counted.",
		Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200},
	}, []string{"guard"})}
}

// Collectors are the core's metrics.
func (c *Core) Collectors() []prometheus.Collector {
	return []prometheus.Collector{c.waitSeconds, coreGauges{c}}
}

// WaitError is a wait that ended without the guard letting the job go on.
type WaitError struct {
	Reason string // timeout, no_wait, superseded, declaration
	Msg    string
}

func (e *WaitError) Error() string { return e.Msg }

// FailureReason is GitLab's failure_reason for the job.
func (e *WaitError) FailureReason() string {
	if e.Reason == "timeout" {
		return "stuck_or_timeout_failure"
	}
	return "script_failure"
}

// Wait blocks until the check says done, or the wait ends otherwise.
func (c *Core) Wait(ctx context.Context, w Wait) error {
	var lastKey string
	var lastLog time.Time
	blocked := false
	defer func() {
		if blocked {
			waited := time.Since(w.Since).Seconds()
			for _, l := range w.Labels {
				c.waitSeconds.WithLabelValues(l).Observe(waited)
			}
		}
	}()
	for {
		changed := w.Changed()
		done, line, key, err := w.Check(ctx)
		if err != nil {
			return err
		}
		now := time.Now()
		if done {
			if blocked || now.Sub(w.Since) > time.Second {
				passed := w.Passed
				if passed == "" {
					passed = w.Guard + " acquired"
				}
				w.Log(fmt.Sprintf("paas-runner: %s after %s", passed, now.Sub(w.Since).Truncate(time.Second)))
			}
			return nil
		}
		if w.NoWait {
			return &WaitError{Reason: "no_wait", Msg: fmt.Sprintf("%s not free and PAAS_LOCK_NO_WAIT is set: %s", w.Guard, line)}
		}
		if !w.Deadline.IsZero() && !now.Before(w.Deadline) {
			return &WaitError{Reason: "timeout", Msg: fmt.Sprintf("gave up after waiting %s (timeout %s): still %s",
				now.Sub(w.Since).Truncate(time.Second), w.Deadline.Sub(w.Since), line)}
		}
		if !blocked {
			blocked = true
			if w.Blocking != nil {
				w.Blocking()
			}
		}
		if key != lastKey || now.Sub(lastLog) >= LogEvery {
			w.Log("paas-runner: " + line)
			lastKey, lastLog = key, now
		}
		next := lastLog.Add(LogEvery)
		if !w.Deadline.IsZero() && w.Deadline.Before(next) {
			next = w.Deadline
		}
		t := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-changed:
		case <-t.C:
		}
		t.Stop()
	}
}

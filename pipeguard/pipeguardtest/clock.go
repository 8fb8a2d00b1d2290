// Package pipeguardtest has test helpers for pipeline guards: a manual
// clock that lets a test or benchmark run hours of polling in no time.
package pipeguardtest

import (
	"sort"
	"sync"
	"time"
)

// Clock is a manual clock: time moves only with Advance. It implements
// pipeguard.Clock.
type Clock struct {
	mu      sync.Mutex
	now     time.Time
	timers  []*timer
	changed chan struct{}
}

type timer struct {
	at time.Time
	ch chan time.Time
}

// NewClock starts at a fixed instant.
func NewClock() *Clock {
	return &Clock{now: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC), changed: make(chan struct{})}
}

// Now is the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// After fires once the clock has been advanced by d.
func (c *Clock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &timer{at: c.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.ch <- c.now
		return t.ch
	}
	c.timers = append(c.timers, t)
	c.notify()
	return t.ch
}

func (c *Clock) notify() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// Pending is the number of timers not fired yet.
func (c *Clock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// WaitPending blocks until at least n timers are pending (goroutines are
// asleep on the clock), or timeout passes (then it returns false).
func (c *Clock) WaitPending(n int, timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		ok := len(c.timers) >= n
		ch := c.changed
		c.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-ch:
		case <-deadline.C:
			return false
		}
	}
}

// Next is how far the earliest pending timer is (0 when none).
func (c *Clock) Next() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.timers) == 0 {
		return 0
	}
	next := c.timers[0].at
	for _, t := range c.timers {
		if t.at.Before(next) {
			next = t.at
		}
	}
	return next.Sub(c.now)
}

// Advance moves the clock by d and fires the timers that are due, in
// order. It returns how many fired.
func (c *Clock) Advance(d time.Duration) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	sort.SliceStable(c.timers, func(i, j int) bool { return c.timers[i].at.Before(c.timers[j].at) })
	kept := c.timers[:0]
	fired := 0
	for _, t := range c.timers {
		if !t.at.After(c.now) {
			t.ch <- c.now
			fired++
		} else {
			kept = append(kept, t)
		}
	}
	c.timers = kept
	c.notify()
	return fired
}

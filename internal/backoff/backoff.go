// Package backoff computes exponential waits with jitter.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Policy doubles from Min up to Max.
type Policy struct {
	Min, Max time.Duration
}

// Wait is the wait before retry number attempt (0-based): a random
// duration in [d/2, d], where d = Min·2^attempt capped at Max.
func (p Policy) Wait(attempt int) time.Duration {
	d := p.Min
	for i := 0; i < attempt && d < p.Max; i++ {
		d *= 2
	}
	d = min(d, p.Max)
	if d <= 1 {
		return d
	}
	half := d / 2
	return half + time.Duration(rand.Int64N(int64(half)+1))
}

// Sleep waits d, or less when ctx ends first (then it returns ctx's error).
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

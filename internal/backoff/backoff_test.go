package backoff

import (
	"testing"
	"time"
)

func TestWaitBounds(t *testing.T) {
	p := Policy{Min: 100 * time.Millisecond, Max: time.Second}
	for i := 0; i < 30; i++ {
		w := p.Wait(i)
		hi := min(100*time.Millisecond<<min(i, 10), time.Second)
		if w < hi/2 || w > hi {
			t.Fatalf("attempt %d: %v not in [%v, %v]", i, w, hi/2, hi)
		}
	}
}

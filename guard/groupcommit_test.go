package guard

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

// gatedBackend holds its next Update until gate is closed.
type gatedBackend struct {
	*Local
	entered chan struct{}
	gate    chan struct{}
}

func (g *gatedBackend) Update(ctx context.Context, fn func(*State) bool) (*State, error) {
	if g.gate != nil {
		close(g.entered)
		<-g.gate
		g.gate = nil // only the first (Updates are serialised)
	}
	return g.Local.Update(ctx, fn)
}

// Updates asked for while one is being made durable are made together: ten
// jobs registering as waiters while a release is in flight are one more
// write, not ten; each gets its answer.
func TestGroupCommit(t *testing.T) {
	l, err := OpenLocal(filepath.Join(t.TempDir(), "guards.json"), nil)
	if err != nil {
		t.Fatal(err)
	}
	be := &gatedBackend{Local: l}
	m, err := NewManager(context.Background(), be, Options{Daemon: "r_test", Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var chans []<-chan result
	defer func() { // the waiters left end before the next test
		cancel()
		for i, ch := range chans {
			if i > 0 { // chans[0] was read
				<-ch
			}
		}
	}()
	holder := &tjob{id: 1, pipeline: 1, timeout: 3600, vars: map[string]string{VarLock: "production"}}
	if _, err := m.Admit(ctx, "runner1", holder.acquired(t), holder.logf, nil); err != nil {
		t.Fatal(err)
	}
	be.entered, be.gate = make(chan struct{}), make(chan struct{})
	released := make(chan struct{})
	go func() { m.Release("runner1", 1); close(released) }()
	<-be.entered // the release is being written
	before := l.Writes()
	for i := int64(2); i <= 11; i++ {
		j := &tjob{id: i, pipeline: i, timeout: 3600, vars: map[string]string{VarLock: "production"}}
		ch := make(chan result, 1)
		a := j.acquired(t)
		go func() {
			vs, err := m.Admit(ctx, "runner1", a, j.logf, nil)
			ch <- result{vs, err}
		}()
		chans = append(chans, ch)
	}
	for deadline := time.Now().Add(patience); ; {
		m.qmu.Lock()
		n := len(m.queue)
		m.qmu.Unlock()
		if n == 10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d registrations queued", n)
		}
		time.Sleep(time.Millisecond) // goroutines reaching the queue
	}
	close(be.gate)
	<-released
	// the first registration is granted the lock; the others wait
	if r := get(t, chans[0]); r.err != nil {
		t.Fatal(r.err)
	}
	if w := l.Writes() - before; w != 2 {
		t.Fatalf("%d writes for a release and ten registrations, want 2", w)
	}
	st, _ := m.Snapshot()
	if len(st.Waiters) != 9 {
		t.Fatalf("%d waiters, want 9", len(st.Waiters))
	}
}

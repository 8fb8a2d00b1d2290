package guard

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Another kind of guard (the pipeline-conflict guard) waits through the
// same machinery: its own check and change signal, the same log lines and
// metrics.
func TestCoreWaitsForAnotherKindOfGuard(t *testing.T) {
	c := NewCore()
	var mu sync.Mutex
	conflicts := 2
	changed := make(chan struct{})
	c.AddSource(func() (map[string]int, map[string]int) {
		return map[string]int{"pipelines:acme/web": 1}, nil
	})
	var lines []string
	blocked := 0
	done := make(chan error, 1)
	go func() {
		done <- c.Wait(context.Background(), Wait{
			Guard: "pipelines", Labels: []string{"pipelines:acme/web"}, Since: time.Now(), Deadline: time.Now().Add(time.Hour),
			Log:      func(l string) { mu.Lock(); lines = append(lines, l); mu.Unlock() },
			Blocking: func() { blocked++ },
			Changed:  func() <-chan struct{} { mu.Lock(); defer mu.Unlock(); return changed },
			Check: func(context.Context) (bool, string, string, error) {
				mu.Lock()
				defer mu.Unlock()
				if conflicts == 0 {
					return true, "", "", nil
				}
				return false, "waiting for pipelines (" + strings.Repeat("#", conflicts) + ")", strings.Repeat("#", conflicts), nil
			},
		})
	}()
	step := func(n int) {
		mu.Lock()
		conflicts = n
		close(changed)
		changed = make(chan struct{})
		mu.Unlock()
	}
	waitFor := func(want string) {
		for deadline := time.Now().Add(patience); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			mu.Lock()
			l := strings.Join(lines, "\n")
			mu.Unlock()
			if strings.Contains(l, want) {
				return
			}
		}
		t.Fatalf("log lacks %q: %q", want, lines)
	}
	waitFor("paas-runner: waiting for pipelines (##)")
	step(1)
	waitFor("paas-runner: waiting for pipelines (#)")
	step(0)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if blocked != 1 {
		t.Fatalf("blocking called %d times", blocked)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c.Collectors()...)
	got := gather(t, reg)
	if !contains(got, `paas_runner_guard_waiting_jobs{guard="pipelines:acme/web"} 1`) || !contains(got, `paas_runner_guard_wait_seconds{guard="pipelines:acme/web"}_count 1`) {
		t.Fatalf("%v", got)
	}
	// timeout and no-wait
	err := c.Wait(context.Background(), Wait{Guard: "pipelines", Since: time.Now().Add(-2 * time.Second), Deadline: time.Now(),
		Log: func(string) {}, Changed: func() <-chan struct{} { return nil },
		Check: func(context.Context) (bool, string, string, error) { return false, "conflicting pipeline #9", "9", nil }})
	var we *WaitError
	if !errors.As(err, &we) || we.Reason != "timeout" || !strings.Contains(err.Error(), "still conflicting pipeline #9") {
		t.Fatalf("%v", err)
	}
}

package coordinatortest

import (
	"fmt"
	"os"
	"sync"
)

// Program is a TB for programs that run the fake GitLab outside tests
// (bench/, the demo): Fatalf prints, runs the cleanups and exits 1.
type Program struct {
	mu       sync.Mutex
	cleanups []func()
}

// Helper does nothing.
func (*Program) Helper() {}

// Fatalf reports a fatal error and exits.
func (p *Program) Fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	p.Close()
	os.Exit(1)
}

// Cleanup registers f to run at Close, last registered first.
func (p *Program) Cleanup(f func()) {
	p.mu.Lock()
	p.cleanups = append(p.cleanups, f)
	p.mu.Unlock()
}

// Close runs the cleanups once.
func (p *Program) Close() {
	p.mu.Lock()
	fs := p.cleanups
	p.cleanups = nil
	p.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

package guard

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

// countingBackend counts the backend updates (each a fetch at least with
// the git backend).
type countingBackend struct {
	Backend
	updates atomic.Int64
}

func (c *countingBackend) Update(ctx context.Context, fn func(*State) bool) (*State, error) {
	c.updates.Add(1)
	return c.Backend.Update(ctx, fn)
}

// With the git backend, a job that declared no guard costs no round trip
// to the repository when it ends; a job that held a lock is released
// there.
func TestGitReleaseOnlyJobsWithGuards(t *testing.T) {
	g := newGitEnv(t, map[string]string{"README.md": "locks\n"})
	ctx := context.Background()
	gb, err := OpenGit(ctx, GitOptions{URL: g.url, Branch: "main", Username: "locks-bot", Password: "s3cret", RetryDelay: 5 * time.Millisecond, Daemon: "r_aaaaaaaaaaaa"})
	if err != nil {
		t.Fatal(err)
	}
	be := &countingBackend{Backend: gb}
	m, err := NewManager(ctx, be, Options{Daemon: "r_aaaaaaaaaaaa", Policy: &Policy{DefaultMode: OldestFirst},
		Refresh: time.Hour, AsyncRelease: true, Logger: zaptest.NewLogger(t)}) // no refresh: only the jobs' updates
	if err != nil {
		t.Fatal(err)
	}
	plain := &tjob{id: 1, pipeline: 1, timeout: 3600}
	if vs, err := m.Admit(ctx, "runner1", plain.acquired(t), plain.logf, nil); err != nil || vs != nil {
		t.Fatalf("a job without guards: %v %v", vs, err)
	}
	before := be.updates.Load()
	m.Release("runner1", 1)
	m.Wait()
	if n := be.updates.Load() - before; n != 0 {
		t.Fatalf("the end of a job without guards made %d updates of the lock repository", n)
	}

	locked := &tjob{id: 2, pipeline: 2, timeout: 3600, vars: map[string]string{VarLock: "x"}}
	if _, err := m.Admit(ctx, "runner1", locked.acquired(t), locked.logf, nil); err != nil {
		t.Fatal(err)
	}
	key := JobRef{Daemon: "r_aaaaaaaaaaaa", Runner: "runner1", JobID: 2}.Key()
	if st, _ := m.Snapshot(); len(st.HeldBy(key)) != 1 {
		t.Fatalf("job 2 holds %v", st.HeldBy(key))
	}
	before = be.updates.Load()
	m.Release("runner1", 2)
	m.Wait()
	if be.updates.Load() == before {
		t.Fatal("the end of a job holding a lock made no update")
	}
	if tree := g.show("ls-tree", "-r", "--name-only", "main"); tree != "README.md\n" {
		t.Fatalf("job 2's lock left in the repository:\n%s", tree)
	}
}

// A repository with only a README: a project lock taken then released
// leaves it as it was, and the next job takes the lock again (the
// directories the release emptied are not read as a foreign layout).
func TestGitLockAgainAfterItsDirectoryWentAway(t *testing.T) {
	g := newGitEnv(t, map[string]string{"README.md": "locks\n"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := g.daemon("r_aaaaaaaaaaaa", ctx)
	first := &tjob{id: 1, pipeline: 1, timeout: 3600, vars: map[string]string{VarLock: "x"}}
	if r := get(t, d.admit(t, ctx, first)); r.err != nil {
		t.Fatal(r.err)
	}
	d.m.Release("runner1", 1)
	if tree := g.show("ls-tree", "-r", "--name-only", "main"); tree != "README.md\n" {
		t.Fatalf("the released lock left in the repository:\n%s", tree)
	}
	again := &tjob{id: 2, pipeline: 2, timeout: 3600, vars: map[string]string{VarLock: "x"}}
	if r := get(t, d.admit(t, ctx, again)); r.err != nil {
		t.Fatalf("the next job: %v (%v)", r.err, again.lines())
	}
}

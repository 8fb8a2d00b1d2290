package systemid

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestSystemID(t *testing.T) {
	dir := t.TempDir()
	sp := filepath.Join(dir, "state.json")
	a, err := ForStateFile(sp)
	if err != nil || !systemIDRe.MatchString(a) {
		t.Fatalf("%q %v", a, err)
	}
	b, _ := ForStateFile(sp)
	if a != b {
		t.Fatal("system id not stable")
	}
	// the directory's first state file: in .runner_system_id, as before
	if st, err := os.Stat(filepath.Join(dir, FileName)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("%v %v", st, err)
	}
	os.WriteFile(filepath.Join(dir, FileName), []byte("garbage"), 0o600)
	if _, err := ForStateFile(sp); err == nil {
		t.Fatal("garbage accepted")
	}
}

// Two state files in one directory: two daemons, two system_ids.
func TestDistinctPerStateFile(t *testing.T) {
	dir := t.TempDir()
	a, err := ForStateFile(filepath.Join(dir, "a.json"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := ForStateFile(filepath.Join(dir, "b.json"))
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Fatalf("both state files got %s", a)
	}
	if a2, _ := ForStateFile(filepath.Join(dir, "a.json")); a2 != a {
		t.Fatal("not stable")
	}
	if b2, _ := ForStateFile(filepath.Join(dir, "b.json")); b2 != b {
		t.Fatal("not stable")
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "."+"b.json"+FileName)); string(got) != b+"\n" {
		t.Fatalf("second state file's system_id file: %q", got)
	}
}

// An installation of an earlier version keeps its system_id: the first
// state file takes the directory's .runner_system_id over, the others get
// their own, also when they start at once.
func TestExistingDirectoryFileKept(t *testing.T) {
	dir := t.TempDir()
	const old = "r_AbCdEf012345"
	os.WriteFile(filepath.Join(dir, FileName), []byte(old+"\n"), 0o600)
	got, err := ForStateFile(filepath.Join(dir, "state.json"))
	if err != nil || got != old {
		t.Fatalf("%q %v, want the existing %s", got, err, old)
	}
	if got, _ := ForStateFile(filepath.Join(dir, "state.json")); got != old {
		t.Fatalf("then %q", got)
	}
	if other, _ := ForStateFile(filepath.Join(dir, "other.json")); other == old {
		t.Fatal("a second state file took the same system_id")
	}

	dir = t.TempDir()
	os.WriteFile(filepath.Join(dir, FileName), []byte(old+"\n"), 0o600)
	var wg sync.WaitGroup
	ids := make([]string, 6)
	for i := range ids {
		wg.Go(func() {
			id, err := ForStateFile(filepath.Join(dir, string(rune('a'+i))+".json"))
			if err != nil {
				t.Error(err)
			}
			ids[i] = id
		})
	}
	wg.Wait()
	seen, tookOld := map[string]bool{}, 0
	for _, id := range ids {
		if seen[id] {
			t.Fatalf("system_id %s given twice: %v", id, ids)
		}
		seen[id] = true
		if id == old {
			tookOld++
		}
	}
	if tookOld != 1 {
		t.Fatalf("%d state files took the existing system_id over: %v", tookOld, ids)
	}
}

// Peek creates nothing; Store keeps the peeked id, and never replaces one
// already stored.
func TestPeekStore(t *testing.T) {
	dir := t.TempDir()
	sp := filepath.Join(dir, "state.json")
	id, fresh, err := Peek(sp)
	if err != nil || !fresh || !systemIDRe.MatchString(id) {
		t.Fatalf("%q %v %v", id, fresh, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("Peek created %v", ents)
	}
	if got, err := Store(sp, id); err != nil || got != id {
		t.Fatalf("Store: %q %v", got, err)
	}
	if got, err := ForStateFile(sp); err != nil || got != id {
		t.Fatalf("ForStateFile after Store: %q %v, want %q", got, err, id)
	}
	if got, fresh, err := Peek(sp); err != nil || fresh || got != id {
		t.Fatalf("Peek after Store: %q %v %v", got, fresh, err)
	}
	if got, _ := Store(sp, "r_000000000000"); got != id {
		t.Fatalf("Store replaced %q by %q", id, got)
	}
	// a second state file of the directory gets its own
	other := filepath.Join(dir, "other.json")
	if got, fresh, _ := Peek(other); !fresh || got == id {
		t.Fatalf("Peek of another state file: %q %v", got, fresh)
	}
	if _, err := Store(sp, "nonsense"); err == nil {
		t.Fatal("nonsense stored")
	}
}

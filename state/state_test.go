package state

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func copyFixture(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "state.json")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMissingFileIsEmptyAndWrittenOnChange(t *testing.T) {
	p := filepath.Join(t.TempDir(), "state.json")
	s, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	if s.Len() != 0 {
		t.Fatal("not empty")
	}
	s.Put(Job{RunnerID: "r", JobID: 1, Token: "t", Phase: Acquired, Payload: json.RawMessage(`{"id":1}`)})
	if err := s.Sync(ctx(t)); err != nil {
		t.Fatal(err)
	}
	// durable in the journal until the next snapshot
	if fi, err := os.Stat(journalPath(p)); err != nil || fi.Mode().Perm() != 0o600 || fi.Size() == 0 {
		t.Fatalf("journal: %v %v", fi, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	if _, err := os.Stat(journalPath(p)); !os.IsNotExist(err) {
		t.Fatal("journal left after a clean close")
	}
	s2, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	j, ok := s2.Get(Key{"r", 1})
	if !ok || j.Phase != Acquired || string(j.Payload) != `{"id":1}` || j.Token != "t" {
		t.Fatalf("reloaded %+v", j)
	}
}

func TestEmptyFileIsEmpty(t *testing.T) {
	p := filepath.Join(t.TempDir(), "state.json")
	os.WriteFile(p, []byte("  \n"), 0o600)
	s, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

func TestLoadV1Fixture(t *testing.T) {
	s, err := Open(copyFixture(t, "state-v1.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	jobs := s.Jobs()
	if len(jobs) != 3 {
		t.Fatalf("jobs %+v", jobs)
	}
	want := map[int64]Phase{11: Decommissioning, 12: Launched, 13: Provisioning}
	for _, j := range jobs {
		if j.Phase != want[j.JobID] || j.Imported {
			t.Errorf("job %d: phase %s imported %v", j.JobID, j.Phase, j.Imported)
		}
	}
	j12, _ := s.Get(Key{"glrt-abc", 12})
	if j12.TraceOffset != 345 || j12.LaunchedAt.IsZero() || string(j12.Resource) != `{"container":"paas-job-glrt-abc-12"}` {
		t.Errorf("job 12: %+v", j12)
	}
	j13, _ := s.Get(Key{"glrt-abc", 13})
	if string(j13.Payload) != `{"id":13,"token":"tok13"}` {
		t.Errorf("payload %s", j13.Payload)
	}
}

func TestImportHeptapod(t *testing.T) {
	p := copyFixture(t, "heptapod-1.0.json")
	s, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Imported() {
		t.Error("not marked imported")
	}
	want := map[int64]Phase{956: Launched, 950: Decommissioning, 949: Decommissioning, 957: Acquired, 958: Launching}
	for _, j := range s.Jobs() {
		if j.Phase != want[j.JobID] || !j.Imported || j.RunnerID != "D3adNQYu" {
			t.Errorf("job %d: %+v", j.JobID, j)
		}
		delete(want, j.JobID)
	}
	if len(want) != 0 {
		t.Errorf("missing jobs %v", want)
	}
	j, _ := s.Get(Key{"D3adNQYu", 956})
	if j.TraceOffset != 120 || j.ExpectedWeight != 13.45 || !strings.Contains(string(j.Resource), "app_956") {
		t.Errorf("launched handle %+v", j)
	}
	// The import is kept (Heptapod deletes its file after loading; we don't).
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	// Rewriting turns it into a v1 file that loads back the same.
	s.Put(j)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(p)
	if !strings.HasPrefix(string(raw), `{"version": 1`) {
		t.Fatalf("not rewritten as v1: %.60s", raw)
	}
	s2, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if len(s2.Jobs()) != 5 {
		t.Fatalf("reloaded %d jobs", len(s2.Jobs()))
	}
	j958, _ := s2.Get(Key{"D3adNQYu", 958})
	if j958.Phase != Launching || string(j958.Payload) != `{"id": 958, "token": "job-token-958"}` {
		t.Errorf("958: %+v", j958)
	}
}

func TestRefusesBadFilesAndLeavesThemAlone(t *testing.T) {
	cases := map[string]string{
		"garbage":        "{not json",
		"truncated":      `{"version": 1, "launched": [{"runner_name": "r", "job_id"`,
		"future":         `{"version": 2, "launched": []}`,
		"zero version":   `{"version": 0}`,
		"trailing":       `{"version": 1} {"x":1}`,
		"bad pair":       `{"version": 1, "pending": [[{"runner_name":"r","job_id":1}]]}`,
		"no job id":      `{"version": 1, "launched": [{"runner_name":"r"}]}`,
		"duplicate":      `{"version": 1, "launched": [{"runner_name":"r","job_id":1}], "to_decommission": [{"runner_name":"r","job_id":1}]}`,
		"wrong type":     `{"version": 1, "launched": [{"runner_name":"r","job_id":"one"}]}`,
		"array document": `[]`,
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "state.json")
			os.WriteFile(p, []byte(body), 0o600)
			_, err := Open(p)
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("want FormatError, got %v", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("multi-line error: %q", err)
			}
			if name == "future" && !strings.Contains(err.Error(), "newer") {
				t.Errorf("future version message: %v", err)
			}
			got, _ := os.ReadFile(p)
			if string(got) != body {
				t.Fatal("file changed")
			}
			// the lock was released: a second attempt gets the same error, not ErrLocked
			if _, err := Open(p); errors.Is(err, ErrLocked) {
				t.Fatal("lock leaked")
			}
		})
	}
}

func TestSecondOpenIsRefused(t *testing.T) {
	p := filepath.Join(t.TempDir(), "state.json")
	s, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = Open(p)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "pid") {
		t.Fatalf("got %v", err)
	}
}

func TestUnwritableDirectory(t *testing.T) {
	if os.Getuid() == 0 {
		// root writes anywhere; use a path under a file instead
		f := filepath.Join(t.TempDir(), "file")
		os.WriteFile(f, nil, 0o600)
		if _, err := Open(filepath.Join(f, "state.json")); err == nil {
			t.Fatal("opened a state file under a regular file")
		}
		return
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o500)
	defer os.Chmod(dir, 0o700)
	if _, err := Open(filepath.Join(dir, "state.json")); err == nil {
		t.Fatal("opened in read-only dir")
	}
}

func TestGroupCommit(t *testing.T) {
	p := filepath.Join(t.TempDir(), "state.json")
	s, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const writers, per = 20, 100
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < per; i++ {
				s.Put(Job{RunnerID: "r", JobID: int64(w*per + i + 1), Token: "t", Phase: Launched})
				if err := s.Sync(context.Background()); err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	if s.Len() != writers*per {
		t.Fatalf("len %d", s.Len())
	}
	// Every Sync returned only after its change was durable, yet writes were
	// shared: fewer file writes than changes.
	if w := s.Writes(); w >= writers*per {
		t.Errorf("no grouping: %d writes for %d changes", w, writers*per)
	}
	if err := s.Save(ctx(t)); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(p)
	var doc fileDoc
	if err := json.Unmarshal(raw, &doc); err != nil || len(doc.Launched) != writers*per {
		t.Fatalf("file has %d launched, err %v", len(doc.Launched), err)
	}
}

func TestDeleteAndPayloadDroppedAfterLaunch(t *testing.T) {
	p := filepath.Join(t.TempDir(), "state.json")
	s, _ := Open(p)
	s.Put(Job{RunnerID: "r", JobID: 1, Phase: Launching, Payload: json.RawMessage(`{"id":1}`)})
	s.Put(Job{RunnerID: "r", JobID: 1, Phase: Launched, Payload: json.RawMessage(`{"id":1}`)})
	s.Put(Job{RunnerID: "r", JobID: 2, Phase: Decommissioning})
	s.Delete(Key{"r", 2})
	s.Sync(ctx(t))
	s.Close()
	raw, _ := os.ReadFile(p)
	if strings.Contains(string(raw), `"id":1`) || strings.Contains(string(raw), `"job_id":2`) {
		t.Fatalf("file: %s", raw)
	}
}

// crashCopy copies the state file and journal of a live store, as a crash
// would leave them, to a new directory.
func crashCopy(t *testing.T, p string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "state.json")
	for _, suffix := range []string{"", ".journal"} {
		if b, err := os.ReadFile(p + suffix); err == nil {
			os.WriteFile(dst+suffix, b, 0o600)
		}
	}
	return dst
}

func TestJournalReplayAfterCrash(t *testing.T) {
	p := filepath.Join(t.TempDir(), "state.json")
	s, _ := Open(p)
	defer s.Close()
	s.Put(Job{RunnerID: "r", JobID: 1, Phase: Provisioning, Payload: json.RawMessage(`{"id":1}`), Resource: json.RawMessage(`{"h":1}`)})
	s.Put(Job{RunnerID: "r", JobID: 2, Phase: Launched})
	s.Put(Job{RunnerID: "r", JobID: 3, Phase: Launched})
	s.Delete(Key{"r", 3})
	if err := s.Sync(ctx(t)); err != nil {
		t.Fatal(err)
	}
	c := crashCopy(t, p)
	// a write cut short by the crash: never acknowledged, ignored
	f, _ := os.OpenFile(journalPath(c), os.O_APPEND|os.O_WRONLY, 0o600)
	f.WriteString(`{"seq":99,"put":{"runner_name":"r","job_id":9`)
	f.Close()
	s2, err := Open(c)
	if err != nil {
		t.Fatal(err)
	}
	jobs := s2.Jobs()
	if len(jobs) != 2 || jobs[0].Phase != Provisioning || string(jobs[0].Payload) != `{"id":1}` || string(jobs[0].Resource) != `{"h":1}` || jobs[1].JobID != 2 {
		t.Fatalf("replayed %+v", jobs)
	}
	// replay folded the journal into the state file at once
	if fi, _ := os.Stat(journalPath(c)); fi.Size() != 0 {
		t.Fatal("journal not emptied after replay")
	}
	s2.Close()
	s3, _ := Open(c)
	defer s3.Close()
	if len(s3.Jobs()) != 2 {
		t.Fatalf("after reopen: %+v", s3.Jobs())
	}
}

func TestJournalSkipsRecordsInSnapshot(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.json")
	// crash between a snapshot and the journal truncation: the journal
	// still holds an older record of job 1
	os.WriteFile(p, []byte(`{"version": 1, "journal_seq": 5, "launched": [{"runner_name":"r","job_id":1,"token":"t","trace_offset":0,"expected_weight":1,"phase":"launched"}], "pending": [], "to_decommission": []}`), 0o600)
	os.WriteFile(journalPath(p), []byte(`{"seq":3,"put":{"runner_name":"r","job_id":1,"token":"t","trace_offset":0,"expected_weight":1,"phase":"provisioning"}}`+"\n"+
		`{"seq":6,"put":{"runner_name":"r","job_id":2,"token":"t","trace_offset":0,"expected_weight":1,"phase":"launched"}}`+"\n"), 0o600)
	s, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	j1, _ := s.Get(Key{"r", 1})
	if _, ok := s.Get(Key{"r", 2}); j1.Phase != Launched || !ok {
		t.Fatalf("jobs %+v", s.Jobs())
	}
}

func TestCorruptedJournalRefused(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.json")
	body := "garbage\n" + `{"seq":6,"del":{"runner_name":"r","job_id":2}}` + "\n"
	os.WriteFile(journalPath(p), []byte(body), 0o600)
	_, err := Open(p)
	var fe *FormatError
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), "corrupted journal") {
		t.Fatalf("got %v", err)
	}
	if b, _ := os.ReadFile(journalPath(p)); string(b) != body {
		t.Fatal("journal changed")
	}
}

func TestSnapshotWhenJournalGrows(t *testing.T) {
	old := snapshotBytes
	snapshotBytes = 2048
	defer func() { snapshotBytes = old }()
	p := filepath.Join(t.TempDir(), "state.json")
	s, _ := Open(p)
	defer s.Close()
	for i := 1; i <= 200; i++ {
		s.Put(Job{RunnerID: "r", JobID: int64(i), Phase: Launched})
		s.Sync(ctx(t))
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Size() == 0 {
		t.Fatalf("no snapshot while the journal grew: %v", err)
	}
	if jf, _ := os.Stat(journalPath(p)); jf.Size() > 4096 {
		t.Fatalf("journal %d bytes", jf.Size())
	}
}

// FuzzOpenJournal: whatever a crash or a disk leaves in the journal, Open
// either loads or refuses with a FormatError; it never panics, and a
// refused journal is left as it was.
func FuzzOpenJournal(f *testing.F) {
	f.Add([]byte(`{"seq":1,"put":{"runner_name":"r","job_id":1,"token":"t","phase":"launched"}}` + "\n"))
	f.Add([]byte(`{"seq":2,"del":{"runner_name":"r","job_id":1}}` + "\n" + `{"seq":3,"put":{"runner_name":"r","job_id":2,"pha`))
	f.Add([]byte("garbage\n{}\n"))
	f.Fuzz(func(t *testing.T, journal []byte) {
		p := filepath.Join(t.TempDir(), "state.json")
		os.WriteFile(journalPath(p), journal, 0o600)
		s, err := Open(p)
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("not a FormatError: %v", err)
			}
			if b, _ := os.ReadFile(journalPath(p)); !bytes.Equal(b, journal) {
				t.Fatal("refused journal changed")
			}
			return
		}
		for _, j := range s.Jobs() {
			if j.RunnerID == "" || j.JobID <= 0 {
				t.Fatalf("invalid job loaded: %+v", j)
			}
		}
		s.Close()
	})
}

// A journal append cut short by a full disk, then retried, leaves a
// journal the next start reads: the torn bytes are cut off before the
// retry appends the records again.
func TestPartialJournalWriteThenRetry(t *testing.T) {
	p := filepath.Join(t.TempDir(), "state.json")
	s, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Put(Job{RunnerID: "r", JobID: 1, Phase: Launched})
	if err := s.Sync(ctx(t)); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	failures := 1
	old := writeJournal
	writeJournal = func(f *os.File, b []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		if failures > 0 {
			failures--
			n, _ := f.Write(b[:len(b)/2])
			return n, syscall.ENOSPC
		}
		return f.Write(b)
	}
	defer func() { writeJournal = old }()
	s.Put(Job{RunnerID: "r", JobID: 2, Phase: Provisioning, Payload: json.RawMessage(`{"id":2}`)})
	err = s.Sync(ctx(t))
	if err != nil && !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("first sync: %v", err)
	}
	for deadline := time.Now().Add(20 * time.Second); err != nil; err = s.Sync(ctx(t)) {
		// the writer retries by itself; Sync reports the error until then
		if !errors.Is(err, syscall.ENOSPC) || time.Now().After(deadline) {
			t.Fatalf("retry: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.Put(Job{RunnerID: "r", JobID: 3, Phase: Launched})
	if err := s.Sync(ctx(t)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if failures != 0 {
		t.Fatal("the failure was not injected")
	}
	mu.Unlock()
	c := crashCopy(t, p)
	s2, err := Open(c)
	if err != nil {
		t.Fatalf("next start refuses the journal: %v", err)
	}
	defer s2.Close()
	if jobs := s2.Jobs(); len(jobs) != 3 || string(jobs[1].Payload) != `{"id":2}` {
		t.Fatalf("replayed %+v", jobs)
	}
}

// Creating the journal syncs the directory that holds it.
func TestJournalCreationSyncsDirectory(t *testing.T) {
	dir := t.TempDir()
	var synced []string
	old := syncDir
	syncDir = func(d string) error { synced = append(synced, d); return old(d) }
	defer func() { syncDir = old }()
	s, err := Open(filepath.Join(dir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	abs, _ := filepath.Abs(dir)
	if len(synced) == 0 || synced[0] != abs {
		t.Fatalf("directory syncs: %v", synced)
	}
}

// While idle, the journal is folded into the state file on a timer: the
// state file alone is truthful soon after the last change.
func TestIdleJournalIsFolded(t *testing.T) {
	old := snapshotEvery
	snapshotEvery = 200 * time.Millisecond
	defer func() { snapshotEvery = old }()
	p := filepath.Join(t.TempDir(), "state.json")
	s, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Put(Job{RunnerID: "r", JobID: 42, Phase: Launched, Token: "t"})
	if err := s.Sync(ctx(t)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(p)
		jf, _ := os.Stat(journalPath(p))
		if bytes.Contains(b, []byte(`"job_id":42`)) && jf != nil && jf.Size() == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("state file not updated while idle: %s", b)
		}
		time.Sleep(20 * time.Millisecond) // polling the file system for the timer's effect
	}
}

func TestObserveWrites(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var mu sync.Mutex
	kinds := map[string]int{}
	s.ObserveWrites(func(kind string, took time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err == nil && took >= 0 {
			kinds[kind]++
		}
	})
	s.Put(Job{RunnerID: "r", JobID: 1, Token: "t"})
	if err := s.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(context.Background()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if kinds["journal"]+kinds["snapshot"] < 2 || kinds["snapshot"] < 1 {
		t.Fatalf("writes observed: %v", kinds)
	}
}

// Read sees what the running store wrote (journal included) without the
// lock and without changing the files.
func TestReadWhileOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Put(Job{RunnerID: "r", JobID: 2, Token: "t2", Phase: Launched})
	s.Put(Job{RunnerID: "r", JobID: 1, Token: "t1", Phase: Provisioning})
	if err := s.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	stat := func() string {
		var b strings.Builder
		for _, p := range []string{path, path + ".journal", path + ".lock"} {
			if fi, err := os.Stat(p); err == nil {
				fmt.Fprintf(&b, "%s %d %v;", p, fi.Size(), fi.ModTime())
			}
		}
		return b.String()
	}
	before := stat()
	jobs, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 2 || jobs[0].JobID != 1 || jobs[0].Phase != Provisioning || jobs[1].Phase != Launched {
		t.Fatalf("read %+v", jobs)
	}
	if after := stat(); after != before {
		t.Fatalf("Read changed the files:\n%s\n%s", before, after)
	}
	// the daemon still holds its lock: a second Open fails
	if _, err := Open(path); err == nil {
		t.Fatal("the lock was lost")
	}
	if jobs, err := Read(filepath.Join(t.TempDir(), "none.json")); err != nil || len(jobs) != 0 {
		t.Fatalf("missing file: %v %v", jobs, err)
	}
}

// A daemon that refuses to start after opening its state file releases it
// untouched: a Heptapod file is not converted, no journal is left, and the
// lock is free again.
func TestReleaseLeavesFileUntouched(t *testing.T) {
	for _, fixture := range []string{"heptapod-1.0.json", "state-v1.json"} {
		p := copyFixture(t, fixture)
		before, _ := os.ReadFile(p)
		s, err := Open(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Release(); err != nil {
			t.Fatal(err)
		}
		if err := s.Release(); err != nil {
			t.Fatalf("second Release: %v", err)
		}
		if after, _ := os.ReadFile(p); !bytes.Equal(before, after) {
			t.Fatalf("%s rewritten:\n%s", fixture, after)
		}
		if _, err := os.Stat(journalPath(p)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: journal left: %v", fixture, err)
		}
		s2, err := Open(p)
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
		if err := s2.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s2.Release(); err != nil {
			t.Fatalf("Release after Close: %v", err)
		}
	}
}

// A state_file naming a directory is refused with one line naming it.
func TestStateFileIsADirectory(t *testing.T) {
	p := filepath.Join(t.TempDir(), "state.json")
	os.Mkdir(p, 0o700)
	_, err := Open(p)
	if err == nil || !strings.Contains(err.Error(), "state_file: "+p+" is a directory") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("got %v", err)
	}
	if _, err := Open(p); errors.Is(err, ErrLocked) {
		t.Fatal("lock leaked")
	}
}

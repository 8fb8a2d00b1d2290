package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"gitlab.com/paas-runner/paas-runner/internal/systemid"
	"gitlab.com/paas-runner/paas-runner/state"
)

// status --json read from the state file (no daemon) shows the state
// file's system_id, and creates no system_id file when there is none.
func TestStatusJSONSystemIDFromStateFile(t *testing.T) {
	dir := t.TempDir()
	conf := func(stateName string) string {
		p := filepath.Join(dir, stateName+".toml")
		body := fmt.Sprintf("state_file = %q\n\n[[runners]]\nname = \"r\"\nurl = \"https://gitlab.example\"\ntoken = \"glrt-0123456789\"\nexecutor = \"local-docker\"\n",
			filepath.Join(dir, stateName))
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	status := func(cfg string) debugJobs {
		t.Helper()
		var out, errb bytes.Buffer
		if code := statusCmd([]string{"--json", cfg}, &out, &errb); code != exitOK {
			t.Fatalf("exit %d: %s", code, errb.String())
		}
		var doc debugJobs
		if err := json.Unmarshal(out.Bytes(), &doc); err != nil {
			t.Fatalf("%v: %s", err, out.String())
		}
		return doc
	}
	for _, name := range []string{"first.json", "second.json"} {
		st, err := state.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
	}
	// no system_id stored yet: none shown, none made
	before, _ := os.ReadDir(dir)
	if doc := status(conf("first.json")); doc.SystemID != "" {
		t.Fatalf("system_id %q with none stored", doc.SystemID)
	}
	if after, _ := os.ReadDir(dir); len(after) != len(before)+1 { // + first.json.toml
		t.Fatalf("status created files: %v → %v", before, after)
	}
	first, err := systemid.ForStateFile(filepath.Join(dir, "first.json"))
	if err != nil {
		t.Fatal(err)
	}
	second, err := systemid.ForStateFile(filepath.Join(dir, "second.json"))
	if err != nil {
		t.Fatal(err)
	}
	if doc := status(conf("first.json")); doc.SystemID != first {
		t.Fatalf("system_id %q, want %q", doc.SystemID, first)
	}
	if doc := status(conf("second.json")); doc.SystemID != second {
		t.Fatalf("system_id %q, want the second state file's %q", doc.SystemID, second)
	}
}

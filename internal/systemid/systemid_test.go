package systemid

import (
	"os"
	"path/filepath"
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
	os.WriteFile(filepath.Join(dir, FileName), []byte("garbage"), 0o600)
	if _, err := ForStateFile(sp); err == nil {
		t.Fatal("garbage accepted")
	}
}

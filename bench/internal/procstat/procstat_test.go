package procstat

import (
	"os"
	"testing"
)

func TestOwnProcess(t *testing.T) {
	rss, hwm := Mem(os.Getpid())
	if rss <= 0 || hwm < rss {
		t.Fatalf("rss %d kB, hwm %d kB", rss, hwm)
	}
	if c := CPU(os.Getpid()); c < 0 {
		t.Fatalf("cpu %v", c)
	}
	if rss, _ := Mem(-1); rss != 0 || CPU(-1) != 0 {
		t.Fatal("a process that does not exist reads as zeros")
	}
}

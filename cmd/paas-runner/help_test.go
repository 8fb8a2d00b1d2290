package main

import (
	"bytes"
	"strings"
	"testing"
)

// --help prints the usage once and exits 0 (it used to print it twice:
// once by flag, once by parseArgs).
func TestHelpPrintsUsageOnce(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--help"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, errb.String())
	}
	if n := strings.Count(errb.String()+out.String(), "usage: paas-runner"); n != 1 {
		t.Fatalf("usage printed %d times:\n%s%s", n, out.String(), errb.String())
	}
}

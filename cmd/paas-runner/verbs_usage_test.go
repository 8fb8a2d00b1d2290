package main

import (
	"bytes"
	"strings"
	"testing"
)

// Every command: --help prints its usage once and exits 0; a usage
// mistake is one line saying what is wrong, with the hint to --help, and
// exits 2 (status, locks and pool used to print the bare usage, and locks
// --help and pool --help exited 2).
func TestVerbsUsage(t *testing.T) {
	for _, verb := range [][]string{nil, {"status"}, {"locks"}, {"pool"}, {"guard"}, {"host-image"}, {"exec-fetched-job"}} {
		var out, errb bytes.Buffer
		args := append(append([]string(nil), verb...), "--help")
		if code := run(args, &out, &errb); code != 0 {
			t.Errorf("%v: exit %d, want 0; stderr:\n%s", args, code, errb.String())
		}
		if n := strings.Count(out.String()+errb.String(), "usage:"); n != 1 {
			t.Errorf("%v: usage printed %d times:\n%s%s", args, n, out.String(), errb.String())
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "paas-runner: missing CONFIG"},
		{[]string{"status"}, "paas-runner: status: missing CONFIG (see paas-runner status --help)"},
		{[]string{"status", "--bogus", "c.toml"}, "paas-runner: status: flag provided but not defined: -bogus"},
		{[]string{"status", "c.toml", "extra"}, "paas-runner: status: unexpected arguments after CONFIG: extra"},
		{[]string{"locks"}, "paas-runner: locks: missing CONFIG (see paas-runner locks --help)"},
		{[]string{"locks", "--bogus", "c.toml"}, "paas-runner: locks: flag provided but not defined: -bogus"},
		{[]string{"locks", "c.toml", "extra"}, "paas-runner: locks: unexpected arguments after CONFIG: extra"},
		{[]string{"locks", "release"}, "paas-runner: locks: release: missing CONFIG and NAME"},
		{[]string{"locks", "release", "c.toml"}, "paas-runner: locks: release: missing NAME"},
		{[]string{"locks", "release", "c.toml", "n", "m"}, "paas-runner: locks: release: unexpected arguments after NAME: m"},
		{[]string{"pool"}, "paas-runner: pool: missing the operation (add, add-claimed, remove or update) (see paas-runner pool --help)"},
		{[]string{"pool", "add"}, "paas-runner: pool: missing CONFIG"},
		{[]string{"pool", "add", "c.toml"}, "paas-runner: pool: missing POOL"},
		{[]string{"pool", "add", "c.toml", "aws"}, "paas-runner: pool: missing LOCK"},
		{[]string{"pool", "add", "c.toml", "aws", "x", "y"}, "paas-runner: pool: unexpected arguments after LOCK: y"},
		{[]string{"pool", "--bogus"}, "paas-runner: pool: flag provided but not defined: -bogus"},
		{[]string{"guard", "--bogus"}, "paas-runner guard: error:"},
		{[]string{"host-image", "extra"}, "paas-runner: host-image: unexpected arguments: extra"},
		{[]string{"exec-fetched-job", "job.json"}, "paas-runner: exec-fetched-job: missing --config"},
		{[]string{"exec-fetched-job", "--config", "r.toml"}, "paas-runner: exec-fetched-job: missing job.json"},
		{[]string{"exec-fetched-job", "--config", "r.toml", "job.json", "x"}, "paas-runner: exec-fetched-job: unexpected arguments after job.json: x"},
	} {
		var out, errb bytes.Buffer
		code := run(tc.args, &out, &errb)
		msg := errb.String()
		if code != 2 || strings.Count(strings.TrimRight(msg, "\n"), "\n") != 0 || !strings.Contains(msg, tc.want) ||
			!(strings.Contains(msg, "--help") || strings.Contains(msg, "(usage: ")) {
			t.Errorf("%v: exit %d, want 2 and one line with %q and a hint; stderr:\n%s", tc.args, code, tc.want, msg)
		}
	}
}

package main

import (
	"slices"
	"testing"

	"gitlab.com/paas-runner/paas-runner/config"
)

// Runners whose ID is a hash (glrt-, glrtr-) still find the jobs and hosts
// Heptapod PAAS Runner recorded under the token's first 8 characters; a
// legacy token's ID is those characters, so it has no other.
func TestLegacyIDs(t *testing.T) {
	for _, c := range []struct {
		token string
		want  []string
	}{
		{"glrt-t1_aaaaaaaaaaaa", []string{"glrt-t1_"}},
		{"glrtr-aaaaaaaaaaaaaaaa", []string{"glrtr-aa"}},
		{"D3adNQYuXXXXXXXXXXXX", nil},
	} {
		rc := &config.Runner{Token: c.token}
		if got := legacyIDs(rc); !slices.Equal(got, c.want) {
			t.Errorf("legacyIDs(%s) = %q, want %q (ID %q)", c.token, got, c.want, rc.ID())
		}
	}
}

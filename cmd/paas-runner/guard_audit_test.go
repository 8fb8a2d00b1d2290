package main

import (
	"fmt"
	"strings"
	"testing"
)

// A token GitLab refuses with 403 (no read_api scope): exit 1 and
// "guard token rejected by GitLab (403)", at once, not retried until the
// timeout.
func TestGuardTokenForbidden(t *testing.T) {
	g := newGuardCase(t)
	g.srv.AddAPIToken("glpat-profile-only", "read_user")
	g.env["PRIVATE_TOKEN"] = "glpat-profile-only"
	r := g.run("-i", "5")
	out := lines(r.stdout)
	if r.code != 1 || !strings.Contains(out, "ERROR guard token rejected by GitLab (403)") || strings.Count(out, "ERROR") != 1 {
		t.Fatalf("%+v", r)
	}
}

// GUARD_CANCEL_OLDER with a read_api token: refused, saying the api scope
// is needed; exit 1, the older pipeline untouched.
func TestGuardCancelOlderRefused(t *testing.T) {
	g := newGuardCase(t)
	g.srv.AddAPIToken("glpat-read-only", "read_api")
	old := g.srv.AddPipeline(7, "11-old", "running")
	own := g.srv.AddPipeline(7, "12-mine", "running")
	g.env["PRIVATE_TOKEN"] = "glpat-read-only"
	g.env["CI_PIPELINE_ID"] = fmt.Sprint(own)
	g.env["GUARD_ORDER"] = "newest_wins"
	g.env["GUARD_CANCEL_OLDER"] = "true"
	r := g.run()
	want := fmt.Sprintf("ERROR cannot cancel older pipeline %d: GUARD_CANCEL_OLDER needs a guard token with the api scope: guard token rejected by GitLab (403)", old)
	if r.code != 1 || !strings.Contains(lines(r.stdout), want) || g.srv.PipelineOf(old).Status != "running" {
		t.Fatalf("want %q\n%+v (old is %s)", want, r, g.srv.PipelineOf(old).Status)
	}
}

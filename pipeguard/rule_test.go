package pipeguard

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func mustRule(t *testing.T, s Spec) *Rule {
	t.Helper()
	r, err := NewRule(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func vars(m map[string]string) Lookup {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func ids(ps []Pipeline) []int64 {
	out := []int64{}
	for _, p := range ps {
		out = append(out, p.ID)
	}
	return out
}

func TestDefaults(t *testing.T) {
	r := mustRule(t, Spec{})
	if r.RefRegex != `^\d+\-` || r.StatusRegex != "running" || r.Timeout != time.Hour || r.Order != OldestFirst {
		t.Fatalf("defaults: %+v", r.Spec)
	}
	ps := []Pipeline{
		{ID: 1, Ref: "12-fix-login", Status: "running"},
		{ID: 2, Ref: "feature/12-fix", Status: "running"}, // ^ anchors: no match
		{ID: 3, Ref: "13-other", Status: "pending"},
		{ID: 4, Ref: "14-x", Status: "running"},
	}
	if got := ids(r.Matching(ps, 4)); !slices.Equal(got, []int64{1}) {
		t.Fatalf("matching = %v, want [1]", got)
	}
}

func TestRefSearchedStatusMatchedAtStart(t *testing.T) {
	// re.search on the ref: 'master' matches 'feature/master-document'.
	r := mustRule(t, Spec{RefRegex: "master", StatusRegex: "run"})
	ps := []Pipeline{{ID: 1, Ref: "feature/master-document", Status: "running"}}
	if len(r.Matching(ps, 9)) != 1 {
		t.Fatal("ref regex must be searched anywhere in the ref")
	}
	// re.match on the status: 'ning' does not match 'running'.
	r = mustRule(t, Spec{RefRegex: "master", StatusRegex: "ning|pending"})
	if len(r.Matching(ps, 9)) != 0 {
		t.Fatal("status regex must match at the start of the status")
	}
	// The job's own pipeline never conflicts.
	r = mustRule(t, Spec{RefRegex: ".", StatusRegex: "running"})
	if len(r.Matching(ps, 1)) != 0 {
		t.Fatal("own pipeline counted")
	}
}

func TestQueryDerivation(t *testing.T) {
	for _, c := range []struct {
		ref, status string
		statuses    []string
		qref        string
	}{
		{"", "", []string{"running"}, ""},
		{"^master$", "running|pending", []string{"pending", "running"}, "master"},
		{"^master", "pending", []string{"pending"}, ""},
		{"^(?i)master$", "runn", []string{"running"}, ""},
		{"^v1\\.0$", "wait", []string{"waiting_for_resource", "waiting_for_callback"}, "v1.0"},
		{".+", ".*", nil, ""}, // every status: one unfiltered listing
		{".+", "success|failed|canceled|skipped|running", nil, ""},
		// only statuses a pipeline leaves: by status, however many
		{".+", "running|pending|created|preparing|waiting_for_resource|scheduled",
			[]string{"created", "waiting_for_resource", "preparing", "pending", "running", "scheduled"}, ""},
		{".+", "canc", []string{"canceling", "canceled"}, ""},
	} {
		r := mustRule(t, Spec{RefRegex: c.ref, StatusRegex: c.status})
		q := r.Query()
		if !slices.Equal(q.Statuses, c.statuses) || q.Ref != c.qref {
			t.Errorf("ref %q status %q: query %+v, want %v %q", c.ref, c.status, q, c.statuses, c.qref)
		}
	}
}

func TestRuleErrors(t *testing.T) {
	for _, c := range []struct {
		s    Spec
		want string
	}{
		{Spec{RefRegex: "(?=x)"}, "GUARD_REF_REGEX"},
		{Spec{StatusRegex: "runing"}, "GUARD_STATUS_REGEX: \"runing\" matches no pipeline status"},
		{Spec{StatusRegex: "("}, "GUARD_STATUS_REGEX"},
		{Spec{StatusRegex: "running)|(x"}, "GUARD_STATUS_REGEX: \"running)|(x\" is not a valid regular expression: error parsing regexp: unexpected )"},
		{Spec{JobRegex: "["}, "GUARD_JOB_REGEX"},
		{Spec{StageRegex: "["}, "GUARD_STAGE_REGEX"},
		{Spec{Order: "fifo"}, "GUARD_ORDER: \"fifo\""},
		{Spec{CancelOlder: true}, "GUARD_CANCEL_OLDER needs GUARD_ORDER=newest_wins"},
	} {
		_, err := NewRule(c.s)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: err = %v, want %q", c.s, err, c.want)
		}
	}
}

func TestActiveAndVariables(t *testing.T) {
	for _, c := range []struct {
		m    map[string]string
		want bool
	}{
		{map[string]string{}, false},
		{map[string]string{"GUARD_REF_REGEX": "^main$"}, true},
		{map[string]string{"GUARD_STATUS_REGEX": "running"}, true},
		{map[string]string{"GUARD_REF_REGEX": ""}, false}, // empty = unset, as gitlab-job-guard
		{map[string]string{"PAAS_GUARD_PIPELINES": "true"}, true},
		{map[string]string{"PAAS_GUARD_PIPELINES": "false"}, false},
		{map[string]string{"GUARD_TIMEOUT": "10"}, false},
	} {
		got, err := Active(vars(c.m))
		if err != nil || got != c.want {
			t.Errorf("%v: active = %v, %v", c.m, got, err)
		}
	}
	if _, err := Active(vars(map[string]string{"PAAS_GUARD_PIPELINES": "maybe"})); err == nil ||
		!strings.Contains(err.Error(), "PAAS_GUARD_PIPELINES") {
		t.Errorf("bad boolean: %v", err)
	}
	base := Spec{RefRegex: "from-flag", StatusRegex: "pending", Timeout: 5 * time.Second}
	s, err := SpecFromVariables(vars(map[string]string{
		"GUARD_REF_REGEX": "^env$", "GUARD_TIMEOUT": "42", "GUARD_NO_WAIT": "true", "GUARD_ORDER": "newest_wins",
		"GUARD_CANCEL_OLDER": "1", "GUARD_JOB_REGEX": "deploy", "GUARD_STAGE_REGEX": "prod"}), base)
	if err != nil {
		t.Fatal(err)
	}
	want := Spec{RefRegex: "^env$", StatusRegex: "pending", Timeout: 42 * time.Second, NoWait: true, Order: NewestWins,
		CancelOlder: true, JobRegex: "deploy", StageRegex: "prod"}
	if s != want {
		t.Fatalf("spec = %+v\nwant %+v", s, want)
	}
	if _, err := SpecFromVariables(vars(map[string]string{"GUARD_TIMEOUT": "1h"}), Spec{}); err == nil ||
		!strings.Contains(err.Error(), "GUARD_TIMEOUT") {
		t.Fatalf("bad timeout: %v", err)
	}
	if got := TokenVariable(vars(map[string]string{"PRIVATE_TOKEN": "a", "GUARD_PRIVATE_TOKEN": "b"})); got != "GUARD_PRIVATE_TOKEN" {
		t.Fatalf("token variable = %q", got)
	}
	if got := TokenVariable(vars(map[string]string{"PRIVATE_TOKEN": "a"})); got != "PRIVATE_TOKEN" {
		t.Fatalf("token variable = %q", got)
	}
	if got := TokenVariable(vars(map[string]string{})); got != "" {
		t.Fatalf("token variable = %q", got)
	}
}

func snapOf(ps ...Pipeline) *Snapshot { return &Snapshot{Pipelines: ps} }

func running(id int64) Pipeline { return Pipeline{ID: id, Ref: "1-x", Status: "running", SHA: "abc"} }

func TestOrders(t *testing.T) {
	// Pipelines 10 and 30 run; the job is in 20.
	snap := snapOf(running(30), running(20), running(10))
	cases := []struct {
		s       Spec
		verdict Verdict
		block   []int64
		sup     int64
		cancel  []int64
	}{
		{Spec{}, Wait, []int64{10}, 0, nil},
		{Spec{Order: Any}, Wait, []int64{30, 10}, 0, nil},
		{Spec{Order: NewestWins}, Superseded, nil, 30, nil},
		{Spec{NoWait: true}, Conflict, []int64{10}, 0, nil},
	}
	for _, c := range cases {
		d := mustRule(t, c.s).Evaluate(snap, 20)
		if d.Verdict != c.verdict || !slices.Equal(ids(d.Blocking), c.block) || d.SupersededBy != c.sup ||
			!slices.Equal(ids(d.Cancel), c.cancel) {
			t.Errorf("%+v: %+v", c.s, d)
		}
	}
	// The oldest guarded pipeline proceeds under oldest_first: no deadlock.
	if d := mustRule(t, Spec{}).Evaluate(snap, 10); d.Verdict != Proceed {
		t.Errorf("oldest: %+v", d)
	}
	// ... and waits under any (gitlab-job-guard's deadlock).
	if d := mustRule(t, Spec{Order: Any}).Evaluate(snap, 10); d.Verdict != Wait {
		t.Errorf("any: %+v", d)
	}
	// newest_wins: the newest proceeds once older ones are gone; with
	// CancelOlder it asks to cancel them.
	if d := mustRule(t, Spec{Order: NewestWins}).Evaluate(snap, 30); d.Verdict != Wait || !slices.Equal(ids(d.Blocking), []int64{20, 10}) {
		t.Errorf("newest: %+v", d)
	}
	d := mustRule(t, Spec{Order: NewestWins, CancelOlder: true, NoWait: true}).Evaluate(snap, 30)
	if d.Verdict != Wait || !slices.Equal(ids(d.Cancel), []int64{20, 10}) {
		t.Errorf("cancel older: %+v", d)
	}
	if d := mustRule(t, Spec{Order: NewestWins}).Evaluate(snapOf(running(30)), 30); d.Verdict != Proceed {
		t.Errorf("alone: %+v", d)
	}
	if got := (Decision{Verdict: Superseded, SupersededBy: 30}).Message(mustRule(t, Spec{})); got != "superseded by pipeline 30" {
		t.Errorf("message %q", got)
	}
}

func TestNarrowing(t *testing.T) {
	snap := snapOf(running(10), running(11), running(12), running(20))
	snap.Jobs = map[int64][]Job{
		10: {{Name: "deploy-prod", Stage: "deploy", Status: "success"}, {Name: "test", Stage: "test", Status: "running"}},
		11: {{Name: "deploy-prod", Stage: "deploy", Status: "running"}},
		12: {{Name: "deploy-staging", Stage: "staging", Status: "running"}},
		// 20's jobs unknown
	}
	r := mustRule(t, Spec{JobRegex: "^deploy", Order: Any})
	if got := ids(r.Evaluate(snap, 99).Blocking); !slices.Equal(got, []int64{11, 12, 20}) {
		t.Errorf("by job: %v (20 not fetched counts)", got)
	}
	r = mustRule(t, Spec{JobRegex: "^deploy", StageRegex: "^deploy$", Order: Any})
	if got := ids(r.Evaluate(snap, 99).Blocking); !slices.Equal(got, []int64{11, 20}) {
		t.Errorf("by job and stage: %v", got)
	}
	r = mustRule(t, Spec{StageRegex: "test"})
	if got := ids(r.Evaluate(snap, 15).Blocking); !slices.Equal(got, []int64{10}) {
		t.Errorf("by stage: %v", got)
	}
	if got := r.NeedJobs(snap.Pipelines, 15); !slices.Equal(got, []int64{10, 11, 12}) {
		t.Errorf("need jobs (oldest_first skips newer): %v", got)
	}
	if mustRule(t, Spec{}).NeedJobs(snap.Pipelines, 15) != nil {
		t.Error("unnarrowed rule needs no jobs")
	}
	if got := mustRule(t, Spec{StatusRegex: "running|pending"}).JobScope(); !slices.Equal(got, []string{"pending", "running"}) {
		t.Errorf("job scope %v", got)
	}
}

func TestPipelineLine(t *testing.T) {
	p := Pipeline{ID: 47, Status: "running", SHA: "a91957a8", Ref: "12-x"}
	if got := p.String(); got != "Pipeline #47 running    a91957a8 12-x" {
		t.Fatalf("%q", got)
	}
}

// The regular expressions of gitlab-job-guard's documentation compile (Go's
// RE2) and match what it says they match.
func TestDocumentedExamples(t *testing.T) {
	for _, c := range []struct {
		ref     string
		yes, no []string
	}{
		{`^v[0-9\.]+`, []string{"v1.2.3"}, []string{"main", "1.2"}},
		{`^master$`, []string{"master"}, []string{"master-deployment", "feature/master"}},
		{`^(master|dev(elop)?)$`, []string{"master", "dev", "develop"}, []string{"devel", "main"}},
		{`^(feature|release|hotfix)/`, []string{"feature/x", "hotfix/1"}, []string{"features/x", "x/feature/y"}},
		{`^[0-9]\-`, []string{"1-fix"}, []string{"12-fix", "fix-1"}},
		{`^v?[\d.]+$`, []string{"v1.0.9", "2.0"}, []string{"v1.0-rc1", "main"}},
		{`^environment/`, []string{"environment/dc1-prod"}, []string{"env/dc1"}},
		{`^environment/dc1.+`, []string{"environment/dc1-prod"}, []string{"environment/dc1", "environment/dc2-prod"}},
		{`master`, []string{"feature/master-document"}, []string{"main"}},
		{`.+`, []string{"anything"}, nil},
	} {
		r := mustRule(t, Spec{RefRegex: c.ref, StatusRegex: "running|pending"})
		for _, ref := range c.yes {
			if len(r.Matching([]Pipeline{{ID: 1, Ref: ref, Status: "pending"}}, 9)) != 1 {
				t.Errorf("%s should match %q", c.ref, ref)
			}
		}
		for _, ref := range c.no {
			if len(r.Matching([]Pipeline{{ID: 1, Ref: ref, Status: "running"}}, 9)) != 0 {
				t.Errorf("%s should not match %q", c.ref, ref)
			}
		}
	}
}

// A canceling older pipeline blocks a GUARD_CANCEL_OLDER job (its jobs
// still stop); without GUARD_CANCEL_OLDER the status regex alone decides,
// as gitlab-job-guard.
func TestCancelingPipelines(t *testing.T) {
	snap := &Snapshot{Pipelines: []Pipeline{{ID: 9, Ref: "1-own", Status: "running"}, {ID: 5, Ref: "1-old", Status: "canceling"},
		{ID: 4, Ref: "main", Status: "canceling"}}}
	d := mustRule(t, Spec{Order: NewestWins, CancelOlder: true}).Evaluate(snap, 9)
	if d.Verdict != Wait || !slices.Equal(ids(d.Blocking), []int64{5}) || len(d.Cancel) != 0 {
		t.Fatalf("cancel older: %+v", d)
	}
	if d := mustRule(t, Spec{Order: NewestWins, CancelOlder: true, NoWait: true}).Evaluate(snap, 9); d.Verdict != Wait {
		t.Fatalf("cancel older, no wait: %+v", d)
	}
	if d := mustRule(t, Spec{Order: NewestWins}).Evaluate(snap, 9); d.Verdict != Proceed {
		t.Fatalf("newest_wins: %+v", d)
	}
	if q := mustRule(t, Spec{Order: NewestWins, CancelOlder: true}).Query(); !slices.Equal(q.Statuses, []string{"running", "canceling"}) {
		t.Fatalf("query %+v", q)
	}
}

package config

import (
	"strings"
	"testing"
)

func TestQuotaComputation(t *testing.T) {
	c, err := Load("testdata/heptapod.toml", execs)
	if err != nil {
		t.Fatal(err)
	}
	q := c.QuotaComputation
	if q == nil || q.ReferenceRunner != "clever" || q.ReferenceFlavor != "M" || q.ReferenceJobsCount != 10 || q.RunnerIndex != 0 {
		t.Fatalf("quota_computation: %+v", q)
	}
	c, err = Load(write(t, minimal), execs)
	if err != nil || c.QuotaComputation != nil {
		t.Fatalf("without the table: %+v %v", c.QuotaComputation, err)
	}
	named := strings.Replace(minimal, "[[runners]]\n", "[[runners]]\nname = \"a\"\n", 1) + "[[runners]]\nname = \"b\"\nurl = \"https://g\"\ntoken = \"glrt-other\"\nexecutor = \"local-docker\"\n"
	c, err = Load(write(t, named+"[quota_computation]\nreference_runner = \"b\"\nreference_flavor = \"M\"\nreference_jobs_count = 3\n"), execs)
	if err != nil || c.QuotaComputation == nil || c.QuotaComputation.RunnerIndex != 1 {
		t.Fatalf("second runner as reference: %v", err)
	}
}

func TestQuotaComputationErrors(t *testing.T) {
	named := strings.Replace(minimal, "[[runners]]\n", "[[runners]]\nname = \"clever\"\n", 1)
	cases := map[string]struct {
		table, body string
		want        []string
	}{
		"empty": {"[quota_computation]\n", named, []string{
			"quota_computation.reference_runner: required", "quota_computation.reference_flavor: required", "quota_computation.reference_jobs_count: required"}},
		"unknown runner": {"[quota_computation]\nreference_runner = \"nope\"\nreference_flavor = \"M\"\nreference_jobs_count = 2\n", named,
			[]string{`quota_computation.reference_runner: no [[runners]] entry is named "nope" (names: "clever")`}},
		"no names": {"[quota_computation]\nreference_runner = \"nope\"\nreference_flavor = \"M\"\nreference_jobs_count = 2\n", minimal,
			[]string{`quota_computation.reference_runner: no [[runners]] entry is named "nope" (no runner has a name)`}},
		"zero count": {"[quota_computation]\nreference_runner = \"clever\"\nreference_flavor = \"M\"\nreference_jobs_count = 0\n", named,
			[]string{"quota_computation.reference_jobs_count: must be a positive number of jobs"}},
		"absurd count": {"[quota_computation]\nreference_runner = \"clever\"\nreference_flavor = \"M\"\nreference_jobs_count = 1000000\n", named,
			[]string{"quota_computation.reference_jobs_count: 1000000 is absurd"}},
		"wrong type": {"[quota_computation]\nreference_runner = \"clever\"\nreference_flavor = 3\nreference_jobs_count = \"2\"\n", named,
			[]string{"quota_computation.reference_flavor: wrong type", "quota_computation.reference_jobs_count: wrong type"}},
		"unknown key": {"[quota_computation]\nreference_runner = \"clever\"\nreference_flavor = \"M\"\nreference_jobs_count = 2\nweight = 3\n", named,
			[]string{"quota_computation.weight: unknown key"}},
		"not a table": {"", "quota_computation = 3\n" + named, []string{"quota_computation: wrong type"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Load(write(t, tc.body+tc.table), execs)
			if err == nil {
				t.Fatal("no error")
			}
			if name == "not a table" && strings.Contains(err.Error(), "required") {
				t.Errorf("a table that is not one has no missing keys:\n%v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("want %q in:\n%v", w, err)
				}
			}
		})
	}
}

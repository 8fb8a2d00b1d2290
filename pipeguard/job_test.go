package pipeguard

import (
	"errors"
	"strings"
	"testing"
)

func TestFromJobVariables(t *testing.T) {
	base := map[string]string{"CI_API_V4_URL": "https://gitlab.example.com/api/v4", "CI_PROJECT_ID": "42", "CI_PIPELINE_ID": "1001"}
	with := func(kv ...string) Lookup {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return vars(m)
	}
	if _, active, err := FromJobVariables(with(), "cfg"); active || err != nil {
		t.Fatalf("no guard asked: %v %v", active, err)
	}
	g, active, err := FromJobVariables(with("PAAS_GUARD_PIPELINES", "true", "PRIVATE_TOKEN", "glpat-job"), "cfg")
	if !active || err != nil || g.Token != "glpat-job" || g.TokenVariable != "PRIVATE_TOKEN" || g.PipelineID != 1001 ||
		g.Project != "42" || g.Rule.RefRegex != DefaultRefRegex || g.Name() != "pipelines:42" {
		t.Fatalf("%+v %v %v", g, active, err)
	}
	g, _, err = FromJobVariables(with("GUARD_REF_REGEX", "^main$"), "glpat-config")
	if err != nil || g.Token != "glpat-config" || g.TokenVariable != "" || g.Rule.Query().Ref != "main" {
		t.Fatalf("configured token: %+v %v", g, err)
	}
	if _, _, err := FromJobVariables(with("GUARD_REF_REGEX", "^main$"), ""); !errors.Is(err, ErrNoToken) {
		t.Fatalf("no token: %v", err)
	}
	if _, _, err := FromJobVariables(with("GUARD_STATUS_REGEX", "(", "PRIVATE_TOKEN", "x"), ""); err == nil ||
		!strings.HasPrefix(err.Error(), "GUARD_STATUS_REGEX") {
		t.Fatalf("bad regex: %v", err)
	}
	if _, _, err := FromJobVariables(with("PAAS_GUARD_PIPELINES", "true", "PRIVATE_TOKEN", "x", "CI_PIPELINE_ID", ""), ""); err == nil ||
		!strings.Contains(err.Error(), "CI_PIPELINE_ID") {
		t.Fatalf("no pipeline id: %v", err)
	}
}

package jobrunner

import (
	"strings"
	"testing"
)

// The job's environment gets each variable expanded once, like GitLab
// Runner: $$ is a literal $, a value referring to itself stays bounded,
// a reference to a variable that refers to another is not followed.
func TestVariablesExpandedOnce(t *testing.T) {
	self := strings.Repeat("$A", 8)
	j := runJob(t, jobSpec{
		script: []string{`echo "lit=$LIT"`, `echo "len=${#A}"`, `echo "next=$NEXT"`, `echo "raw=$RAW"`},
		vars: []map[string]any{
			{"key": "LIT", "value": "ab$$cd", "public": true},
			{"key": "A", "value": self, "public": true},
			{"key": "HOST", "value": "example.com", "public": true},
			{"key": "URL", "value": "https://$HOST", "public": true},
			{"key": "NEXT", "value": "$URL/x", "public": true},
			{"key": "RAW", "value": "$HOST", "public": true, "raw": true},
		},
	})
	tr := string(j.Trace)
	if j.Status != "success" {
		t.Fatalf("%s\n%s", j.Status, tr)
	}
	for _, want := range []string{"lit=ab$cd\n", "len=" + itoa(int64(8*len(self))) + "\n", "next=https://$HOST/x\n", "raw=$HOST\n"} {
		if !strings.Contains(tr, want) {
			t.Errorf("log lacks %q:\n%s", want, tr)
		}
	}
}

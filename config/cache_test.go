package config

import (
	"strings"
	"testing"
)

// [runners.cache] max_age is forwarded to the inner runner, which acts on
// it: the daemon accepts a positive number of seconds and refuses anything
// else with the key named.
func TestInnerCacheMaxAge(t *testing.T) {
	for _, ok := range []string{"", "max_age = 86400", "max_age = 0.5"} {
		c, err := Load(write(t, minimal+"[runners.cache]\n"+ok+"\n"), execs)
		if err != nil {
			t.Errorf("%q: %v", ok, err)
			continue
		}
		if c.Runners[0].Inner["cache"] == nil {
			t.Errorf("%q: [runners.cache] not forwarded", ok)
		}
	}
	for _, bad := range []string{"max_age = 0", "max_age = -1", "max_age = nan", "max_age = inf", `max_age = "1d"`} {
		_, err := Load(write(t, minimal+"[runners.cache]\n"+bad+"\n"), execs)
		if err == nil || !strings.Contains(err.Error(), ":7: runners[0].cache.max_age:") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

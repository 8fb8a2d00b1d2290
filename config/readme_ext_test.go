package config_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/jobrunner"
)

// Keys the loader forwards to the inner runner as written: their defaults
// are jobrunner's, and README's reference must state them.
func TestREADMEReferenceInnerRunnerDefaults(t *testing.T) {
	first := regexp.MustCompile("^`([^`]+)`")
	cell := func(key string) string {
		c := config.ReadmeDefaultCell(t, key)
		m := first.FindStringSubmatch(c)
		if m == nil {
			t.Fatalf("README.md: the default of %s, %q, does not start with a value in backticks", key, c)
		}
		return m[1]
	}
	path := filepath.Join(t.TempDir(), "runner.toml")
	if err := os.WriteFile(path, []byte("[[runners]]\nurl = \"https://gitlab.example.com\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rc, err := jobrunner.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cell("runners.builds_dir"), rc.BuildsDir; got != want {
		t.Errorf("README.md: builds_dir defaults to %q; the inner runner's default is %q", got, want)
	}
	if got, want := cell("runners.output_limit"), strconv.FormatInt(rc.OutputLimit, 10); got != want {
		t.Errorf("README.md: output_limit defaults to %s; the inner runner's default is %s", got, want)
	}
	if got, want := cell("runners.cache.max_age"), strconv.Itoa(int(rc.Cache.MaxAge/time.Second)); got != want {
		t.Errorf("README.md: [runners.cache] max_age defaults to %s; the inner runner's default is %s", got, want)
	}
}

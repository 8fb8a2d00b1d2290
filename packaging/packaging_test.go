// Package packaging_test checks the files of packaging/ with the tools that
// consume them: systemd-analyze, systemd-sysusers, systemd-tmpfiles and
// make install. Each check is skipped when its tool is absent.
package packaging_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
}

func root(t *testing.T) string {
	t.Helper()
	r, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func makeInstall(t *testing.T, vars ...string) {
	t.Helper()
	cmd := exec.Command("make", append([]string{"-C", root(t), "install"}, vars...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install %v: %v\n%s", vars, err, out)
	}
}

// systemd-analyze verify on the unit as `make install` writes it, where the
// binary exists: any warning fails the test (verify exits 0 on most).
func TestUnitVerifies(t *testing.T) {
	need(t, "systemd-analyze", "make")
	prefix := filepath.Join(t.TempDir(), "usr")
	makeInstall(t, "PREFIX="+prefix)
	unit := filepath.Join(prefix, "lib/systemd/system/paas-runner.service")
	out, err := exec.Command("systemd-analyze", "verify", unit).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	b, _ := os.ReadFile(unit)
	for _, want := range []string{"\nType=notify\n", "ExecStart=" + prefix + "/bin/paas-runner /etc/paas-runner/config.toml",
		"ExecReload=/bin/kill -HUP $MAINPID", "KillSignal=SIGTERM", "Restart=always", "User=paas-runner",
		"StateDirectory=paas-runner", "ConfigurationDirectory=paas-runner", "NoNewPrivileges=yes", "ProtectSystem=strict",
		"ProtectHome=yes", "PrivateTmp=yes", "ReadWritePaths=/var/lib/paas-runner\n", "SupplementaryGroups=docker",
		"Documentation=file://" + prefix + "/share/doc/paas-runner/README.md"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	// the documentation it points to is installed
	if _, err := os.Stat(filepath.Join(prefix, "share/doc/paas-runner/README.md")); err != nil {
		t.Error(err)
	}
}

// The same unit with a mistake is caught: the check above can fail.
func TestUnitVerifyCatchesMistakes(t *testing.T) {
	need(t, "systemd-analyze")
	b, err := os.ReadFile("systemd/paas-runner.service")
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(b), "\nType=notify\n", "\nType=notfy\n", 1)
	bad = strings.Replace(bad, "/usr/local/bin/paas-runner", "/bin/true", 1)
	p := filepath.Join(t.TempDir(), "paas-runner.service")
	os.WriteFile(p, []byte(bad), 0o644)
	out, _ := exec.Command("systemd-analyze", "verify", p).CombinedOutput()
	if !strings.Contains(string(out), "notfy") {
		t.Fatalf("systemd-analyze said nothing of a bad Type=:\n%s", out)
	}
}

// TimeoutStopSec leaves the drain its shutdown_timeout (default 60 s) and
// the state save.
func TestTimeoutStopAboveShutdownTimeout(t *testing.T) {
	b, err := os.ReadFile("systemd/paas-runner.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "TimeoutStopSec="); ok {
			if n, err := strconv.Atoi(v); err != nil || n <= 60 {
				t.Fatalf("TimeoutStopSec=%s is not above the default shutdown_timeout (60)", v)
			}
			return
		}
	}
	t.Fatal("no TimeoutStopSec")
}

// make install with DESTDIR puts every file under it, paths in the unit
// without DESTDIR.
func TestMakeInstallDestdir(t *testing.T) {
	need(t, "make")
	dest := t.TempDir()
	makeInstall(t, "DESTDIR="+dest, "PREFIX=/usr")
	for _, f := range []string{"usr/bin/paas-runner", "usr/bin/paas-runner-register", "usr/lib/systemd/system/paas-runner.service",
		"usr/lib/sysusers.d/paas-runner.conf", "usr/lib/tmpfiles.d/paas-runner.conf", "usr/share/doc/paas-runner/README.md"} {
		if _, err := os.Stat(filepath.Join(dest, f)); err != nil {
			t.Error(err)
		}
	}
	b, _ := os.ReadFile(filepath.Join(dest, "usr/lib/systemd/system/paas-runner.service"))
	if !strings.Contains(string(b), "\nExecStart=/usr/bin/paas-runner /etc/paas-runner/config.toml\n") || strings.Contains(string(b), dest) {
		t.Fatalf("installed unit:\n%s", b)
	}
	if fi, err := os.Stat(filepath.Join(dest, "usr/bin/paas-runner")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("binary: %v %v", fi, err)
	}
}

// The sysusers.d snippet creates the unit's user, and tmpfiles.d its
// directories, 0700 and owned by it, in a scratch root.
func TestSysusersAndTmpfiles(t *testing.T) {
	need(t, "systemd-sysusers", "systemd-tmpfiles")
	if os.Geteuid() != 0 {
		t.Skip("systemd-sysusers --root needs root")
	}
	r := t.TempDir()
	os.MkdirAll(filepath.Join(r, "etc"), 0o755)
	os.WriteFile(filepath.Join(r, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(r, "etc/group"), []byte("root:x:0:\n"), 0o644)
	abs := func(p string) string { a, _ := filepath.Abs(p); return a }
	if out, err := exec.Command("systemd-sysusers", "--root="+r, abs("sysusers.d/paas-runner.conf")).CombinedOutput(); err != nil {
		t.Fatalf("systemd-sysusers: %v\n%s", err, out)
	}
	pw, _ := os.ReadFile(filepath.Join(r, "etc/passwd"))
	if !strings.Contains(string(pw), "\npaas-runner:x:") || !strings.Contains(string(pw), ":/var/lib/paas-runner:") {
		t.Fatalf("passwd:\n%s", pw)
	}
	if out, err := exec.Command("systemd-tmpfiles", "--root="+r, "--create", abs("tmpfiles.d/paas-runner.conf")).CombinedOutput(); err != nil {
		t.Fatalf("systemd-tmpfiles: %v\n%s", err, out)
	}
	for _, d := range []string{"etc/paas-runner", "var/lib/paas-runner"} {
		fi, err := os.Stat(filepath.Join(r, d))
		if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
			t.Fatalf("%s: %v %v", d, fi, err)
		}
	}
}

// make test runs go test -race, which needs cgo: on a machine without a C
// compiler, test-tools installs Debian's gcc as root and otherwise stops,
// saying what to install (instead of go test failing on -race).
func TestTestToolsWantsACCompiler(t *testing.T) {
	mk, err := exec.LookPath("make")
	if err != nil {
		t.Skip("make is not installed")
	}
	bin := t.TempDir() // no gcc, no apt-get; id says a user
	if err := os.WriteFile(filepath.Join(bin, "id"), []byte("#!/bin/sh\necho 1000\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(mk, "-s", "-C", root(t), "test-tools")
	cmd.Env = []string{"PATH=" + bin, "HOME=" + t.TempDir()}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "go test -race needs cgo: sudo apt-get install gcc") {
		t.Fatalf("make test-tools without a C compiler: %v\n%s", err, out)
	}
}

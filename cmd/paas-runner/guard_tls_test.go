package main

import (
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/internal/testca"
)

// A GitLab behind a private CA: the guard trusts CI_SERVER_TLS_CA_FILE
// (the file variable a job gets with the runner's tls-ca-file); without it
// the certificate is refused (an API error, retried until the timeout); a
// file without a certificate is a usage error.
func TestGuardTrustsJobCAFile(t *testing.T) {
	ca, err := testca.New()
	if err != nil {
		t.Fatal(err)
	}
	srv := coordinatortest.NewTLS(t, ca)
	srv.AddAPIToken(guardToken, "read_api")
	own := srv.AddPipeline(7, "12-mine", "running")
	caFile, err := ca.WriteFile(t.TempDir(), "ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	g := &guardCase{t: t, srv: srv, env: map[string]string{"CI_API_V4_URL": srv.URL + "/api/v4", "CI_PROJECT_ID": "7",
		"PRIVATE_TOKEN": guardToken, "CI_PIPELINE_ID": fmt.Sprint(own), "CI_SERVER_TLS_CA_FILE": caFile},
		opts: guardOptions{interval: func() time.Duration { return 5 * time.Millisecond }, pid: 4242}}
	if r := g.run("-x"); r.code != 0 || !strings.Contains(r.stdout, "proceeding ...") {
		t.Fatalf("with the CA: %+v", r)
	}
	delete(g.env, "CI_SERVER_TLS_CA_FILE")
	if r := g.run("-x", "-w", "1"); r.code != 11 || !strings.Contains(r.stdout, "certificate") {
		t.Fatalf("without the CA: %+v", r)
	}
	empty := filepath.Join(t.TempDir(), "empty.pem")
	os.WriteFile(empty, []byte("not a certificate\n"), 0o600)
	g.env["CI_SERVER_TLS_CA_FILE"] = empty
	if r := g.run("-x"); r.code != 2 || !strings.Contains(r.stderr, "CI_SERVER_TLS_CA_FILE "+empty+": no PEM certificate found") {
		t.Fatalf("bad CA file: %+v", r)
	}
}

// In a job image without any CA bundle (busybox, scratch) the guard still
// has roots to check GitLab's certificate with: the fallback set.
func TestGuardFallbackRoots(t *testing.T) {
	if os.Getenv("PAAS_RUNNER_TEST_ROOTS") == "1" {
		pool, err := x509.SystemCertPool()
		//lint:ignore SA1019 only counting: the pool is not the platform verifier's here (Linux)
		if err != nil || len(pool.Subjects()) == 0 {
			fmt.Println("no roots", err)
			os.Exit(3)
		}
		fmt.Println("roots ok")
		os.Exit(0)
	}
	empty := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestGuardFallbackRoots$")
	cmd.Env = append(os.Environ(), "PAAS_RUNNER_TEST_ROOTS=1", "SSL_CERT_FILE="+filepath.Join(empty, "none.pem"), "SSL_CERT_DIR="+empty)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "roots ok") {
		t.Fatalf("%v: %s", err, out)
	}
}

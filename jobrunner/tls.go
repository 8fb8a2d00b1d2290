package jobrunner

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"
)

// GitLab behind a private CA: runner.toml's tls-ca-file (RunnerConfig.TLSCA)
// is trusted, besides the system's certificates, by the API client
// (coordinator.Config.TLSCAFile: log, updates, artifacts) and by git
// (fetchSources), and the job gets it as CI_SERVER_TLS_CA_FILE.

// checkGitLabTLS fails at once, with a message naming tls-ca-file, when
// GitLab's certificate is not trusted with ca: otherwise every log append
// and update would be retried until GitLab times the job out. Other dial
// errors are left to the usual retries (GitLab may be down for a moment).
func checkGitLabTLS(ctx context.Context, rawURL string, ca []byte) error {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "https" || u.Hostname() == "" {
		return nil
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "443")
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if len(ca) > 0 {
		pool.AppendCertsFromPEM(ca)
	}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 30 * time.Second},
		Config: &tls.Config{RootCAs: pool, ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err == nil {
		conn.Close()
		return nil
	}
	var cv *tls.CertificateVerificationError
	if errors.As(err, &cv) {
		hint := "give the runner GitLab's CA certificate with tls-ca-file"
		if len(ca) > 0 {
			hint = "tls-ca-file does not hold the CA that signed it"
		}
		return fmt.Errorf("GitLab at %s: its TLS certificate is not trusted (%v): %s", u.Host, cv.Err, hint)
	}
	return nil
}

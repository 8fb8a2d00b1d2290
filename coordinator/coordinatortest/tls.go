package coordinatortest

import (
	"net/http/httptest"

	"gitlab.com/paas-runner/paas-runner/internal/testca"
)

// NewTLS starts a fake GitLab that serves HTTPS with a certificate ca
// signed, as a GitLab behind a private CA: only clients given ca.PEM (a
// runner's tls-ca-file) trust it; the others fail the TLS handshake.
// s.URL is https://127.0.0.1:port, and job payloads point there.
func NewTLS(t TB, ca *testca.CA) *Server {
	t.Helper()
	cfg, err := ca.ServerConfig()
	if err != nil {
		t.Fatalf("fake GitLab over TLS: %v", err)
	}
	return newServer(t, func(hs *httptest.Server) {
		hs.TLS = cfg
		hs.StartTLS()
	})
}

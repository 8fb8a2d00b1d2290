package coordinatortest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"strings"
	"testing"

	"gitlab.com/paas-runner/paas-runner/internal/testca"
)

func TestNewTLSTrustedOnlyWithTheCA(t *testing.T) {
	ca, err := testca.New()
	if err != nil {
		t.Fatal(err)
	}
	s := NewTLS(t, ca)
	s.AddRunner("glrt-tls")
	if !strings.HasPrefix(s.URL, "https://127.0.0.1:") {
		t.Fatalf("URL %s, want https", s.URL)
	}
	if j := s.Enqueue("", nil); !strings.HasPrefix(j.Payload["git_info"].(map[string]any)["repo_url"].(string), "https://") {
		t.Fatalf("payload repo_url %v, want the https URL", j.Payload["git_info"])
	}
	req := func(c *http.Client) (*http.Response, error) {
		r, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, s.URL+"/api/v4/runners/verify",
			strings.NewReader(`{"token":"glrt-tls"}`))
		r.Header.Set("Content-Type", "application/json")
		return c.Do(r)
	}
	// without the CA: the handshake fails on the unknown authority
	_, err = req(&http.Client{})
	var uae x509.UnknownAuthorityError
	if !errors.As(err, &uae) {
		t.Fatalf("without the CA: %v, want an unknown authority error", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.PEM)
	resp, err := req(&http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}})
	if err != nil {
		t.Fatalf("with the CA: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("verify over TLS: %d", resp.StatusCode)
	}
}

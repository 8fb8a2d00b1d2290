package main

import (
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/guard"
)

// The pipeline guard's watcher trusts the runners' tls-ca-file: a GitLab
// with a private CA answers its pipelines API calls.
func TestPipelineGuardTrustsTLSCAFile(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte("[]"))
	}))
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get(srv.URL); err == nil {
		t.Fatal("the test server is trusted without its CA")
	}
	cfg := &config.Config{Runners: []config.Runner{{Token: "glrt-a-0123456789"}, {Token: "glrt-b-0123456789", TLSCAFile: ca}}}
	p := buildPipelineGuard(cfg, nil, "r_000000000000", guard.NewCore(), zap.NewNop())
	if p.Watcher.HTTP == nil {
		t.Fatal("the watcher uses the default client")
	}
	resp, err := p.Watcher.HTTP.Get(srv.URL + "/api/v4/projects/1/pipelines")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if p := buildPipelineGuard(&config.Config{Runners: []config.Runner{{Token: "glrt-a-0123456789"}}}, nil, "r_000000000000", guard.NewCore(), zap.NewNop()); p.Watcher.HTTP != nil {
		t.Fatal("a client without any tls-ca-file")
	}
}

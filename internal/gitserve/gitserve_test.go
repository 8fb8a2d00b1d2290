package gitserve

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"testing"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/storage/memory"

	"gitlab.com/paas-runner/paas-runner/internal/testca"
)

func TestNewTLSClonesOnlyWithTheCA(t *testing.T) {
	ca, err := testca.New()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	sha, err := MakeRepo(root, "g/p.git", map[string]string{"README": "hello\n"})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ca.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewTLS(root, func(u, p string) bool { return u == "gitlab-ci-token" && p == "tok" }, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	u := s.URLWith("g/p.git", "gitlab-ci-token", "tok")
	if !strings.HasPrefix(u, "https://gitlab-ci-token:tok@127.0.0.1:") {
		t.Fatalf("URL %s", u)
	}
	ctx := context.Background()
	_, err = git.CloneContext(ctx, memory.NewStorage(), nil, &git.CloneOptions{URL: u})
	var uae x509.UnknownAuthorityError
	if err == nil || (!errors.As(err, &uae) && !strings.Contains(err.Error(), "certificate signed by unknown authority")) {
		t.Fatalf("clone without the CA: %v, want an unknown authority error", err)
	}
	r, err := git.CloneContext(ctx, memory.NewStorage(), nil, &git.CloneOptions{URL: u, CABundle: ca.PEM})
	if err != nil {
		t.Fatalf("clone with the CA: %v", err)
	}
	head, err := r.Head()
	if err != nil || head.Hash().String() != sha {
		t.Fatalf("head %v %v, want %s", head, err, sha)
	}
}

package jobrunner

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"sort"
	"strings"

	"github.com/docker/docker/api/types/registry"

	"gitlab.com/paas-runner/paas-runner/job"
)

// Registry credentials for pulling the job's and the services' images, as
// gitlab-runner resolves them: DOCKER_AUTH_CONFIG (a job variable or the
// runner's environment; Docker's config.json shape), then the payload's
// registry credentials (the GitLab registry's). The first source to name a
// registry wins; an image takes the credentials of the longest registry
// path that contains it. Registry names are normalised: docker.io,
// index.docker.io and registry-1.docker.io are Docker Hub, a bare name
// (alpine, library/alpine) is on Docker Hub, host names are lower-cased,
// ports kept.

const (
	sourceDockerAuthConfig = "$DOCKER_AUTH_CONFIG"
	sourceJobPayload       = "job payload (GitLab Registry)"
)

// registryCred is one registry's credentials and where they came from.
type registryCred struct {
	path   string // normalised registry path, such as docker.io or registry.example.com:5000/group
	source string
	auth   registry.AuthConfig
}

// dockerConfigFile is the part of Docker's config.json that
// DOCKER_AUTH_CONFIG uses.
type dockerConfigFile struct {
	Auths map[string]struct {
		Auth          string `json:"auth"`
		Username      string `json:"username"`
		Password      string `json:"password"`
		IdentityToken string `json:"identitytoken"`
		RegistryToken string `json:"registrytoken"`
	} `json:"auths"`
	CredsStore  string            `json:"credsStore"`
	CredHelpers map[string]string `json:"credHelpers"`
}

// parseDockerAuthConfig reads DOCKER_AUTH_CONFIG, in server order.
// Credential helpers and stores need programs the job's host does not
// have: they are reported in warn and skipped.
func parseDockerAuthConfig(s string) (auths []registry.AuthConfig, warn string, err error) {
	if strings.TrimSpace(s) == "" {
		return nil, "", nil
	}
	var f dockerConfigFile
	if err := json.Unmarshal([]byte(s), &f); err != nil {
		return nil, "", fmt.Errorf("not JSON in Docker's config.json format: %w", err)
	}
	if f.CredsStore != "" || len(f.CredHelpers) > 0 {
		warn = "credential helpers (credsStore, credHelpers) are not supported: only \"auths\" entries are used"
	}
	servers := make([]string, 0, len(f.Auths))
	for s := range f.Auths {
		servers = append(servers, s)
	}
	sort.Strings(servers)
	for _, server := range servers {
		e := f.Auths[server]
		a := registry.AuthConfig{ServerAddress: server, Username: e.Username, Password: e.Password,
			IdentityToken: e.IdentityToken, RegistryToken: e.RegistryToken}
		if e.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(e.Auth)
			if err != nil {
				return nil, warn, fmt.Errorf("auths.%s.auth: not base64", server)
			}
			u, p, ok := strings.Cut(string(raw), ":")
			if !ok {
				return nil, warn, fmt.Errorf("auths.%s.auth: want base64 of user:password", server)
			}
			a.Username, a.Password = u, p
		}
		auths = append(auths, a)
	}
	return auths, warn, nil
}

var schemeRe = regexp.MustCompile(`(?i)^https?://`)

// registryPath normalises a credentials server address: a URL
// (https://index.docker.io/v1/) gives its host; otherwise the path without
// trailing slash or tag; Docker Hub's names are docker.io; the host is
// lower-cased.
func registryPath(server string) string {
	if schemeRe.MatchString(server) {
		host, _, _ := strings.Cut(schemeRe.ReplaceAllString(server, ""), "/")
		return hubHost(strings.ToLower(host))
	}
	p := strings.TrimSuffix(server, "/")
	if t, s := strings.LastIndex(p, ":"), strings.LastIndex(p, "/"); s >= 0 && t > s {
		p = p[:t]
	}
	host, rest, hasRest := strings.Cut(p, "/")
	host = hubHost(strings.ToLower(host))
	if !hasRest {
		return host
	}
	return host + "/" + rest
}

func hubHost(h string) string {
	switch h {
	case "index.docker.io", "registry-1.docker.io":
		return "docker.io"
	}
	return h
}

// imagePath normalises an image reference for matching: no tag nor
// digest, Docker Hub images under docker.io, the host lower-cased.
func imagePath(ref string) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	dir, name := path.Split(ref)
	name, _, _ = strings.Cut(name, ":")
	ref = path.Join(dir, name)
	first, rest, hasRest := strings.Cut(ref, "/")
	if !hasRest || (!strings.ContainsAny(first, ".:") && !strings.EqualFold(first, "localhost")) {
		return "docker.io/" + ref
	}
	return hubHost(strings.ToLower(first)) + "/" + rest
}

// registryCreds lists the known credentials, first source first; a
// registry named again by a later source keeps the first credentials.
func registryCreds(dockerAuthConfig string, creds []job.Credentials) ([]registryCred, []string) {
	var out []registryCred
	var warns []string
	seen := map[string]bool{}
	add := func(source string, a registry.AuthConfig) {
		p := registryPath(a.ServerAddress)
		if seen[p] {
			return
		}
		seen[p] = true
		out = append(out, registryCred{path: p, source: source, auth: a})
	}
	auths, warn, err := parseDockerAuthConfig(dockerAuthConfig)
	if warn != "" {
		warns = append(warns, "DOCKER_AUTH_CONFIG: "+warn)
	}
	if err != nil {
		warns = append(warns, fmt.Sprintf("Failed to resolve credentials from %s: %v. Credentials from this source will not be used.", sourceDockerAuthConfig, err))
	}
	for _, a := range auths {
		add(sourceDockerAuthConfig, a)
	}
	for _, c := range creds {
		if c.Type == "registry" {
			add(sourceJobPayload, registry.AuthConfig{Username: c.Username, Password: c.Password, ServerAddress: c.URL})
		}
	}
	return out, warns
}

// credsForImage picks the credentials of the longest registry path
// containing the image, or nil.
func credsForImage(ref string, creds []registryCred) *registryCred {
	for p := imagePath(ref); p != ""; {
		for i := range creds {
			if creds[i].path == p {
				return &creds[i]
			}
		}
		i := strings.LastIndex(p, "/")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return nil
}

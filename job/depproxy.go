package job

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// DependencyProxyVariable names the job variable holding the group's
// Dependency Proxy image prefix.
const DependencyProxyVariable = "CI_DEPENDENCY_PROXY_GROUP_IMAGE_PREFIX"

// SplitDockerDomain splits an image reference into registry domain and
// remainder the way Docker's reference parser does: a first component
// without "." or ":" that is not "localhost" and is all lowercase is a
// Docker Hub path; index.docker.io is docker.io; Docker Hub images without
// a namespace are in library/.
func SplitDockerDomain(name string) (domain, remainder string) {
	i := strings.IndexRune(name, '/')
	if i == -1 || (!strings.ContainsAny(name[:i], ".:") && name[:i] != "localhost" && strings.ToLower(name[:i]) == name[:i]) {
		domain, remainder = "docker.io", name
	} else {
		domain, remainder = name[:i], name[i+1:]
	}
	if domain == "index.docker.io" {
		domain = "docker.io"
	}
	if domain == "docker.io" && !strings.ContainsRune(remainder, '/') {
		remainder = "library/" + remainder
	}
	return domain, remainder
}

// dependencyProxyName rewrites a Docker Hub image name through prefix;
// other registries are left alone. ok tells whether it was rewritten.
func dependencyProxyName(name, prefix string) (string, bool) {
	domain, rest := SplitDockerDomain(name)
	if domain != "docker.io" {
		return name, false
	}
	return prefix + "/" + rest, true
}

// ServiceAlias is the alias Heptapod derives for a service whose image was
// rewritten: the expanded name without its tag, "/" replaced by "-"
// (tutum/wordpress:latest → tutum-wordpress).
func ServiceAlias(expandedName string) string {
	if i := strings.LastIndex(expandedName, ":"); i >= 0 {
		expandedName = expandedName[:i]
	}
	return strings.ReplaceAll(expandedName, "/", "-")
}

// UseDependencyProxy rewrites a raw job payload so that Docker Hub images of
// the job and its services are pulled through the group's Dependency Proxy,
// when the job has CI_DEPENDENCY_PROXY_GROUP_IMAGE_PREFIX. Names are first
// expanded with the job's variables (see Variables.Expanded). A rewritten service with no alias gets
// the derived one, so that jobs can still reach it by its usual name.
// Unknown payload fields are kept. The payload is returned unchanged when
// there is no prefix.
func UseDependencyProxy(raw json.RawMessage) (json.RawMessage, error) {
	var p struct {
		Variables Variables `json:"variables"`
	}
	if err := json.Unmarshal(raw, &p); err != nil {
		var te *json.UnmarshalTypeError
		if !errors.As(err, &te) || decodeLenient(raw, &p) != nil {
			return nil, fmt.Errorf("reading job variables: %w", err)
		}
	}
	// Names are expanded once against the variables as the job gets them
	// (each expanded once), like GitLab Runner expands image names: the
	// work is bounded whatever the variables say.
	vars := p.Variables.Expanded()
	prefix := vars.Get(DependencyProxyVariable)
	if prefix == "" {
		return raw, nil
	}
	prefix = strings.TrimRight(prefix, "/")
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	if img, ok := doc["image"]; ok && string(img) != "null" {
		var m map[string]any
		if err := json.Unmarshal(img, &m); err != nil {
			return nil, fmt.Errorf("job image: %w", err)
		}
		if name, _ := m["name"].(string); name != "" {
			m["name"], _ = dependencyProxyName(vars.Expand(name), prefix)
			doc["image"], _ = json.Marshal(m)
		}
	}
	if svcs, ok := doc["services"]; ok && string(svcs) != "null" {
		var list []map[string]any
		if err := json.Unmarshal(svcs, &list); err != nil {
			return nil, fmt.Errorf("job services: %w", err)
		}
		for _, m := range list {
			name, _ := m["name"].(string)
			if name == "" {
				continue
			}
			expanded := vars.Expand(name)
			rewritten, ok := dependencyProxyName(expanded, prefix)
			m["name"] = rewritten
			if alias, _ := m["alias"].(string); ok && alias == "" {
				m["alias"] = ServiceAlias(expanded)
			}
		}
		doc["services"], _ = json.Marshal(list)
	}
	return json.Marshal(doc)
}

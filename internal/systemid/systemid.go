// Package systemid keeps the runner manager's system_id in a file next to
// the state file, shared by the daemon and the register command.
package systemid

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"gitlab.com/paas-runner/paas-runner/internal/atomicfile"
)

// FileName is the name of the file, next to the state file, holding the
// runner manager's system_id.
const FileName = ".runner_system_id"

var systemIDRe = regexp.MustCompile(`^[rs]_[0-9a-zA-Z]{12}$`)

// ForStateFile returns the system_id stored next to statePath, generating and
// storing one (r_ + 12 random alphanumerics, like gitlab-runner) the first
// time.
func ForStateFile(statePath string) (string, error) {
	p := filepath.Join(filepath.Dir(statePath), FileName)
	if b, err := os.ReadFile(p); err == nil {
		id := strings.TrimSpace(string(b))
		if !systemIDRe.MatchString(id) {
			return "", fmt.Errorf("%s: %q is not a system id (r_ or s_ and 12 letters or digits)", p, id)
		}
		return id, nil
	} else if !os.IsNotExist(err) {
		return "", fmt.Errorf("reading system id: %w", err)
	}
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	buf := make([]byte, 12)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	for i := range buf {
		buf[i] = alphabet[int(buf[i])%len(alphabet)]
	}
	id := "r_" + string(buf)
	if err := atomicfile.WriteFile(p, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("storing system id: %w", err)
	}
	return id, nil
}

// Package systemid keeps the runner manager's system_id in a file next to
// the state file, shared by the daemon and the register command.
//
// The rule: the state file <dir>/<name> keeps its system_id in
// <dir>/.<name>.runner_system_id, so that two state files in one directory
// (two daemons, two configurations) have distinct system_ids. Earlier
// versions kept one <dir>/.runner_system_id per directory: the first state
// file of the directory that looks for its system_id after an upgrade
// takes that one over (it is copied to its own file), so that an existing
// installation keeps its system_id; any other state file of the directory
// gets a new one. <dir>/.runner_system_id is left in place (it is never
// taken over twice: it is taken when no per-file one holds its value).
package systemid

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"

	"gitlab.com/paas-runner/paas-runner/internal/atomicfile"
)

// FileName is the name of the file earlier versions kept the system_id in,
// next to the state file.
const FileName = ".runner_system_id"

var systemIDRe = regexp.MustCompile(`^[rs]_[0-9a-zA-Z]{12}$`)

// PathFor is where the system_id of statePath is kept.
func PathFor(statePath string) string {
	return filepath.Join(filepath.Dir(statePath), "."+filepath.Base(statePath)+FileName)
}

// ForStateFile returns the system_id of statePath, generating and storing
// one (r_ + 12 random alphanumerics, like gitlab-runner) the first time.
func ForStateFile(statePath string) (string, error) {
	own := PathFor(statePath)
	if id, err := read(own); err == nil || !os.IsNotExist(err) {
		return id, err
	}
	dir := filepath.Dir(statePath)
	// Taking over the directory's file is done under a lock: two daemons
	// starting at once never both take it.
	unlock, err := lock(filepath.Join(dir, FileName+".lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if id, err := read(own); err == nil || !os.IsNotExist(err) {
		return id, err
	}
	id, err := read(filepath.Join(dir, FileName))
	switch {
	case err == nil:
		taken, terr := takenBy(dir, id)
		if terr != nil {
			return "", terr
		}
		if taken {
			id = ""
		}
	case os.IsNotExist(err):
		id = ""
	default:
		return "", err
	}
	if id == "" {
		if id, err = generate(); err != nil {
			return "", err
		}
	}
	if err := atomicfile.WriteFile(own, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("storing system id: %w", err)
	}
	return id, nil
}

func read(p string) (string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		if os.IsNotExist(err) {
			return "", err
		}
		return "", fmt.Errorf("reading system id: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if !systemIDRe.MatchString(id) {
		return "", fmt.Errorf("%s: %q is not a system id (r_ or s_ and 12 letters or digits)", p, id)
	}
	return id, nil
}

// takenBy tells whether a state file of dir already took id over.
func takenBy(dir, id string) (bool, error) {
	ms, err := filepath.Glob(filepath.Join(dir, ".*"+FileName))
	if err != nil {
		return false, err
	}
	for _, m := range ms {
		if filepath.Base(m) == FileName {
			continue
		}
		if other, err := read(m); err == nil && other == id {
			return true, nil
		}
	}
	return false, nil
}

func generate() (string, error) {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	buf := make([]byte, 12)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	for i := range buf {
		buf[i] = alphabet[int(buf[i])%len(alphabet)]
	}
	return "r_" + string(buf), nil
}

func lock(p string) (func(), error) {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("storing system id: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", p, err)
	}
	return func() { f.Close() }, nil
}

// Package systemid keeps the runner manager's system_id in a file next to
// the state file, shared by the daemon and the register command.
//
// The rule: the first state file of a directory keeps its system_id in
// <dir>/.runner_system_id (as earlier versions did for every state file of
// the directory, so that an existing installation keeps its system_id);
// <dir>/.runner_system_id.owner records which state file that is (the
// first one to ask for its system_id, or to be registered, once this
// version runs). Any other state file <dir>/<name> keeps its own in
// <dir>/.<name>.runner_system_id: two state files in one directory (two
// daemons, two configurations) have distinct system_ids. Renaming a state
// file other than the first one gives it a new system_id.
package systemid

import (
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"

	"gitlab.com/paas-runner/paas-runner/internal/atomicfile"
)

// FileName is the name of the file, next to the state file, holding the
// system_id of the directory's first state file.
const FileName = ".runner_system_id"

// ownerFile names the state file FileName belongs to.
const ownerFile = FileName + ".owner"

var systemIDRe = regexp.MustCompile(`^[rs]_[0-9a-zA-Z]{12}$`)

// ForStateFile returns the system_id of statePath, generating and storing
// one (r_ + 12 random alphanumerics, like gitlab-runner) the first time.
func ForStateFile(statePath string) (string, error) { return claim(statePath, generate) }

// Store stores id as statePath's system_id unless statePath already has
// one, and returns the one statePath has then: id, or the one stored
// before (by a daemon that started meanwhile). paas-runner-register calls
// it once GitLab has accepted the runner with id (see Peek).
func Store(statePath, id string) (string, error) {
	if !systemIDRe.MatchString(id) {
		return "", fmt.Errorf("%q is not a system id", id)
	}
	return claim(statePath, func() (string, error) { return id, nil })
}

// Paths are the files next to statePath that Store and ForStateFile may
// write for it.
func Paths(statePath string) []string {
	dir, name := filepath.Dir(statePath), filepath.Base(statePath)
	return []string{filepath.Join(dir, FileName), filepath.Join(dir, ownerFile), filepath.Join(dir, "."+name+FileName)}
}

// Peek returns the system_id ForStateFile would return for statePath
// without creating or claiming any file: the stored one (fresh false), or
// one newly generated (fresh true) for the caller to Store once it has
// used it successfully.
func Peek(statePath string) (id string, fresh bool, err error) {
	dir, name := filepath.Dir(statePath), filepath.Base(statePath)
	if id, err := read(filepath.Join(dir, "."+name+FileName)); err == nil || !os.IsNotExist(err) {
		return id, false, err
	}
	owner, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil && !os.IsNotExist(err) {
		return "", false, fmt.Errorf("reading system id: %w", err)
	}
	if o := strings.TrimSpace(string(owner)); o == "" || o == name {
		if id, err := read(filepath.Join(dir, FileName)); err == nil || !os.IsNotExist(err) {
			return id, false, err
		}
	}
	id, err = generate()
	return id, err == nil, err
}

// claim returns statePath's system_id, storing the one gen gives when it
// has none yet.
func claim(statePath string, gen func() (string, error)) (string, error) {
	dir, name := filepath.Dir(statePath), filepath.Base(statePath)
	own := filepath.Join(dir, "."+name+FileName)
	if id, err := read(own); err == nil || !os.IsNotExist(err) {
		return id, err
	}
	// The owner file is read and claimed under a lock: two daemons
	// starting at once never both take the directory's system_id.
	f, err := os.OpenFile(filepath.Join(dir, ownerFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return "", fmt.Errorf("storing system id: %w", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("locking %s: %w", f.Name(), err)
	}
	owner, err := io.ReadAll(f)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", f.Name(), err)
	}
	switch strings.TrimSpace(string(owner)) {
	case name:
		own = filepath.Join(dir, FileName)
	case "":
		if _, err := f.WriteAt([]byte(name+"\n"), 0); err != nil {
			return "", fmt.Errorf("storing system id: %w", err)
		}
		if err := f.Sync(); err != nil {
			return "", fmt.Errorf("storing system id: %w", err)
		}
		own = filepath.Join(dir, FileName)
	}
	if id, err := read(own); err == nil || !os.IsNotExist(err) {
		return id, err
	}
	id, err := gen()
	if err != nil {
		return "", err
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

// Lookup returns the system_id ForStateFile would return for statePath,
// without creating or claiming anything (for read-only commands): "" when
// none is stored yet.
func Lookup(statePath string) (string, error) {
	dir, name := filepath.Dir(statePath), filepath.Base(statePath)
	if id, err := read(filepath.Join(dir, "."+name+FileName)); err == nil || !os.IsNotExist(err) {
		return id, err
	}
	owner, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil && !os.IsNotExist(err) {
		return "", fmt.Errorf("reading %s: %w", filepath.Join(dir, ownerFile), err)
	}
	if o := strings.TrimSpace(string(owner)); o != "" && o != name {
		return "", nil
	}
	id, err := read(filepath.Join(dir, FileName))
	if os.IsNotExist(err) {
		return "", nil
	}
	return id, err
}

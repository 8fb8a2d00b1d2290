// Package atomicfile replaces files so that readers see either the old or the
// new content, never a mix or a truncated file, even across a crash.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteFile writes data to a temporary file in the directory of path, fsyncs
// it, renames it over path and fsyncs the directory. The target, if it
// exists, must be a regular file. On any error the target is left untouched
// and the temporary file removed.
func WriteFile(path string, data []byte, perm os.FileMode) (err error) {
	return WriteFileGroup(path, data, perm, -1)
}

// WriteFileGroup is WriteFile giving the new file group gid (-1: the
// process's) before it replaces path, so that readers through that group
// never see it unreadable.
func WriteFileGroup(path string, data []byte, perm os.FileMode, gid int) (err error) {
	return WriteFileOwner(path, data, perm, -1, gid)
}

// WriteFileOwner is WriteFile giving the new file owner uid and group gid
// (-1: the process's) before it replaces path (another owner than the
// process's needs root).
func WriteFileOwner(path string, data []byte, perm os.FileMode, uid, gid int) (err error) {
	if fi, statErr := os.Lstat(path); statErr == nil && !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", path)
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if _, err = f.Write(data); err != nil {
		return err
	}
	if uid >= 0 || gid >= 0 {
		if err = f.Chown(uid, gid); err != nil {
			return err
		}
	}
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	return SyncDir(dir)
}

// SyncDir fsyncs a directory so that a rename inside it is durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

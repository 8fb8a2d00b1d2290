package jobrunner

import (
	"archive/tar"
	"archive/zip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
)

// extractor writes archive entries (cache restores, artifacts of
// dependencies) under one directory and never outside it: entry names are
// cleaned, no entry is written through a symbolic link (one from the
// archive or one already there, e.g. checked out from the repository), and
// no symbolic link pointing out of the directory is created. What it
// refuses is skipped and reported in warnings. The os.Root confines every
// write besides.
type extractor struct {
	root     *os.Root
	warnings []string
}

func newExtractor(dir string) (*extractor, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	return &extractor{root: root}, nil
}

func (e *extractor) Close() error { return e.root.Close() }

func (e *extractor) warn(format string, a ...any) {
	if len(e.warnings) < 20 {
		e.warnings = append(e.warnings, fmt.Sprintf(format, a...))
	}
}

// clean turns an entry name into a path relative to the directory ("" for
// the directory itself).
func clean(name string) string {
	return strings.TrimPrefix(path.Clean("/"+strings.ReplaceAll(name, "\\", "/")), "/")
}

// parentsSafe makes the parents of rel as directories, refusing to go
// through a symbolic link.
func (e *extractor) parentsSafe(rel string) bool {
	dir := path.Dir(rel)
	if dir == "." {
		return true
	}
	acc := ""
	for _, part := range strings.Split(dir, "/") {
		acc = path.Join(acc, part)
		fi, err := e.root.Lstat(acc)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := e.root.Mkdir(acc, 0o755); err != nil {
				e.warn("%s: %v", rel, err)
				return false
			}
		case err != nil:
			e.warn("%s: %v", rel, err)
			return false
		case fi.Mode()&fs.ModeSymlink != 0:
			e.warn("%s: not extracted: %s is a symbolic link", rel, acc)
			return false
		case !fi.IsDir():
			e.warn("%s: not extracted: %s is not a directory", rel, acc)
			return false
		}
	}
	return true
}

// replaceable removes what is at rel unless it is a directory.
func (e *extractor) replaceable(rel string) bool {
	fi, err := e.root.Lstat(rel)
	if errors.Is(err, fs.ErrNotExist) {
		return true
	}
	if err == nil && fi.IsDir() {
		e.warn("%s: not extracted: a directory is there", rel)
		return false
	}
	if err == nil {
		err = e.root.Remove(rel)
	}
	if err != nil {
		e.warn("%s: %v", rel, err)
		return false
	}
	return true
}

func (e *extractor) dir(rel string) error {
	if rel == "" || !e.parentsSafe(rel) {
		return nil
	}
	fi, err := e.root.Lstat(rel)
	if err == nil {
		if !fi.IsDir() {
			e.warn("%s: not extracted: something else than a directory is there", rel)
		}
		return nil
	}
	return e.root.Mkdir(rel, 0o755)
}

func (e *extractor) file(rel string, mode fs.FileMode, r io.Reader) error {
	if rel == "" || !e.parentsSafe(rel) || !e.replaceable(rel) {
		return nil
	}
	// O_EXCL: the name is new (replaceable removed what was there), so
	// nothing is written through a link
	f, err := e.root.OpenFile(rel, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode.Perm()|0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// linkInside tells whether a link at rel with this target points inside
// the directory.
func linkInside(rel, target string) bool {
	if target == "" || path.IsAbs(target) || strings.Contains(target, "\\") {
		return false
	}
	p := path.Join(path.Dir(rel), target)
	return p != ".." && !strings.HasPrefix(p, "../")
}

func (e *extractor) symlink(rel, target string) error {
	if rel == "" {
		return nil
	}
	if !linkInside(rel, target) {
		e.warn("%s: not extracted: symbolic link to %s points out of the directory", rel, target)
		return nil
	}
	if !e.parentsSafe(rel) || !e.replaceable(rel) {
		return nil
	}
	return e.root.Symlink(target, rel)
}

// extractTar unpacks a tar stream into dir; strip drops each name's first
// component (Docker's archives of a path start with its base name).
func extractTar(r io.Reader, dir string, strip bool) ([]string, error) {
	e, err := newExtractor(dir)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return e.warnings, nil
		}
		if err != nil {
			return e.warnings, err
		}
		name := hdr.Name
		if strip {
			_, name, _ = strings.Cut(strings.TrimPrefix(name, "/"), "/")
		}
		rel := clean(name)
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = e.dir(rel)
		case tar.TypeReg:
			err = e.file(rel, fs.FileMode(hdr.Mode), tr)
		case tar.TypeSymlink:
			err = e.symlink(rel, hdr.Linkname)
		}
		if err != nil {
			return e.warnings, fmt.Errorf("%s: %w", rel, err)
		}
	}
}

// extractZip unpacks a zip archive into dir.
func extractZip(f *os.File, dir string) ([]string, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	zr, err := zip.NewReader(f, fi.Size())
	if err != nil {
		return nil, err
	}
	e, err := newExtractor(dir)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	for _, zf := range zr.File {
		rel := clean(zf.Name)
		mode := zf.Mode()
		err := func() error {
			if mode.IsDir() {
				return e.dir(rel)
			}
			rc, err := zf.Open()
			if err != nil {
				return err
			}
			defer rc.Close()
			if mode&fs.ModeSymlink != 0 {
				target, err := io.ReadAll(io.LimitReader(rc, 4096))
				if err != nil {
					return err
				}
				return e.symlink(rel, string(target))
			}
			if !mode.IsRegular() {
				return nil
			}
			return e.file(rel, mode, rc)
		}()
		if err != nil {
			return e.warnings, fmt.Errorf("%s: %w", rel, err)
		}
	}
	return e.warnings, nil
}

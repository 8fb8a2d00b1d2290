package jobrunner

import (
	"archive/tar"
	"io"
	"path"
	"strings"
)

type tarWriter struct {
	tw   *tar.Writer
	dirs map[string]bool
}

func newTar(w io.Writer) *tarWriter { return &tarWriter{tw: tar.NewWriter(w), dirs: map[string]bool{}} }

// add writes a file at an absolute path, with its parent directories.
func (t *tarWriter) add(name string, data []byte, mode int64) error {
	name = strings.TrimPrefix(path.Clean(name), "/")
	acc := ""
	for _, part := range strings.Split(path.Dir(name), "/") {
		if part == "." || part == "" {
			continue
		}
		acc = path.Join(acc, part)
		if !t.dirs[acc] {
			t.dirs[acc] = true
			if err := t.tw.WriteHeader(&tar.Header{Name: acc + "/", Typeflag: tar.TypeDir, Mode: 0o777}); err != nil {
				return err
			}
		}
	}
	if err := t.tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(data))}); err != nil {
		return err
	}
	_, err := t.tw.Write(data)
	return err
}

func (t *tarWriter) Close() error { return t.tw.Close() }

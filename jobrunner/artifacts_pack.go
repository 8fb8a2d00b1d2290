package jobrunner

import (
	"archive/tar"
	"archive/zip"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"slices"
	"strings"
	"unicode"

	"gitlab.com/paas-runner/paas-runner/coordinator"
)

// errTooManyRawFiles is gitlab-runner's refusal of a raw artifact with
// more than one file.
var errTooManyRawFiles = errors.New("only one file can be sent as raw")

// packer writes the selected files of an artifact into a temporary file,
// in its artifact_format, and gives the upload body back.
type packer struct {
	n   int // files added
	add func(rel string, hdr *tar.Header, r io.Reader) error
	// finish completes the file and returns the body of an upload.
	finish func() (coordinator.ArtifactBody, error)
}

// section returns a body reading [off, off+n) of f at each attempt.
func section(f *os.File, off, n int64) io.Reader { return io.NewSectionReader(f, off, n) }

func wholeFile(f *os.File) (coordinator.ArtifactBody, error) {
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, err
	}
	return func() (io.Reader, error) { return section(f, 0, size), nil }, nil
}

// newZipPacker: one zip archive, entries in the project directory's order.
func newZipPacker(tmp *os.File) *packer {
	p := &packer{}
	zw := zip.NewWriter(tmp)
	p.add = func(rel string, hdr *tar.Header, r io.Reader) error {
		p.n++
		fh := &zip.FileHeader{Name: rel, Method: zip.Deflate, Modified: hdr.ModTime}
		fh.SetMode(hdr.FileInfo().Mode())
		w, err := zw.CreateHeader(fh)
		if err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeSymlink {
			_, err = io.WriteString(w, hdr.Linkname)
		} else {
			_, err = io.Copy(w, r)
		}
		return err
	}
	p.finish = func() (coordinator.ArtifactBody, error) {
		if err := zw.Close(); err != nil {
			return nil, err
		}
		return wholeFile(tmp)
	}
	return p
}

// newGzipPacker: one gzip member per file, as gitlab-runner writes them
// and GitLab reads them (each member one document: a JUnit report, a
// dotenv file…). A member's header carries the file's base name and, as
// its comment, its path; members come in the order of the sorted paths.
// Only regular files can be sent, as with gitlab-runner.
func newGzipPacker(tmp *os.File) *packer {
	p := &packer{}
	type member struct {
		rel      string
		off, len int64
	}
	var members []member
	var off int64
	p.add = func(rel string, hdr *tar.Header, r io.Reader) error {
		if hdr.Typeflag != tar.TypeReg {
			return fmt.Errorf("the %q is not a regular file", rel)
		}
		p.n++
		cw := &countingWriter{w: tmp}
		zw := gzip.NewWriter(cw)
		zw.Name = sanitizeGzipName(path.Base(rel))
		zw.Comment = sanitizeGzipName(rel)
		zw.ModTime = hdr.ModTime
		if _, err := io.Copy(zw, r); err != nil {
			return err
		}
		if err := zw.Close(); err != nil {
			return err
		}
		members = append(members, member{rel, off, cw.n})
		off += cw.n
		return nil
	}
	p.finish = func() (coordinator.ArtifactBody, error) {
		slices.SortFunc(members, func(a, b member) int { return strings.Compare(a.rel, b.rel) })
		return func() (io.Reader, error) {
			rs := make([]io.Reader, len(members))
			for i, m := range members {
				rs[i] = section(tmp, m.off, m.len)
			}
			return io.MultiReader(rs...), nil
		}, nil
	}
	return p
}

// newRawPacker: the one file itself; more than one is an error, as with
// gitlab-runner.
func newRawPacker(tmp *os.File) *packer {
	p := &packer{}
	var names []string
	p.add = func(rel string, hdr *tar.Header, r io.Reader) error {
		if hdr.Typeflag != tar.TypeReg {
			return fmt.Errorf("the %q is not a regular file", rel)
		}
		p.n++
		names = append(names, rel)
		if p.n > 1 {
			return nil // counted, for the message
		}
		_, err := io.Copy(tmp, r)
		return err
	}
	p.finish = func() (coordinator.ArtifactBody, error) {
		if p.n > 1 {
			shown := names[:min(len(names), 5)]
			more := ""
			if len(names) > len(shown) {
				more = ", …"
			}
			return nil, fmt.Errorf("%w (artifact_format raw), but %d files match: %s%s", errTooManyRawFiles, p.n, strings.Join(shown, ", "), more)
		}
		return wholeFile(tmp)
	}
	return p
}

// sanitizeGzipName keeps a gzip header field ASCII like gitlab-runner: a
// name with non-ASCII characters or % becomes "e:" and its escaped form.
func sanitizeGzipName(s string) string {
	if !strings.ContainsFunc(s, func(r rune) bool { return r > unicode.MaxASCII || r == '%' }) {
		return s
	}
	return "e:" + url.PathEscape(s)
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

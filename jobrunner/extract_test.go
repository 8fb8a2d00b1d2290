package jobrunner

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type entry struct {
	name, link, data string
	dir              bool
}

func tarOf(t *testing.T, es []entry) *bytes.Buffer {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(e.data))}
		switch {
		case e.dir:
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		case e.link != "":
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, e.link, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.data))
	}
	tw.Close()
	return &b
}

func zipOf(t *testing.T, es []entry) *os.File {
	f, _ := os.CreateTemp(t.TempDir(), "z")
	zw := zip.NewWriter(f)
	for _, e := range es {
		fh := &zip.FileHeader{Name: e.name}
		data := e.data
		switch {
		case e.dir:
			fh.SetMode(fs.ModeDir | 0o755)
		case e.link != "":
			fh.SetMode(fs.ModeSymlink | 0o777)
			data = e.link
		default:
			fh.SetMode(0o644)
		}
		w, err := zw.CreateHeader(fh)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(data))
	}
	zw.Close()
	f.Seek(0, 0)
	return f
}

// hostile is what a hostile cache or artifacts archive holds: links out of
// the directory, then files written through them; a link into a link;
// names climbing out.
func hostile(outside string) []entry {
	return []entry{
		{name: "abs", link: outside},
		{name: "abs/pwned-abs", data: "x"},
		{name: "up", link: "../outside"},
		{name: "up/pwned-up", data: "x"},
		{name: "sub/", dir: true},
		{name: "sub/deep", link: "../../outside"},
		{name: "sub/deep/pwned-deep", data: "x"},
		{name: "here", link: "."},
		{name: "here/esc", link: "../outside"}, // inside lexically, out through "here"
		{name: "here/pwned-here", data: "x"},   // through a link, even one inside
		{name: "../../outside/pwned-slip", data: "x"},
		{name: "sub/ok", link: "../kept"}, // a link inside stays
		{name: "kept", data: "kept content"},
		{name: "co/pwned-checkout", data: "x"}, // through a link already there
	}
}

func checkContained(t *testing.T, base, target string, warnings []string) {
	t.Helper()
	outside := filepath.Join(base, "outside")
	des, _ := os.ReadDir(outside)
	for _, de := range des {
		t.Errorf("written outside the directory: %s", de.Name())
	}
	filepath.WalkDir(target, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type()&fs.ModeSymlink != 0 {
			l, _ := os.Readlink(p)
			resolved := filepath.Join(filepath.Dir(p), l)
			if filepath.IsAbs(l) || !strings.HasPrefix(resolved, target+string(filepath.Separator)) && resolved != target {
				if filepath.Base(p) != "co" { // the one the test made
					t.Errorf("link out of the directory created: %s -> %s", p, l)
				}
			}
		}
		return nil
	})
	if b, err := os.ReadFile(filepath.Join(target, "sub", "ok")); err != nil || string(b) != "kept content" {
		t.Errorf("a link inside the directory was not kept: %q %v", b, err)
	}
	if len(warnings) == 0 {
		t.Error("nothing refused was reported")
	}
}

func extractionDirs(t *testing.T) (base, target string) {
	base = t.TempDir()
	target = filepath.Join(base, "target")
	os.MkdirAll(filepath.Join(base, "outside"), 0o755)
	os.MkdirAll(target, 0o755)
	// the checked-out sources may hold a link out (a repository can)
	os.Symlink(filepath.Join(base, "outside"), filepath.Join(target, "co"))
	return base, target
}

func TestExtractTarStaysInside(t *testing.T) {
	base, target := extractionDirs(t)
	var es []entry
	for _, e := range hostile(filepath.Join(base, "outside")) {
		e.name = "cache/" + e.name // Docker's archive of /cache
		es = append(es, e)
	}
	warnings, err := extractTar(tarOf(t, es), target, true)
	if err != nil {
		t.Fatal(err)
	}
	checkContained(t, base, target, warnings)
}

func TestExtractZipStaysInside(t *testing.T) {
	base, target := extractionDirs(t)
	warnings, err := extractZip(zipOf(t, hostile(filepath.Join(base, "outside"))), target)
	if err != nil {
		t.Fatal(err)
	}
	checkContained(t, base, target, warnings)
}

package jobrunner

import (
	"archive/tar"
	"archive/zip"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"strings"

	"github.com/go-git/go-git/v5"

	"gitlab.com/paas-runner/paas-runner/coordinator"
	"gitlab.com/paas-runner/paas-runner/job"
)

// globRe turns an artifacts path pattern into a regexp: ** crosses
// directories, * and ? do not.
func globRe(pattern string) (*regexp.Regexp, error) {
	p := strings.TrimSuffix(strings.TrimPrefix(path.Clean("/"+pattern), "/"), "/")
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(p); i++ {
		switch c := p[i]; c {
		case '*':
			if i+1 < len(p) && p[i+1] == '*' {
				b.WriteString(".*")
				i++
				if i+1 < len(p) && p[i+1] == '/' {
					i++
					b.WriteString("/?")
				}
			} else {
				b.WriteString("[^/]*")
			}
		case '?':
			b.WriteString("[^/]")
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	return regexp.Compile(b.String())
}

type matcher []*regexp.Regexp

func newMatcher(patterns []string, vars job.Variables) matcher {
	var m matcher
	for _, p := range patterns {
		if re, err := globRe(vars.Expand(p)); err == nil {
			m = append(m, re)
		}
	}
	return m
}

// match tells whether rel, or a directory above it, matches a pattern (a
// matched directory brings everything in it).
func (m matcher) match(rel string) bool {
	for _, re := range m {
		for p := rel; p != "." && p != "/" && p != ""; p = path.Dir(p) {
			if re.MatchString(p) {
				return true
			}
		}
	}
	return false
}

// trackedFiles lists the files of the git index in srcDir (nil without a
// repository: then every file is untracked).
func trackedFiles(srcDir string) map[string]bool {
	repo, err := git.PlainOpen(srcDir)
	if err != nil {
		return nil
	}
	idx, err := repo.Storer.Index()
	if err != nil {
		return nil
	}
	out := map[string]bool{}
	for _, e := range idx.Entries {
		out[e.Name] = true
	}
	return out
}

func whenApplies(when string, ok bool) bool {
	switch when {
	case "always":
		return true
	case "on_failure":
		return !ok
	default:
		return ok
	}
}

// uploadArtifacts collects and uploads the job's artifacts from the
// project directory of container id (stopped or not), per their when.
func (r *runner) uploadArtifacts(ctx context.Context, id string, jobOK bool, srcDir string) error {
	var todo []job.Artifact
	for _, a := range r.p.Artifacts {
		if whenApplies(a.When, jobOK) && (len(a.Paths) > 0 || a.Untracked) {
			todo = append(todo, a)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	end := r.section("upload_artifacts", "Uploading artifacts for "+map[bool]string{true: "successful", false: "failed"}[jobOK]+" job")
	defer end()
	tracked := trackedFiles(srcDir)
	for _, a := range todo {
		if err := r.uploadOne(ctx, id, a, tracked); err != nil {
			return err
		}
	}
	return nil
}

func (r *runner) uploadOne(ctx context.Context, id string, a job.Artifact, tracked map[string]bool) error {
	inc, exc := newMatcher(a.Paths, r.expanded), newMatcher(a.Exclude, r.expanded)
	typ, format := a.Type, a.Format
	if typ == "" {
		typ = "archive"
	}
	if format == "" {
		format = "zip"
	}
	rc, _, err := r.docker.CopyFromContainer(ctx, id, r.projectDir())
	if err != nil {
		return fmt.Errorf("reading the project directory: %w", err)
	}
	defer rc.Close()
	tmp, err := os.CreateTemp("", "paas-runner-artifacts")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	var zw *zip.Writer
	var gw *gzip.Writer
	switch format {
	case "zip":
		zw = zip.NewWriter(tmp)
	case "gzip":
		gw = gzip.NewWriter(tmp)
	}
	n := 0
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading the project directory: %w", err)
		}
		// entries are <project dir base>/<rel>
		_, rel, ok := strings.Cut(hdr.Name, "/")
		rel = strings.TrimSuffix(rel, "/")
		if !ok || rel == "" || rel == ".git" || strings.HasPrefix(rel, ".git/") {
			continue
		}
		if hdr.Typeflag == tar.TypeDir {
			continue
		}
		selected := inc.match(rel) || (a.Untracked && !tracked[rel])
		if !selected || exc.match(rel) {
			continue
		}
		n++
		switch {
		case zw != nil:
			fh := &zip.FileHeader{Name: rel, Method: zip.Deflate, Modified: hdr.ModTime}
			fh.SetMode(hdr.FileInfo().Mode())
			w, err := zw.CreateHeader(fh)
			if err != nil {
				return err
			}
			if hdr.Typeflag == tar.TypeSymlink {
				_, err = io.WriteString(w, hdr.Linkname)
			} else {
				_, err = io.Copy(w, tr)
			}
			if err != nil {
				return err
			}
		case gw != nil:
			if _, err := io.Copy(gw, tr); err != nil {
				return err
			}
		default: // raw: the first file
			if n == 1 {
				if _, err := io.Copy(tmp, tr); err != nil {
					return err
				}
			}
		}
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			return err
		}
	}
	if gw != nil {
		if err := gw.Close(); err != nil {
			return err
		}
	}
	if n == 0 {
		r.printf("%sWARNING: %s: no matching files%s\n", ansiBoldRed, strings.Join(a.Paths, ", "), ansiReset)
		return nil
	}
	r.printf("%s: found %d matching artifact files and directories\n", typ, n)
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return err
	}
	name := a.Name
	switch {
	case name == "" && format == "zip":
		name = "artifacts.zip"
	case name == "":
		name = typ
	case format == "zip" && !strings.HasSuffix(name, ".zip"):
		name += ".zip"
	}
	r.printf("Uploading artifacts as %q to coordinator...\n", typ)
	err = r.gl.UploadArtifacts(ctx, r.p.ID, r.p.Token, coordinator.ArtifactUpload{Filename: name, Type: typ, Format: format, ExpireIn: a.ExpireIn}, tmp)
	if err != nil {
		return fmt.Errorf("uploading %s artifacts: %w", typ, err)
	}
	r.printf("Uploading artifacts as %q to coordinator... 201 Created\n", typ)
	return nil
}

// downloadDependencies unpacks the artifacts of the jobs this one depends
// on into dir (the sources, copied into the job container after).
func (r *runner) downloadDependencies(ctx context.Context, dir string) error {
	for _, d := range r.p.Dependencies {
		if d.ArtifactsFile == nil || d.ArtifactsFile.Filename == "" {
			continue
		}
		r.printf("Downloading artifacts for %s (%d)...\n", d.Name, d.ID)
		tmp, err := os.CreateTemp("", "paas-runner-dep")
		if err != nil {
			return err
		}
		err = r.gl.DownloadArtifacts(ctx, d.ID, d.Token, tmp)
		if err == nil {
			var warnings []string
			warnings, err = extractZip(tmp, dir)
			for _, w := range warnings {
				r.printf("%sWARNING: %s%s\n", ansiBoldRed, w, ansiReset)
			}
		}
		tmp.Close()
		os.Remove(tmp.Name())
		if err != nil {
			return fmt.Errorf("artifacts of %s (%d): %w", d.Name, d.ID, err)
		}
	}
	return nil
}

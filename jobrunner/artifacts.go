package jobrunner

import (
	"archive/tar"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

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
	var pk *packer
	switch format {
	case "zip":
		pk = newZipPacker(tmp)
	case "gzip":
		pk = newGzipPacker(tmp)
	case "raw":
		pk = newRawPacker(tmp)
	default:
		// GitLab refuses it too; say so before reading anything
		return fmt.Errorf("%s artifacts: unknown artifact_format %q", typ, format)
	}
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
		if err := pk.add(rel, hdr, tr); err != nil {
			return fmt.Errorf("%s artifacts: %w", typ, err)
		}
	}
	body, err := pk.finish()
	if err != nil {
		return fmt.Errorf("%s artifacts: %w", typ, err)
	}
	if pk.n == 0 {
		r.printf("%sWARNING: %s: no matching files%s\n", ansiBoldRed, strings.Join(a.Paths, ", "), ansiReset)
		return nil
	}
	r.printf("%s: found %d matching artifact files and directories\n", typ, pk.n)
	name := artifactFilename(r.expanded.Expand(cmp.Or(a.Name, "artifacts")), format)
	r.printf("Uploading artifacts as %q to coordinator...\n", typ)
	up := coordinator.ArtifactUpload{Filename: name, Type: typ, Format: format, ExpireIn: a.ExpireIn,
		Retrying: func(err error, wait time.Duration) {
			r.printf("%sWARNING: Uploading artifacts as %q to coordinator... %v%s\n", ansiBoldRed, typ, err, ansiReset)
			r.printf("%sWARNING: Retrying in %v...%s\n", ansiBoldRed, wait.Round(time.Millisecond), ansiReset)
		}}
	if err := r.gl.UploadArtifacts(ctx, r.p.ID, r.p.Token, up, body); err != nil {
		return fmt.Errorf("uploading %s artifacts: %w", typ, err)
	}
	r.printf("Uploading artifacts as %q to coordinator... 201 Created\n", typ)
	return nil
}

// artifactFilename is the upload's file name, as gitlab-runner makes it:
// the base name of the (expanded) artifacts:name, "default" if that is
// empty, with .zip or .gz after it for those formats.
func artifactFilename(name, format string) string {
	name = path.Base(name)
	if name == "" || name == "." {
		name = "default"
	}
	switch format {
	case "zip":
		return name + ".zip"
	case "gzip":
		return name + ".gz"
	}
	return name
}

// downloadDependencies unpacks the artifacts of the jobs this one depends
// on into dir (the sources, copied into the job container after).
func (r *runner) downloadDependencies(ctx context.Context, dir string) error {
	// gitlab-runner's FF_USE_DIRECT_DOWNLOAD, on unless the job turns it off
	direct, err := strconv.ParseBool(r.expanded.Get("FF_USE_DIRECT_DOWNLOAD"))
	if err != nil {
		direct = true
	}
	for _, d := range r.p.Dependencies {
		if d.ArtifactsFile == nil || d.ArtifactsFile.Filename == "" {
			continue
		}
		r.printf("Downloading artifacts for %s (%d)...\n", d.Name, d.ID)
		tmp, err := os.CreateTemp("", "paas-runner-dep")
		if err != nil {
			return err
		}
		opt := coordinator.DownloadOptions{DirectDownload: direct, Retrying: func(err error, wait time.Duration) {
			r.printf("%sWARNING: Downloading artifacts from coordinator... %v%s\n", ansiBoldRed, err, ansiReset)
			r.printf("%sWARNING: Retrying in %v...%s\n", ansiBoldRed, wait.Round(time.Millisecond), ansiReset)
		}}
		err = r.gl.DownloadArtifacts(ctx, d.ID, d.Token, opt, tmp)
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

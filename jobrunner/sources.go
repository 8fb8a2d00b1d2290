package jobrunner

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/go-git/go-git/v5"
	gitconfig "github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"

	"gitlab.com/paas-runner/paas-runner/job"
)

// fetchSources gets the job's commit into dir with go-git: init, fetch the
// payload's refspecs (at GIT_DEPTH, else the payload's depth) with the job
// token, checkout the sha. GIT_STRATEGY=none leaves dir empty;
// GIT_CHECKOUT=false skips the checkout. ca (PEM, or nil) is trusted for
// HTTPS besides the system's certificates (tls-ca-file), for the project
// and its submodules.
func fetchSources(ctx context.Context, p *job.Payload, dir string, ca []byte, log io.Writer) error {
	vars := p.Variables
	if vars.Get("GIT_STRATEGY") == "none" {
		fmt.Fprintln(log, "Skipping Git repository setup (GIT_STRATEGY=none)")
		return nil
	}
	gi := p.GitInfo
	u, err := url.Parse(gi.RepoURL)
	if err != nil || u.Host == "" {
		return fmt.Errorf("repository URL is invalid")
	}
	var auth *githttp.BasicAuth
	if u.User != nil {
		pw, _ := u.User.Password()
		auth = &githttp.BasicAuth{Username: u.User.Username(), Password: pw}
		u.User = nil
	}
	depth := gi.Depth
	if d, err := strconv.Atoi(vars.Get("GIT_DEPTH")); err == nil && d >= 0 {
		depth = d
	}
	fmt.Fprintf(log, "Fetching changes with git depth set to %d...\n", depth)
	repo, err := git.PlainInit(dir, false)
	if err != nil {
		return err
	}
	if _, err := repo.CreateRemote(&gitconfig.RemoteConfig{Name: "origin", URLs: []string{u.String()}}); err != nil {
		return err
	}
	var specs []gitconfig.RefSpec
	for _, s := range gi.Refspecs {
		specs = append(specs, gitconfig.RefSpec(s))
	}
	if len(specs) == 0 {
		specs = []gitconfig.RefSpec{gitconfig.RefSpec(fmt.Sprintf("+refs/heads/%s:refs/remotes/origin/%s", gi.Ref, gi.Ref))}
	}
	fmt.Fprintf(log, "Created fresh repository.\n")
	err = repo.FetchContext(ctx, &git.FetchOptions{RemoteName: "origin", RefSpecs: specs, Depth: depth, Auth: auth, Tags: git.NoTags, CABundle: ca})
	if err != nil && err != git.NoErrAlreadyUpToDate {
		return fmt.Errorf("fetching %s: %w", u.Redacted(), err)
	}
	if vars.Get("GIT_CHECKOUT") == "false" {
		fmt.Fprintln(log, "Skipping Git checkout (GIT_CHECKOUT=false)")
		return nil
	}
	wt, err := repo.Worktree()
	if err != nil {
		return err
	}
	short := gi.Sha
	if len(short) > 8 {
		short = short[:8]
	}
	fmt.Fprintf(log, "Checking out %s as detached HEAD (ref is %s)...\n", short, gi.Ref)
	if err := wt.Checkout(&git.CheckoutOptions{Hash: plumbing.NewHash(gi.Sha), Force: true}); err != nil {
		return fmt.Errorf("checking out %s: %w", gi.Sha, err)
	}
	levels := 0
	switch strategy := vars.Get("GIT_SUBMODULE_STRATEGY"); strategy {
	case "", "none":
		return nil
	case "normal":
		levels = 1
	case "recursive":
		levels = int(git.DefaultSubmoduleRecursionDepth)
	default:
		return fmt.Errorf("GIT_SUBMODULE_STRATEGY %q: want none, normal or recursive", strategy)
	}
	return updateSubmodules(ctx, wt, u, auth, ca, levels, log)
}

// updateSubmodules initializes and checks out the submodules of wt, and
// theirs down to depth levels. The job token (auth) goes only to
// submodules on the GitLab host of the project (origin): relative URLs,
// or absolute ones naming the same scheme, host and port. A submodule
// elsewhere is fetched without credentials. go-git's submodule update has
// no CA bundle option, so the submodule's repository is fetched here (with
// ca) and the update only checks out.
func updateSubmodules(ctx context.Context, wt *git.Worktree, origin *url.URL, auth *githttp.BasicAuth, ca []byte, depth int, log io.Writer) error {
	subs, err := wt.Submodules()
	if err != nil {
		return fmt.Errorf("reading submodules: %w", err)
	}
	if len(subs) == 0 {
		return nil
	}
	fmt.Fprintln(log, "Updating/initializing submodules...")
	for _, s := range subs {
		name := s.Config().Path
		if err := s.Init(); err != nil && !errors.Is(err, git.ErrSubmoduleAlreadyInitialized) {
			return fmt.Errorf("submodule %s: %w", name, err)
		}
		sr, err := s.Repository() // its origin: the URL resolved against ours
		if err != nil {
			return fmt.Errorf("submodule %s: %w", name, err)
		}
		var subAuth transport.AuthMethod
		if rem, err := sr.Remote("origin"); auth != nil && err == nil && len(rem.Config().URLs) > 0 && sameGitLab(origin, rem.Config().URLs[0]) {
			subAuth = auth
		}
		if err := fetchSubmodule(ctx, s, sr, subAuth, ca); err != nil {
			return fmt.Errorf("updating submodule %s: %w", name, err)
		}
		if err := s.UpdateContext(ctx, &git.SubmoduleUpdateOptions{RecurseSubmodules: git.NoRecurseSubmodules, NoFetch: true}); err != nil {
			return fmt.Errorf("updating submodule %s: %w", name, err)
		}
		fmt.Fprintf(log, "Submodule %s updated\n", name)
		if depth > 1 {
			swt, err := sr.Worktree()
			if err != nil {
				return fmt.Errorf("submodule %s: %w", name, err)
			}
			if err := updateSubmodules(ctx, swt, origin, auth, ca, depth-1, log); err != nil {
				return err
			}
		}
	}
	return nil
}

// fetchSubmodule fetches what submodule s needs into its repository sr,
// as go-git's update would: its branches, then the recorded commit by its
// sha if that did not bring it (a server allowing reachable sha1 wants).
func fetchSubmodule(ctx context.Context, s *git.Submodule, sr *git.Repository, auth transport.AuthMethod, ca []byte) error {
	err := sr.FetchContext(ctx, &git.FetchOptions{Auth: auth, CABundle: ca})
	if err != nil && !errors.Is(err, git.NoErrAlreadyUpToDate) {
		return err
	}
	st, err := s.Status()
	if err != nil {
		return err
	}
	if _, err := sr.Object(plumbing.AnyObject, st.Expected); err == nil {
		return nil
	}
	spec := gitconfig.RefSpec("+" + st.Expected.String() + ":" + st.Expected.String())
	err = sr.FetchContext(ctx, &git.FetchOptions{Auth: auth, CABundle: ca, RefSpecs: []gitconfig.RefSpec{spec}})
	if err != nil && !errors.Is(err, git.NoErrAlreadyUpToDate) && !errors.Is(err, git.ErrExactSHA1NotSupported) {
		return err
	}
	return nil
}

// sameGitLab tells whether a git URL is on the project's GitLab: same
// scheme, host and port as origin.
func sameGitLab(origin *url.URL, raw string) bool {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return false
	}
	port := func(u *url.URL) string {
		if p := u.Port(); p != "" {
			return p
		}
		return map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	return u.Scheme == origin.Scheme && strings.EqualFold(u.Hostname(), origin.Hostname()) && port(u) == port(origin)
}

// tarDir archives dir so that it unpacks at prefix (an absolute path).
// hostBuildsDir is where the sources go when the host has the job's
// builds volume mounted (job.json's builds_volume, a directory here): the
// project directory in it. ok is false otherwise: they are fetched into
// a temporary directory and copied into the script container.
func (r *runner) hostBuildsDir() (dir string, ok bool) {
	bv := r.o.Job.BuildsVolume
	if bv.Name == "" || bv.Path == "" {
		return "", false
	}
	if fi, err := os.Stat(bv.Path); err != nil || !fi.IsDir() {
		return "", false
	}
	rel := strings.TrimPrefix(r.projectDir(), strings.TrimRight(r.o.Config.BuildsDir, "/"))
	return filepath.Join(bv.Path, filepath.FromSlash(path.Clean("/"+rel))), true
}

// mkdirAllOpen makes dir and the directories between root and it, each
// mode 0777 like the copy's (tarDir), so that a job running as another
// user can write there; root itself is the builds directory.
func mkdirAllOpen(root, dir string) error {
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o777); err != nil {
			return err
		}
		if d == filepath.Clean(root) || d == filepath.Dir(d) {
			return nil
		}
	}
}

// openDirs gives every directory under dir mode 0777, as tarDir's copy
// does.
func openDirs(dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		return os.Chmod(p, 0o777)
	})
}

func tarDir(dir, prefix string) (*bytes.Buffer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	prefix = path.Clean("/" + prefix)[1:]
	// the directories leading to prefix
	acc := ""
	for _, part := range splitPath(prefix) {
		acc = path.Join(acc, part)
		if err := tw.WriteHeader(&tar.Header{Name: acc + "/", Typeflag: tar.TypeDir, Mode: 0o777}); err != nil {
			return nil, err
		}
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		name := path.Join(prefix, filepath.ToSlash(rel))
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&os.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = name
		if info.IsDir() {
			hdr.Name += "/"
			hdr.Mode = 0o777
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &buf, tw.Close()
}

func splitPath(p string) []string {
	var out []string
	for _, s := range bytes.Split([]byte(p), []byte("/")) {
		if len(s) > 0 {
			out = append(out, string(s))
		}
	}
	return out
}

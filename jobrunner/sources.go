package jobrunner

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"

	"github.com/go-git/go-git/v5"
	gitconfig "github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"

	"gitlab.com/paas-runner/paas-runner/job"
)

// fetchSources gets the job's commit into dir with go-git: init, fetch the
// payload's refspecs (at GIT_DEPTH, else the payload's depth) with the job
// token, checkout the sha. GIT_STRATEGY=none leaves dir empty;
// GIT_CHECKOUT=false skips the checkout.
func fetchSources(ctx context.Context, p *job.Payload, dir string, log io.Writer) error {
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
	err = repo.FetchContext(ctx, &git.FetchOptions{RemoteName: "origin", RefSpecs: specs, Depth: depth, Auth: auth, Tags: git.NoTags})
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
	var rec git.SubmoduleRescursivity
	switch strategy := vars.Get("GIT_SUBMODULE_STRATEGY"); strategy {
	case "", "none":
		return nil
	case "normal":
		rec = git.NoRecurseSubmodules
	case "recursive":
		rec = git.DefaultSubmoduleRecursionDepth
	default:
		return fmt.Errorf("GIT_SUBMODULE_STRATEGY %q: want none, normal or recursive", strategy)
	}
	subs, err := wt.Submodules()
	if err != nil {
		return fmt.Errorf("reading submodules: %w", err)
	}
	if len(subs) == 0 {
		return nil
	}
	fmt.Fprintln(log, "Updating/initializing submodules...")
	// Submodules on the same GitLab get the job token; relative URLs
	// resolve against origin.
	if err := subs.UpdateContext(ctx, &git.SubmoduleUpdateOptions{Init: true, RecurseSubmodules: rec, Auth: auth}); err != nil {
		return fmt.Errorf("updating submodules: %w", err)
	}
	for _, s := range subs {
		fmt.Fprintf(log, "Submodule %s updated\n", s.Config().Path)
	}
	return nil
}

// tarDir archives dir so that it unpacks at prefix (an absolute path).
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

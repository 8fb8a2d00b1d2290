package guard

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/go-git/go-billy/v5"
	"github.com/go-git/go-billy/v5/memfs"
	"github.com/go-git/go-git/v5"
	gitconfig "github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	"github.com/go-git/go-git/v5/storage/memory"
)

// Git keeps the state in a git repository laid out as Concourse's
// pool-resource wants it, shared by several daemons (and Concourse):
//
//	<pool>/claimed/.gitkeep    <pool>/claimed/<lock>     (content: metadata)
//	<pool>/unclaimed/.gitkeep  <pool>/unclaimed/<lock>
//
// A claim moves a lock file from unclaimed/ to claimed/ and a release back,
// its content untouched. Project and group locks are one-lock pools named
// "paas-runner.lock.<escaped id>" (url.PathEscape of the id, reversible),
// with the one lock "lock". What Concourse does not read lives under
// .paas-runner/: holds/<pool dir>/<lock> (the holder and its lease; the
// commit message names them too) and waiters/<escaped key> (the queue, so
// that process modes hold across daemons). A claimed lock without a hold
// file is held outside paas-runner (a Concourse pipeline): never broken.
//
// Each change is one commit pushed with go-git; a rejected push means the
// repository changed: fetch, decide again, retry after RetryDelay.
type Git struct {
	opt GitOptions

	mu   sync.Mutex
	repo *git.Repository
	wt   *git.Worktree
	fs   billy.Filesystem
	// Commits counts pushed commits, Conflicts rejected pushes.
	commits, conflicts int
	// seen is the last head whose history foreign was updated from;
	// foreign are the locks ("<dir>/<lock>") last claimed or released by
	// a commit that did not write their hold file (Concourse, or a hand
	// edit): a hold file left from before is not theirs (scan).
	seen    plumbing.Hash
	foreign map[string]bool
}

// GitOptions configure the git backend.
type GitOptions struct {
	URL, Branch        string
	Username, Password string
	RetryDelay         time.Duration // default 2 s
	// Daemon and Runner name the committer in messages.
	Daemon string
}

// Reserved names in the repository.
const (
	MutexDirPrefix = "paas-runner.lock."
	metaDir        = ".paas-runner"
	holdsDir       = metaDir + "/holds"
	waitersDir     = metaDir + "/waiters"
	gitkeep        = ".gitkeep"
)

// ErrNotPoolLayout is a repository with nothing in pool-resource layout.
var ErrNotPoolLayout = errors.New("not in pool-resource layout")

// OpenGit clones the repository (in memory).
func OpenGit(ctx context.Context, opt GitOptions) (*Git, error) {
	if opt.Branch == "" {
		opt.Branch = "main"
	}
	if opt.RetryDelay <= 0 {
		opt.RetryDelay = 2 * time.Second
	}
	g := &Git{opt: opt}
	if err := g.connect(ctx); err != nil {
		return g, err // usable: Update connects again
	}
	return g, nil
}

func (g *Git) auth() *githttp.BasicAuth {
	if g.opt.Username == "" && g.opt.Password == "" {
		return nil
	}
	return &githttp.BasicAuth{Username: g.opt.Username, Password: g.opt.Password}
}

func (g *Git) branchRef() plumbing.ReferenceName {
	return plumbing.NewBranchReferenceName(g.opt.Branch)
}

func (g *Git) connect(ctx context.Context) error {
	fs := memfs.New()
	repo, err := git.CloneContext(ctx, memory.NewStorage(), fs, &git.CloneOptions{
		URL: g.opt.URL, Auth: g.auth(), ReferenceName: g.branchRef(), SingleBranch: true})
	if err != nil {
		return fmt.Errorf("cloning the lock repository %s (branch %s): %w", redactURL(g.opt.URL), g.opt.Branch, err)
	}
	wt, err := repo.Worktree()
	if err != nil {
		return err
	}
	g.repo, g.wt, g.fs = repo, wt, fs
	g.seen, g.foreign = plumbing.ZeroHash, nil
	if head, err := repo.Head(); err == nil {
		g.scan(head.Hash()) // the last maxScan commits
	}
	return nil
}

// maxScan bounds the commits scanned for foreign claims, at a clone and
// at a fetch (a hold older than that is trusted as its file says).
const maxScan = 1000

// scan updates foreign from the commits between seen and to: a lock file
// moved into or out of claimed/ by a commit that did not also write its
// hold file was claimed or released outside paas-runner, so that a hold
// file left behind (a paas-runner claim released by hand or by Concourse,
// then claimed by Concourse) does not make paas-runner take the lock for
// its own, nor break it as an expired lease.
func (g *Git) scan(to plumbing.Hash) {
	if g.seen == to {
		return
	}
	var chain []*object.Commit
	c, err := g.repo.CommitObject(to)
	for n := 0; err == nil && c.Hash != g.seen && n < maxScan; n++ {
		chain = append(chain, c)
		if c.NumParents() == 0 {
			break
		}
		c, err = c.Parent(0)
	}
	for i := len(chain) - 1; i >= 0; i-- { // oldest first: the last move decides
		g.scanCommit(chain[i])
	}
	g.seen = to
}

// scanCommit applies one commit's lock moves to foreign.
func (g *Git) scanCommit(c *object.Commit) {
	if c.NumParents() == 0 {
		return
	}
	p, err := c.Parent(0)
	if err != nil {
		return
	}
	pt, err1 := p.Tree()
	ct, err2 := c.Tree()
	if err1 != nil || err2 != nil {
		return
	}
	changes, err := object.DiffTree(pt, ct)
	if err != nil {
		return
	}
	touched := map[string]bool{}
	moved := map[string]bool{}
	for _, ch := range changes {
		for _, name := range []string{ch.From.Name, ch.To.Name} {
			if hold, ok := strings.CutPrefix(name, holdsDir+"/"); ok {
				touched[hold] = true
			} else if parts := strings.Split(name, "/"); len(parts) == 3 && parts[1] == "claimed" && parts[2] != gitkeep {
				moved[parts[0]+"/"+parts[2]] = true
			}
		}
	}
	for k := range moved {
		if touched[k] {
			delete(g.foreign, k)
		} else {
			if g.foreign == nil {
				g.foreign = map[string]bool{}
			}
			g.foreign[k] = true
		}
	}
}

func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(lock repository)"
	}
	u.User = nil
	return u.String()
}

// sync brings the worktree to the remote branch's head.
func (g *Git) sync(ctx context.Context) error {
	if g.repo == nil {
		return g.connect(ctx)
	}
	remoteRef := plumbing.NewRemoteReferenceName("origin", g.opt.Branch)
	err := g.repo.FetchContext(ctx, &git.FetchOptions{RemoteName: "origin", Auth: g.auth(), Force: true,
		RefSpecs: []gitconfig.RefSpec{gitconfig.RefSpec("+" + g.branchRef().String() + ":" + remoteRef.String())}})
	if err != nil && !errors.Is(err, git.NoErrAlreadyUpToDate) {
		return fmt.Errorf("fetching the lock repository %s: %w", redactURL(g.opt.URL), err)
	}
	ref, err := g.repo.Reference(remoteRef, true)
	if err != nil {
		return fmt.Errorf("lock repository branch %s: %w", g.opt.Branch, err)
	}
	g.scan(ref.Hash())
	head, err := g.repo.Head()
	if err == nil && head.Hash() == ref.Hash() {
		return nil
	}
	if err := g.wt.Reset(&git.ResetOptions{Commit: ref.Hash(), Mode: git.HardReset}); err != nil {
		return fmt.Errorf("lock repository: %w", err)
	}
	return nil
}

// Branch implements Backend.
func (g *Git) Branch() string { return g.opt.Branch }

// Stats returns pushed commits and rejected pushes.
func (g *Git) Stats() (commits, conflicts int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.commits, g.conflicts
}

// Update implements Backend: fetch, read, apply fn, commit, push; a
// rejected push starts again after RetryDelay.
func (g *Git) Update(ctx context.Context, fn func(*State) bool) (*State, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for {
		if err := g.sync(ctx); err != nil {
			return nil, err
		}
		cur, files, stale, err := readRepo(g.fs, g.foreign)
		if err != nil {
			return nil, err
		}
		next := cur.Clone()
		if !fn(next) && len(stale) == 0 {
			return cur, nil
		}
		// a stale hold file is removed with the change (or alone): a
		// daemon that did not see the foreign move must not read it
		msg, err := g.write(files, cur, next, stale)
		if err != nil {
			return nil, err
		}
		if msg == "" {
			return next, nil
		}
		hash, err := g.wt.Commit(msg, &git.CommitOptions{All: true, AllowEmptyCommits: false,
			Author: &object.Signature{Name: "paas-runner " + g.opt.Daemon, Email: g.opt.Daemon + "@paas-runner.invalid", When: time.Now()}})
		if err != nil {
			return nil, fmt.Errorf("lock repository commit: %w", err)
		}
		err = g.repo.PushContext(ctx, &git.PushOptions{RemoteName: "origin", Auth: g.auth(),
			RefSpecs: []gitconfig.RefSpec{gitconfig.RefSpec(g.branchRef().String() + ":" + g.branchRef().String())}})
		if err == nil {
			g.commits++
			if c, cerr := g.repo.CommitObject(hash); cerr == nil {
				g.scanCommit(c) // its claims wrote their hold files
			}
			g.seen = hash
			return next, nil
		}
		if !isRejected(err) {
			return nil, fmt.Errorf("pushing to the lock repository %s: %w", redactURL(g.opt.URL), err)
		}
		g.conflicts++
		t := time.NewTimer(g.opt.RetryDelay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

func isRejected(err error) bool {
	if errors.Is(err, git.ErrNonFastForwardUpdate) {
		return true
	}
	s := err.Error()
	for _, m := range []string{"non-fast-forward", "rejected", "failed to update ref", "failed to lock", "fetch first", "cannot lock ref"} {
		if strings.Contains(s, m) {
			return true
		}
	}
	return false
}

// MutexDir is the repository directory of a project or group lock:
// MutexDirPrefix and the escaped id; one that would be longer than
// maxDirName (a long project path or environment name: a checkout on a
// real file system, Concourse's, refuses names over 255 bytes) is
// MutexDirPrefix, "~" and a hash of the id, with the id in its file
// idFile.
func MutexDir(pool string) string {
	d := MutexDirPrefix + url.PathEscape(pool)
	if len(d) <= maxDirName {
		return d
	}
	sum := sha256.Sum256([]byte(pool))
	return MutexDirPrefix + "~" + hex.EncodeToString(sum[:16])
}

const (
	maxDirName = 200
	idFile     = "id"
)

func poolDir(pool string) string {
	if IsMutex(pool) {
		return MutexDir(pool)
	}
	return pool
}

func keyFile(key string) string { return url.PathEscape(key) + ".json" }

// Read fetches and reads the state without changing the repository (a
// stale hold file is left for a daemon to remove).
func (g *Git) Read(ctx context.Context) (*State, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.sync(ctx); err != nil {
		return nil, err
	}
	st, _, _, err := readRepo(g.fs, g.foreign)
	return st, err
}

// readRepo builds the state from the worktree; files are the managed
// paths and their contents, stale the hold files left from before their
// lock's last foreign move (ignored).
func readRepo(fs billy.Filesystem, foreign map[string]bool) (*State, map[string]string, []string, error) {
	st := NewState()
	files := map[string]string{}
	var stale []string
	top, err := fs.ReadDir("/")
	if err != nil {
		return nil, nil, nil, err
	}
	pools, dirs := 0, 0
	dirPool := map[string]string{} // directory → pool id
	for _, fi := range top {
		if !fi.IsDir() || strings.HasPrefix(fi.Name(), ".") {
			continue
		}
		dir := fi.Name()
		poolID := dir
		if esc, ok := strings.CutPrefix(dir, MutexDirPrefix); ok {
			id, err := url.PathUnescape(esc)
			if strings.HasPrefix(esc, "~") {
				id, err = readFile(fs, dir+"/"+idFile)
			}
			if err != nil || !IsMutex(id) || MutexDir(id) != dir {
				continue // not ours
			}
			if strings.HasPrefix(esc, "~") {
				files[dir+"/"+idFile] = id
			}
			poolID = id
		} else if ValidName(dir) != nil {
			continue
		}
		if !hasAnyFile(fs, dir) {
			// git keeps no empty directory: one in the worktree is what a
			// commit that removed its files (a released project lock)
			// left behind
			continue
		}
		dirs++
		claimed, _ := fs.ReadDir(dir + "/claimed")
		unclaimed, _ := fs.ReadDir(dir + "/unclaimed")
		if !hasFile(claimed) && !hasFile(unclaimed) {
			continue // not a pool (git keeps no empty directory: a pool has .gitkeep)
		}
		pools++
		p := &Pool{Locks: map[string]*Lock{}}
		for _, side := range []struct {
			name string
			list []os.FileInfo
		}{{"unclaimed", unclaimed}, {"claimed", claimed}} {
			for _, f := range side.list {
				if f.IsDir() || f.Name() == gitkeep || ValidName(f.Name()) != nil {
					continue
				}
				fp := dir + "/" + side.name + "/" + f.Name()
				md, err := readFile(fs, fp)
				if err != nil {
					return nil, nil, nil, err
				}
				files[fp] = md
				l := &Lock{Metadata: md}
				if side.name == "claimed" {
					l.Holder = &Holder{} // outside paas-runner unless a hold file says who
				}
				p.Locks[f.Name()] = l // claimed wins over a stray unclaimed copy
			}
		}
		for _, side := range []string{"claimed", "unclaimed"} {
			if _, err := fs.Stat(dir + "/" + side + "/" + gitkeep); err == nil {
				files[dir+"/"+side+"/"+gitkeep] = ""
			}
		}
		st.Pools[poolID] = p
		dirPool[dir] = poolID
	}
	// holds
	if hdirs, err := fs.ReadDir(holdsDir); err == nil {
		for _, hd := range hdirs {
			hs, _ := fs.ReadDir(holdsDir + "/" + hd.Name())
			for _, h := range hs {
				fp := holdsDir + "/" + hd.Name() + "/" + h.Name()
				data, err := readFile(fs, fp)
				if err != nil {
					return nil, nil, nil, err
				}
				files[fp] = data
				pool := dirPool[hd.Name()]
				if foreign[hd.Name()+"/"+h.Name()] {
					stale = append(stale, fp) // left from before the lock's last foreign move
					continue
				}
				var holder Holder
				if json.Unmarshal([]byte(data), &holder) != nil {
					continue
				}
				if p := st.Pools[pool]; p != nil {
					if l := p.Locks[h.Name()]; l != nil && l.Holder != nil {
						l.Holder = &holder
					}
				}
			}
		}
	}
	// waiters
	if ws, err := fs.ReadDir(waitersDir); err == nil {
		for _, w := range ws {
			fp := waitersDir + "/" + w.Name()
			data, err := readFile(fs, fp)
			if err != nil {
				return nil, nil, nil, err
			}
			files[fp] = data
			var wr Waiter
			if json.Unmarshal([]byte(data), &wr) != nil {
				continue
			}
			st.Waiters[wr.Key()] = &wr
			st.Seq = max(st.Seq, wr.Seq)
		}
	}
	if pools == 0 && dirs > 0 {
		// a repository with only files (a README) is fine: locks are
		// made on demand; one with directories but no pool is not a lock
		// repository
		return nil, nil, nil, fmt.Errorf("the lock repository has directories but none with claimed/ or unclaimed/ files: %w", ErrNotPoolLayout)
	}
	return st, files, stale, nil
}

func hasFile(list []os.FileInfo) bool {
	for _, f := range list {
		if !f.IsDir() {
			return true
		}
	}
	return false
}

// hasAnyFile tells whether dir holds a file, at any depth.
func hasAnyFile(fs billy.Filesystem, dir string) bool {
	ents, _ := fs.ReadDir(dir)
	for _, e := range ents {
		if !e.IsDir() || hasAnyFile(fs, dir+"/"+e.Name()) {
			return true
		}
	}
	return false
}

func readFile(fs billy.Filesystem, p string) (string, error) {
	f, err := fs.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	return string(b), err
}

// write makes the worktree match next and returns the commit message ("":
// nothing to commit).
func (g *Git) write(files map[string]string, cur, next *State, stale []string) (string, error) {
	want := map[string]string{}
	for pn, p := range next.Pools {
		dir := poolDir(pn)
		want[dir+"/claimed/"+gitkeep] = ""
		want[dir+"/unclaimed/"+gitkeep] = ""
		if IsMutex(pn) && strings.HasPrefix(dir, MutexDirPrefix+"~") {
			want[dir+"/"+idFile] = pn
		}
		for ln, l := range p.Locks {
			side := "unclaimed"
			if l.Holder != nil {
				side = "claimed"
			}
			want[dir+"/"+side+"/"+ln] = l.Metadata
			if l.Holder != nil && l.Holder.JobID != 0 {
				b, _ := json.Marshal(l.Holder)
				want[holdsDir+"/"+dir+"/"+ln] = string(b)
			}
		}
	}
	for _, w := range next.Waiters {
		b, _ := json.Marshal(w)
		want[waitersDir+"/"+keyFile(w.Key())] = string(b)
	}
	// only pools the state knows are rewritten; a pool dir removed from
	// next (a free mutex) is deleted
	changed := false
	for fp, body := range want {
		if old, ok := files[fp]; ok && old == body {
			continue
		}
		if err := writeRepoFile(g.fs, fp, body); err != nil {
			return "", err
		}
		changed = true
	}
	for fp := range files {
		if _, ok := want[fp]; ok {
			continue
		}
		if !managed(fp, cur, next) {
			continue
		}
		if err := g.fs.Remove(fp); err != nil && !os.IsNotExist(err) {
			return "", err
		}
		changed = true // staged by the commit (All)
	}
	if !changed {
		return "", nil
	}
	if err := g.wt.AddWithOptions(&git.AddOptions{All: true}); err != nil {
		return "", fmt.Errorf("lock repository: %w", err)
	}
	return commitMessage(cur, next, stale), nil
}

// managed: paths paas-runner may delete: its own metadata, lock files of
// pools it knows, and mutex pools.
func managed(fp string, cur, next *State) bool {
	if strings.HasPrefix(fp, metaDir+"/") {
		return true
	}
	dir, _, _ := strings.Cut(fp, "/")
	if strings.HasPrefix(dir, MutexDirPrefix) {
		return true
	}
	_, inCur := cur.Pools[dir]
	_, inNext := next.Pools[dir]
	return inCur && inNext && path.Base(fp) != gitkeep
}

func writeRepoFile(fs billy.Filesystem, fp, body string) error {
	if err := fs.MkdirAll(path.Dir(fp), 0o755); err != nil {
		return err
	}
	f, err := fs.Create(fp)
	if err != nil {
		return err
	}
	if _, err := f.Write([]byte(body)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// commitMessage names what changed and who holds it: daemon, runner,
// project, job, pipeline, lease expiry.
func commitMessage(cur, next *State, stale []string) string {
	var lines []string
	for _, pn := range sortedKeys(union(cur.Pools, next.Pools)) {
		var locks map[string]*Lock
		if p := next.Pools[pn]; p != nil {
			locks = p.Locks
		}
		var oldLocks map[string]*Lock
		if p := cur.Pools[pn]; p != nil {
			oldLocks = p.Locks
		}
		for _, ln := range sortedKeys(union(oldLocks, locks)) {
			var was, now *Holder
			if l := oldLocks[ln]; l != nil {
				was = l.Holder
			}
			if l := locks[ln]; l != nil {
				now = l.Holder
			}
			name := poolDir(pn) + "/" + ln
			switch {
			case now != nil && was != nil && was.Key() != now.Key() && leaseExpired(*was, now.Since):
				lines = append(lines, fmt.Sprintf("claiming: %s for %s; the expired lease of %s is broken", name, holderLine(*now), holderLine(*was)))
			case now != nil && was != nil && was.Key() != now.Key():
				// released and granted in one commit (a hand-over)
				lines = append(lines, fmt.Sprintf("claiming: %s for %s, released by %s", name, holderLine(*now), holderLine(*was)))
			case now != nil && was == nil:
				lines = append(lines, fmt.Sprintf("claiming: %s for %s", name, holderLine(*now)))
			case now == nil && was != nil:
				lines = append(lines, fmt.Sprintf("unclaiming: %s (was %s)", name, holderLine(*was)))
			}
		}
	}
	for _, k := range sortedKeys(union(cur.Waiters, next.Waiters)) {
		w, was := next.Waiters[k], cur.Waiters[k]
		switch {
		case w != nil && was == nil:
			lines = append(lines, fmt.Sprintf("waiting: job %d (pipeline %d, %s, daemon %s)", w.JobID, w.PipelineID, w.Project, w.Daemon))
		case w == nil && was != nil:
			lines = append(lines, fmt.Sprintf("done waiting: job %d (daemon %s)", was.JobID, was.Daemon))
		case w != nil && was != nil && w.SupersededBy != was.SupersededBy:
			lines = append(lines, fmt.Sprintf("superseded: job %d by pipeline %d", w.JobID, w.SupersededBy))
		}
	}
	for _, fp := range stale {
		lines = append(lines, fmt.Sprintf("forgetting: %s (its lock was claimed or released outside paas-runner since)", fp))
	}
	if len(lines) == 0 {
		lines = []string{"paas-runner: pool layout"}
	}
	if len(lines) == 1 {
		return lines[0] + "\n"
	}
	return fmt.Sprintf("%s (+%d more)\n\n%s\n", lines[0], len(lines)-1, strings.Join(lines, "\n"))
}

// leaseExpired tells whether h's lease had run out at t (a hold outside
// paas-runner has none).
func leaseExpired(h Holder, t time.Time) bool {
	return h.JobID != 0 && !h.Expires.IsZero() && t.After(h.Expires)
}

func holderLine(h Holder) string {
	if h.JobID == 0 {
		return "someone outside paas-runner"
	}
	return fmt.Sprintf("job %d (pipeline %d, project %s, runner %s, daemon %s, lease until %s)",
		h.JobID, h.PipelineID, h.Project, h.Runner, h.Daemon, h.Expires.UTC().Format(time.RFC3339))
}

func union[V any](a, b map[string]V) map[string]V {
	out := make(map[string]V, len(a)+len(b))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

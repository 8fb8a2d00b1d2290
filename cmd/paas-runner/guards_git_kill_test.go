package main_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

// checkOneHolder reads the launches.log two daemons share: between a job's
// launch and its host's removal no other job is launched; every job of
// want is launched once, in that order.
func checkOneHolder(t *testing.T, path string, want ...string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	holder := ""
	var order []string
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if name, ok := strings.CutPrefix(l, "removed "); ok {
			if holder == "" || name != hostOf(holder) {
				t.Fatalf("host %s removed while %q holds the lock:\n%s", name, holder, data)
			}
			holder = ""
			continue
		}
		if holder != "" {
			t.Fatalf("%s launched while %s holds the lock:\n%s", l, holder, data)
		}
		holder = l
		order = append(order, l)
	}
	if strings.Join(order, " ") != strings.Join(want, " ") {
		t.Fatalf("launches %v, want %v", order, want)
	}
}

func launchKey(e *env, j *coordinatortest.Job) string {
	return strings.TrimPrefix(e.hostName(j.ID), "host-")[:8] + "/" + strconv.FormatInt(j.ID, 10)
}

// Two daemons on one lock repository; one is killed (SIGKILL) between its
// claim commit and the end of provisioning, while it also has a job
// waiting. After its restart its job still holds the lock (the other
// daemon's waiter does not get it) and is launched once; the waiters keep
// their places (oldest pipeline first, across the daemons); every lock is
// released at its job's end, and no two jobs ever hold it at once.
func TestGitSIGKILLWhileHoldingAndWaiting(t *testing.T) {
	repo := newLockRepo(t, map[string]string{"README.md": "locks\n"})
	gl := coordinatortest.New(t)
	a := gitDaemonEnv(t, gl, "alpha", "", repo.guardsSection(""))
	b := gitDaemonEnv(t, gl, "bravo", "", repo.guardsSection(""))
	if err := os.Symlink(filepath.Join(a.hosts, "launches.log"), filepath.Join(b.hosts, "launches.log")); err != nil {
		t.Fatal(err)
	}
	pa, pb := a.start("provision"), b.start("")
	a1 := guardedJob(gl, a.token, 1, "PAAS_LOCK", "production")
	a.waitFile(filepath.Join(a.hosts, a.hostName(a1.ID)+".holding-provision"))
	if log := repo.git("log", "-1", "--format=%B", "main"); !strings.Contains(log, "claiming: ") || !strings.Contains(log, "for job "+strconv.FormatInt(a1.ID, 10)) {
		t.Fatalf("the claim was not pushed before provisioning: %s", log)
	}
	b2 := guardedJob(gl, b.token, 2, "PAAS_LOCK", "production")
	a3 := guardedJob(gl, a.token, 3, "PAAS_LOCK", "production")
	for _, j := range []*coordinatortest.Job{b2, a3} {
		gl.WaitFor(procWait, "waiting", func(s *coordinatortest.Server) bool {
			return s.TraceContains(j.ID, "waiting for lock production (held by job "+strconv.FormatInt(a1.ID, 10))
		})
	}
	pa.signal(syscall.SIGKILL)
	pa.wait(t)
	pa = a.start("")
	a.waitFile(filepath.Join(a.hosts, a.hostName(a1.ID)+".launched"))
	gl.Finish(a1.ID, "success")
	b.waitFile(filepath.Join(b.hosts, b.hostName(b2.ID)+".launched"))
	gl.Finish(b2.ID, "success")
	a.waitFile(filepath.Join(a.hosts, a.hostName(a3.ID)+".launched"))
	gl.Finish(a3.ID, "success")
	a.waitNoHost()
	b.waitNoHost()
	for _, p := range []*proc{pa, pb} {
		p.signal(syscall.SIGTERM)
		if code := p.wait(t); code != 0 {
			t.Fatalf("exit %d", code)
		}
	}
	checkOneHolder(t, filepath.Join(a.hosts, "launches.log"), launchKey(a, a1), launchKey(b, b2), launchKey(a, a3))
	if tree := repo.git("ls-tree", "-r", "--name-only", "main"); strings.Contains(tree, "/claimed/lock") || strings.Contains(tree, ".paas-runner/") {
		t.Fatalf("the repository after every job ended:\n%s", tree)
	}
	for _, j := range gl.Jobs() {
		if j.Acquisitions != 1 {
			t.Fatalf("job %d acquired %d times", j.ID, j.Acquisitions)
		}
	}
}

// A daemon killed while it holds a lock never comes back: the hold's lease
// (the job's timeout, 2 s here, plus lease_margin, 1 s) expires and the
// other daemon breaks it, says so in the commit, and runs its waiting job.
// A live lease is not broken meanwhile.
func TestGitLeaseOfADeadDaemon(t *testing.T) {
	repo := newLockRepo(t, map[string]string{"README.md": "locks\n"})
	gl := coordinatortest.New(t)
	a := gitDaemonEnv(t, gl, "alpha", "", repo.guardsSection(`lease_margin = "1s"`))
	b := gitDaemonEnv(t, gl, "bravo", "", repo.guardsSection(""))
	pa, pb := a.start(""), b.start("")
	a1 := gl.Enqueue(a.token, map[string]any{
		"job_info":    map[string]any{"name": "deploy", "project_id": 1, "pipeline_id": 1, "project_full_path": "acme/web"},
		"runner_info": map[string]any{"timeout": 2},
		"variables": []map[string]any{{"key": "CI_PROJECT_PATH", "value": "acme/web", "public": true},
			{"key": "CI_PROJECT_ROOT_NAMESPACE", "value": "acme", "public": true}, {"key": "PAAS_LOCK", "value": "production", "public": true}}})
	a.waitFile(filepath.Join(a.hosts, a.hostName(a1.ID)+".launched"))
	b2 := guardedJob(gl, b.token, 2, "PAAS_LOCK", "production")
	gl.WaitFor(procWait, "b2 waiting", func(s *coordinatortest.Server) bool {
		return s.TraceContains(b2.ID, "waiting for lock production (held by job "+strconv.FormatInt(a1.ID, 10))
	})
	pa.signal(syscall.SIGKILL)
	pa.wait(t)
	b.waitFile(filepath.Join(b.hosts, b.hostName(b2.ID)+".launched"))
	log := repo.git("log", "--format=%B", "main")
	if !strings.Contains(log, "the expired lease of job "+strconv.FormatInt(a1.ID, 10)) {
		t.Fatalf("no broken lease in the history:\n%s", log)
	}
	// the live lease was kept: b2's host came after a1's lease expiry
	m := regexp.MustCompile(`claiming: \S+ for job ` + strconv.FormatInt(a1.ID, 10) + ` \([^)]*lease until (\S+)\)`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("no claim of job %d in the history:\n%s", a1.ID, log)
	}
	until, err := time.Parse(time.RFC3339, m[1])
	fi, serr := os.Stat(filepath.Join(b.hosts, b.hostName(b2.ID)+".host"))
	if err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	if fi.ModTime().Before(until) {
		t.Fatalf("b2's host made at %v, before a1's lease ended (%s)", fi.ModTime(), m[1])
	}
	if !strings.Contains(pb.log(), "lease expired: lock freed") {
		t.Fatalf("the breaking daemon did not log it:\n%s", pb.log())
	}
	gl.Finish(b2.ID, "success")
	b.waitNoHost()
	pb.signal(syscall.SIGTERM)
	if code := pb.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// The lock repository refuses the daemon at its start and for a while: the
// daemon starts and runs jobs without locks; a job with a lock waits,
// saying in its log that the lock store is unreachable, and runs once the
// repository answers again.
func TestGitRepositoryUnreachable(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	repo := newLockRepoGated(t, map[string]string{"README.md": "locks\n"}, &down)
	gl := coordinatortest.New(t)
	e := gitDaemonEnv(t, gl, "alpha", "", repo.guardsSection(""))
	p := e.start("")
	free := gl.Enqueue(e.token, nil)
	locked := guardedJob(gl, e.token, 2, "PAAS_LOCK", "production")
	e.waitFile(filepath.Join(e.hosts, e.hostName(free.ID)+".launched"))
	gl.WaitFor(procWait, "the locked job saying why it waits", func(s *coordinatortest.Server) bool {
		return s.TraceContains(locked.ID, "the lock store is unreachable")
	})
	if _, err := os.Stat(filepath.Join(e.hosts, e.hostName(locked.ID)+".host")); err == nil {
		t.Fatal("a host was made for a job whose lock could not be taken")
	}
	down.Store(false)
	e.waitFile(filepath.Join(e.hosts, e.hostName(locked.ID)+".launched"))
	gl.Finish(free.ID, "success")
	gl.Finish(locked.ID, "success")
	e.waitNoHost()
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if tree := repo.git("ls-tree", "-r", "--name-only", "main"); strings.Contains(tree, "/claimed/lock") || strings.Contains(tree, ".paas-runner/") {
		t.Fatalf("the repository after the jobs ended:\n%s", tree)
	}
	if strings.Contains(p.log(), "s3cret") || strings.Contains(string(gl.Job(locked.ID).Trace), "s3cret") {
		t.Fatal("the repository password in a log")
	}
	if !strings.Contains(p.log(), "unreachable") {
		t.Fatalf("the daemon did not log the unreachable repository:\n%s", p.log())
	}
}

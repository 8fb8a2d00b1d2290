package main_test

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

// TestRandomCrashes is the "a job's script never runs twice" test: the real
// daemon (test executor, whose launches.log records every real launch) is
// SIGKILLed at random points of the jobs' lives and restarted, while the
// fake GitLab answers 502/503 at random. 60 short jobs, concurrent 6. In the
// end every job GitLab queued ran exactly once (itself, or the retry GitLab
// made of it when it was never confirmed), no host is left, and the state
// file is empty. PAAS_RUNNER_CRASH_SEEDS=N runs N seeds (default 3),
// PAAS_RUNNER_CRASH_SEED=S starts from seed S.
func TestRandomCrashes(t *testing.T) {
	seeds := 3
	if v, err := strconv.Atoi(os.Getenv("PAAS_RUNNER_CRASH_SEEDS")); err == nil && v > 0 {
		seeds = v
	}
	base := time.Now().UnixNano()
	if v, err := strconv.ParseInt(os.Getenv("PAAS_RUNNER_CRASH_SEED"), 10, 64); err == nil {
		base = v // replay the kill and error timings of a failed seed
	}
	for i := 0; i < seeds; i++ {
		seed := base + int64(i)
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { randomCrashes(t, seed) })
	}
}

func (e *env) runnerID() string { return config.RunnerID(e.token) }

var launchedRe = regexp.MustCompile(`^host-[^-]+-(\d+)\.launched$`)

func randomCrashes(t *testing.T, seed int64) {
	const jobs, kills = 60, 10
	rng := rand.New(rand.NewSource(seed))
	e := newEnv(t, "shutdown_timeout = 2")
	// concurrent 6 (newEnv writes 10)
	cfg, _ := os.ReadFile(e.config)
	os.WriteFile(e.config, []byte(strings.Replace(string(cfg), "concurrent = 10", "concurrent = 6", 1)), 0o600)
	e.gl.AckTimeout = 1500 * time.Millisecond
	// steps that take time, so that kills land inside them
	e.extraEnv = append(e.extraEnv, "PAAS_RUNNER_TEST_EXECUTOR_DELAY=60ms")
	var queued []int64
	for i := 0; i < jobs; i++ {
		queued = append(queued, e.gl.Enqueue("", nil).ID)
	}

	stop := make(chan struct{})
	var bg sync.WaitGroup
	var mu sync.Mutex // guards rng from here on
	rnd := func(n int) int { mu.Lock(); defer mu.Unlock(); return rng.Intn(n) }
	// GitLab errors at random
	routes := []string{`^POST /api/v4/jobs/request$`, `^PUT /api/v4/jobs/\d+$`, `^PATCH /api/v4/jobs/\d+/trace$`, `^GET /api/v4/job$`}
	bg.Add(1)
	go func() {
		defer bg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(50+rnd(200)) * time.Millisecond):
			}
			status := []int{502, 503}[rnd(2)]
			e.gl.Inject(routes[rnd(len(routes))], status, 1+rnd(2), nil)
		}
	}()
	// the jobs' scripts: each ends a short while after its launch
	bg.Add(1)
	go func() {
		defer bg.Done()
		seen := map[string]bool{}
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond): // another process makes the files
			}
			ents, _ := os.ReadDir(e.hosts)
			for _, ent := range ents {
				m := launchedRe.FindStringSubmatch(ent.Name())
				if m == nil || seen[ent.Name()] {
					continue
				}
				seen[ent.Name()] = true
				id, _ := strconv.ParseInt(m[1], 10, 64)
				time.AfterFunc(time.Duration(20+rnd(300))*time.Millisecond, func() { e.gl.Finish(id, "success") })
			}
		}
	}()

	// final is the last job of the chain GitLab made of id (retries of a
	// job never confirmed).
	final := func(s *coordinatortest.Server, id int64) (last int64, status string) {
		for {
			var next int64
			s.Each(func(j *coordinatortest.Job) {
				if j.ID == id {
					next, status = j.RetriedAs, j.Status
				}
			})
			if next == 0 {
				return id, status
			}
			id = next
		}
	}
	allDone := func(s *coordinatortest.Server) bool {
		for _, id := range queued {
			if _, st := final(s, id); st != "success" {
				return false
			}
		}
		return true
	}

	var p *proc
	for k := 0; k < kills; k++ {
		p = e.start("")
		time.Sleep(time.Duration(200+rnd(1800)) * time.Millisecond) // a random point in the jobs' lives
		p.signal(syscall.SIGKILL)
		if code := p.wait(t); code != -int(syscall.SIGKILL) {
			t.Fatalf("killed daemon: exit %d\n%s", code, p.log())
		}
	}
	close(stop)
	bg.Wait()
	e.gl.ClearInjections()
	before := e.gl.Count("POST /api/v4/jobs/request")
	p = e.start("")
	e.gl.WaitFor(procWait, "the final daemon polling", func(s *coordinatortest.Server) bool {
		return s.CountOf("POST /api/v4/jobs/request") > before
	})
	// the finisher stopped: end what is left as it would have
	for deadline := time.Now().Add(2 * time.Minute); ; {
		for _, j := range e.gl.Jobs() {
			if j.Status == "running" {
				if _, err := os.Stat(filepath.Join(e.hosts, e.hostName(j.ID)+".launched")); err == nil {
					e.gl.Finish(j.ID, "success")
				}
			}
		}
		var ok bool
		e.gl.WaitFor(time.Second, "", func(s *coordinatortest.Server) bool { ok = allDone(s); return true })
		if ok {
			break
		}
		if time.Now().After(deadline) {
			var left []string
			e.gl.WaitFor(time.Second, "", func(s *coordinatortest.Server) bool {
				for _, id := range queued {
					if last, st := final(s, id); st != "success" {
						left = append(left, fmt.Sprintf("%d→%d:%s", id, last, st))
					}
				}
				return true
			})
			t.Fatalf("jobs not done: %v\n%s", left, p.log())
		}
		time.Sleep(50 * time.Millisecond) // the daemon, another process, works on them
	}
	// hosts removed
	deadline := time.Now().Add(procWait)
	for {
		m, _ := filepath.Glob(filepath.Join(e.hosts, "*.host"))
		if len(m) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hosts left: %v", m)
		}
		time.Sleep(20 * time.Millisecond) // another process removes them
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("final daemon: exit %d", code)
	}
	e.noLeak()
	launches := e.launches()
	for k, n := range launches {
		if n != 1 {
			t.Errorf("%s launched %d times", k, n)
		}
	}
	retries := 0
	for _, id := range queued {
		runs := 0
		for cur := id; cur != 0; {
			j := e.gl.Job(cur)
			runs += launches[fmt.Sprintf("%s/%d", e.runnerID(), cur)]
			if j.Acquisitions > 1 {
				t.Errorf("job %d handed out %d times", cur, j.Acquisitions)
			}
			if j.RetriedAs != 0 {
				retries++
			}
			cur = j.RetriedAs
		}
		if runs != 1 {
			t.Errorf("job %d (and its retries) ran %d times", id, runs)
		}
	}
	st := e.checkStateFile()
	if n := len(st["launched"]) + len(st["pending"]) + len(st["to_decommission"]); n != 0 {
		t.Fatalf("state not empty: %v", st)
	}
	t.Logf("seed %d: %d kills, %d jobs given up unconfirmed and retried by GitLab", seed, kills, retries)
}

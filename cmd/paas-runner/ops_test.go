package main_test

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

// eventually polls cond until it holds; cond runs against another process
// (the daemon), which offers no event to wait on.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(procWait)
	for {
		ok, got := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last seen:\n%s", what, got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (p *proc) metricsAddr(t *testing.T) string {
	t.Helper()
	var addr string
	eventually(t, "the metrics address in the log", func() (bool, string) {
		m := regexp.MustCompile(`"listen_address":"([^"]+)"`).FindStringSubmatch(p.log())
		if m != nil {
			addr = m[1]
		}
		return m != nil, p.log()
	})
	return addr
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

type debugDoc struct {
	SystemID string `json:"system_id"`
	Jobs     []struct {
		Runner     string `json:"runner"`
		JobID      int64  `json:"job_id"`
		State      string `json:"state"`
		Host       string `json:"host"`
		WaitingFor string `json:"waiting_for"`
	} `json:"jobs"`
}

func debugJobs(t *testing.T, addr string) (debugDoc, string) {
	t.Helper()
	code, body := get(t, "http://"+addr+"/debug/jobs")
	var doc debugDoc
	if code != 200 || json.Unmarshal([]byte(body), &doc) != nil {
		t.Fatalf("/debug/jobs: %d %s", code, body)
	}
	return doc, body
}

// metricHas reports whether a scrape has a sample line matching re.
func metricHas(body, re string) bool {
	return regexp.MustCompile(`(?m)^` + re).MatchString(body)
}

// Health, /debug/jobs and /metrics scraped while a job goes through its
// life: the values follow it.
func TestOpsEndpointsFollowAJob(t *testing.T) {
	e := newEnv(t, "shutdown_timeout = 20\nlisten_address = \"127.0.0.1:0\"")
	p := e.start("provision", "--log-format", "json")
	addr := p.metricsAddr(t)
	if code, body := get(t, "http://"+addr+"/healthz"); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	eventually(t, "/readyz 200", func() (bool, string) {
		code, body := get(t, "http://"+addr+"/readyz")
		return code == 200, body
	})
	j := e.gl.Enqueue("", nil)
	name := e.hostName(j.ID)
	e.waitFile(filepath.Join(e.hosts, name+".holding-provision"))

	doc, body := debugJobs(t, addr)
	if len(doc.Jobs) != 1 || doc.Jobs[0].JobID != j.ID || doc.Jobs[0].State != "provisioning" || doc.Jobs[0].Host != name || doc.Jobs[0].WaitingFor == "" {
		t.Fatalf("/debug/jobs while provisioning: %s", body)
	}
	if strings.Contains(body, e.gl.Job(j.ID).Token) || strings.Contains(body, e.token) || !strings.HasPrefix(doc.SystemID, "r_") {
		t.Fatalf("/debug/jobs: token or no system id: %s", body)
	}
	scrape := func() string { _, b := get(t, "http://"+addr+"/metrics"); return b }
	m := scrape()
	for _, re := range []string{
		`paas_runner_jobs_by_state\{executor="test-dir",runner="[^"]+",state="provisioning"\} 1$`,
		`gitlab_runner_jobs\{executor_stage="provisioning",runner="[^"]+",runner_name="proc",stage="provisioning",state="pending",system_id="r_[^"]+"\} 1$`,
		`paas_runner_acquisitions_total\{answer="job",runner="[^"]+"\} 1$`,
		`paas_runner_acquisitions_total\{answer="no_job",runner="[^"]+"\} \d+`,
		`gitlab_runner_api_request_statuses_total\{endpoint="request_job",method="post",runner="[^"]+",status="201",system_id="r_[^"]+"\} 1$`,
		`gitlab_runner_api_request_statuses_total\{endpoint="request_job",method="post",runner="[^"]+",status="204",system_id="r_[^"]+"\} \d+`,
		`gitlab_runner_api_request_duration_seconds_count\{endpoint="request_job",method="post",runner="[^"]+",status_class="2xx",system_id="r_[^"]+"\} \d+`,
		`gitlab_runner_jobs_total\{runner="[^"]+",runner_name="proc",system_id="r_[^"]+"\} 1$`,
		`gitlab_runner_concurrent 10$`,
		`gitlab_runner_version_info\{architecture="[^"]+",branch="",built_at="",go_version="go[^"]+",name="paas-runner",os="[^"]+",revision="[^"]*",version="[^"]+"\} 1$`,
		`gitlab_runner_errors_total\{level="warning"\} \d+$`,
		`gitlab_runner_limit\{runner="[^"]+",runner_name="proc",system_id="r_[^"]+"\} 0$`,
		`paas_runner_hosts_alive\{executor="test-dir"\} 1$`,
		`paas_runner_state_write_duration_seconds_count\{kind="journal",result="ok"\} [1-9]`,
		`paas_runner_provisioning_duration_seconds_count\{executor="test-dir"\} 0$`,
		// the original names keep working (paas_runner_jobs counts the
		// slot a job request in flight reserves: 1 or 2 here)
		`paas_runner_jobs [12]$`,
	} {
		if !metricHas(m, re) {
			t.Fatalf("metrics while provisioning lack %s:\n%s", re, m)
		}
	}

	os.WriteFile(filepath.Join(e.hosts, "release"), nil, 0o600)
	e.waitFile(filepath.Join(e.hosts, name+".launched"))
	eventually(t, "the job launched in /debug/jobs and /metrics", func() (bool, string) {
		doc, body := debugJobs(t, addr)
		m := scrape()
		return len(doc.Jobs) == 1 && doc.Jobs[0].State == "launched" &&
			metricHas(m, `paas_runner_provisioning_duration_seconds_count\{executor="test-dir"\} 1$`) &&
			metricHas(m, `gitlab_runner_jobs\{executor_stage="launched",runner="[^"]+",runner_name="proc",stage="launched",state="running",system_id="r_[^"]+"\} 1$`), body + m
	})
	e.gl.Finish(j.ID, "success")
	eventually(t, "the host removed in /debug/jobs and /metrics", func() (bool, string) {
		doc, body := debugJobs(t, addr)
		m := scrape()
		return len(doc.Jobs) == 0 &&
			metricHas(m, `paas_runner_decommission_lag_seconds_count\{executor="test-dir"\} 1$`) &&
			metricHas(m, `gitlab_runner_job_duration_seconds_count\{runner="[^"]+",runner_name="proc",system_id="r_[^"]+"\} 1$`) &&
			metricHas(m, `paas_runner_hosts_alive\{executor="test-dir"\} 0$`) &&
			metricHas(m, `paas_runner_jobs_by_state\{executor="test-dir",runner="[^"]+",state="launched"\} 0$`), body + m
	})
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// readyThenRefused starts a daemon with the runner keys extra (appended
// to the runner's section) and a listen_address, waits for /readyz 200,
// then has the fake GitLab refuse the runner's token; it returns the
// environment, the process and the listen address.
func readyThenRefused(t *testing.T, extra string) (*env, *proc, string) {
	t.Helper()
	e := newEnv(t, "listen_address = \"127.0.0.1:0\"")
	f, _ := os.OpenFile(e.config, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(extra)
	f.Close()
	p := e.start("", "--log-format", "json")
	addr := p.metricsAddr(t)
	eventually(t, "/readyz 200", func() (bool, string) {
		code, body := get(t, "http://"+addr+"/readyz")
		return code == 200, body
	})
	e.gl.RemoveRunner(e.token)
	return e, p, addr
}

// A runner GitLab refuses (403) is paused and the daemon is not ready.
func TestReadyzFalseWhenEveryRunnerIsRefused(t *testing.T) {
	_, p, addr := readyThenRefused(t, "unhealthy_requests_limit = 2\nunhealthy_interval = 3600\n")
	eventually(t, "/readyz 503 naming the 403s and the pause", func() (bool, string) {
		code, body := get(t, "http://"+addr+"/readyz")
		return code == 503 && strings.Contains(body, "403") && strings.Contains(body, "proc paused until"), body
	})
	if _, m := get(t, "http://"+addr+"/metrics"); !metricHas(m, `paas_runner_runner_paused\{runner="[^"]+"\} 1$`) ||
		!metricHas(m, `paas_runner_acquisitions_total\{answer="forbidden",runner="[^"]+"\} 2$`) {
		t.Fatalf("metrics:\n%s", m)
	}
	if code, _ := get(t, "http://"+addr+"/healthz"); code != 200 {
		t.Fatalf("/healthz %d: alive while not ready", code)
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// A runner that never pauses (unhealthy_requests_limit = 0) but whose
// token GitLab refuses cannot poll either: /readyz says so from its first
// 403, and is ready again once GitLab takes the token.
func TestReadyzFalseWhileTheTokenIsRefused(t *testing.T) {
	e, p, addr := readyThenRefused(t, "unhealthy_requests_limit = 0\n")
	eventually(t, "/readyz 503 naming the 403", func() (bool, string) {
		code, body := get(t, "http://"+addr+"/readyz")
		return code == 503 && strings.Contains(body, "403") && strings.Contains(body, "proc (its last job request)"), body
	})
	e.gl.AddRunner(e.token)
	eventually(t, "/readyz 200 again", func() (bool, string) {
		code, body := get(t, "http://"+addr+"/readyz")
		return code == 200, body
	})
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// systemd's notify protocol, against a socket the test listens on.
func TestSystemdNotify(t *testing.T) {
	e := newEnv(t, "shutdown_timeout = 20")
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := make(chan string, 1000)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	var seen []string
	next := func(what string, ok func(string) bool) string {
		t.Helper()
		timeout := time.After(procWait)
		for {
			select {
			case m := <-msgs:
				seen = append(seen, m)
				if ok(m) {
					return m
				}
			case <-timeout:
				t.Fatalf("no %s notification; seen %q", what, seen)
			}
		}
	}
	e.extraEnv = []string{"NOTIFY_SOCKET=" + sock, "PAAS_RUNNER_STATUS_INTERVAL=20ms"}
	p := e.start("")
	ready := next("READY=1", func(m string) bool { return strings.Contains(m, "READY=1") })
	if !strings.Contains(ready, "STATUS=0 jobs") {
		t.Fatalf("READY without a status line: %q", ready)
	}
	j := e.gl.Enqueue("", nil)
	e.waitFile(filepath.Join(e.hosts, e.hostName(j.ID)+".launched"))
	next("STATUS with the launched job", func(m string) bool { return strings.HasPrefix(m, "STATUS=1 jobs: 1 launched") })

	// SIGHUP reloads (the daemon lives on), announced to systemd; an
	// invalid file is refused and said so
	p.signal(syscall.SIGHUP)
	next("RELOADING=1", func(m string) bool { return strings.HasPrefix(m, "RELOADING=1\nMONOTONIC_USEC=") })
	after := next("READY=1 after the reload", func(m string) bool { return strings.Contains(m, "READY=1") })
	if !strings.Contains(after, "STATUS=1 jobs: 1 launched") {
		t.Fatalf("reload outcome: %q", after)
	}
	good, _ := os.ReadFile(e.config)
	os.WriteFile(e.config, append(append([]byte{}, good...), "bogus_key = 1\n"...), 0o600)
	after = next("READY=1 after a refused reload", func(m string) bool { return strings.Contains(m, "READY=1") })
	if !strings.Contains(after, "STATUS=reload failed") || !strings.Contains(after, "bogus_key") {
		t.Fatalf("refused reload: %q", after)
	}
	os.WriteFile(e.config, good, 0o600)
	e.gl.Finish(j.ID, "success")
	next("STATUS back to 0 jobs", func(m string) bool { return strings.HasPrefix(m, "STATUS=0 jobs") })
	select {
	case <-p.done:
		t.Fatalf("the daemon exited after SIGHUP:\n%s", p.log())
	default:
	}
	if !strings.Contains(p.log(), "configuration reloaded") {
		t.Fatalf("SIGHUP reload not logged:\n%s", p.log())
	}
	p.signal(syscall.SIGTERM)
	next("STOPPING=1", func(m string) bool { return strings.HasPrefix(m, "STOPPING=1") })
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func runStatus(t *testing.T, config string) string {
	t.Helper()
	out, err := exec.Command(binary, "status", config).CombinedOutput()
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	return string(out)
}

// paas-runner status: from the running daemon, from the state file while
// the daemon runs (read only: the daemon goes on), and after it stopped.
func TestStatusCommand(t *testing.T) {
	addr := freePort(t)
	e := newEnv(t, "shutdown_timeout = 1\nlisten_address = \""+addr+"\"")
	p := e.start("provision")
	j := e.gl.Enqueue("", nil)
	name := e.hostName(j.ID)
	e.waitFile(filepath.Join(e.hosts, name+".holding-provision"))
	eventually(t, "the daemon answering", func() (bool, string) {
		resp, err := http.Get("http://" + addr + "/debug/jobs")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return true, ""
	})
	row := regexp.MustCompile(`(?m)^proc \(\S+\)\s+` + regexp.QuoteMeta(jobID(j.ID)) + `\s+provisioning\s+` + regexp.QuoteMeta(name) + `\s+\d+s\s+the host to be created$`)
	out := runStatus(t, e.config)
	if !strings.HasPrefix(out, "source: daemon at "+addr) || !row.MatchString(out) || !strings.Contains(out, "RUNNER") {
		t.Fatalf("status from the daemon:\n%s", out)
	}
	if strings.Contains(out, e.gl.Job(j.ID).Token) {
		t.Fatal("status printed a job token")
	}

	// the same state file, no listen_address: read while the daemon holds the lock
	cfg2 := filepath.Join(e.dir, "nolisten.toml")
	b, _ := os.ReadFile(e.config)
	os.WriteFile(cfg2, []byte(strings.Replace(string(b), "listen_address = \""+addr+"\"", "", 1)), 0o600)
	out = runStatus(t, cfg2)
	if !strings.HasPrefix(out, "source: state file "+e.state) || !row.MatchString(out) {
		t.Fatalf("status from the state file:\n%s", out)
	}
	// the daemon was not disturbed: it goes on with the job
	os.WriteFile(filepath.Join(e.hosts, "release"), nil, 0o600)
	e.waitFile(filepath.Join(e.hosts, name+".launched"))
	eventually(t, "the daemon saving the launch", func() (bool, string) {
		out := runStatus(t, cfg2)
		return strings.Contains(out, " launched "), out
	})
	p.signal(syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	stat := func() string {
		var s strings.Builder
		for _, f := range []string{e.state, e.state + ".journal"} {
			if fi, err := os.Stat(f); err == nil {
				s.WriteString(f + fi.ModTime().String() + " ")
			}
		}
		return s.String()
	}
	before := stat()
	out = runStatus(t, e.config) // the daemon is gone: connection refused
	if !strings.HasPrefix(out, "source: state file "+e.state+" (daemon not reachable") ||
		!regexp.MustCompile(`(?m)^proc \(\S+\)\s+`+jobID(j.ID)+`\s+launched\s+`+regexp.QuoteMeta(name)+`\s+\d+s\s+the job to end$`).MatchString(out) {
		t.Fatalf("status after the daemon stopped:\n%s", out)
	}
	if stat() != before {
		t.Fatal("status changed the state files")
	}
	// and a daemon starts on it afterwards (no lock left behind)
	p2 := e.start("")
	e.gl.Finish(j.ID, "success")
	eventually(t, "the host removed", func() (bool, string) {
		m, _ := filepath.Glob(filepath.Join(e.hosts, "*.host"))
		return len(m) == 0, strings.Join(m, " ")
	})
	p2.signal(syscall.SIGTERM)
	p2.wait(t)
	if out := runStatus(t, e.config); !strings.Contains(out, "no tracked jobs") {
		t.Fatalf("status with no jobs:\n%s", out)
	}
	_ = coordinatortest.New
}

func jobID(id int64) string { return strings.TrimSpace(strings.Repeat(" ", 0) + itoa(id)) }

func itoa(i int64) string { b, _ := json.Marshal(i); return string(b) }

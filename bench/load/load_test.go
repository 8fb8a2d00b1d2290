package main

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestQuantiles(t *testing.T) {
	var ds []time.Duration
	for i := 10; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Second)
	}
	p50, p90, ok := quantiles(ds)
	if !ok || p50 != 5*time.Second || p90 != 9*time.Second {
		t.Errorf("p50 %v p90 %v", p50, p90)
	}
	if p50, p90, _ := quantiles(ds[:1]); p50 != 10*time.Second || p90 != 10*time.Second {
		t.Errorf("one value: %v %v", p50, p90)
	}
	if _, _, ok := quantiles(nil); ok {
		t.Error("no values, yet quantiles")
	}
	if got := pair(ds[:3], 4); got != "9.00 s / 10.0 s (3 of 4)" {
		t.Errorf("pair: %q", got)
	}
}

// The printed lines are found in a job log, the command echoed before
// them is not one.
func TestFindPrinted(t *testing.T) {
	log := "\x1b[32;1m$ echo \"PRINTED-A $(cat /proc/uptime)\"; sleep 12; echo \"PRINTED-B $(cat /proc/uptime)\"\x1b[0;m\n" +
		"PRINTED-A 1234.56 5678.90\nPRINTED-B 1246.5"
	got := findPrinted([]byte(log))
	if len(got) != 1 || got[0] != (printed{"A", 1234.56}) {
		t.Errorf("%+v", got)
	}
	if got := findPrinted([]byte(log + "7 5690.11\n")); len(got) != 2 || got[1] != (printed{"B", 1246.57}) {
		t.Errorf("%+v", got)
	}
	for v := range variants {
		if printedLines(v) == 0 {
			t.Errorf("variant %s prints nothing to measure", v)
		}
	}
}

func TestRoute(t *testing.T) {
	for in, want := range map[string]string{
		"PATCH /api/v4/jobs/1234/trace": "PATCH /api/v4/jobs/:id/trace",
		"PUT /api/v4/jobs/99":           "PUT /api/v4/jobs/:id",
		"GET /api/v4/job":               "GET /api/v4/job",
	} {
		m, p, _ := strings.Cut(in, " ")
		if got := route(m, p); got != want {
			t.Errorf("route(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestStatTicks(t *testing.T) {
	line := "4242 (a b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 1 0 100 1000 10"
	if got := statTicks([]byte(line)); got != 7+3+2+1 {
		t.Errorf("ticks %d, want 13", got)
	}
	if statTicks([]byte("garbage")) != 0 {
		t.Error("garbage parsed")
	}
}

// The daemon is told from the inner runners by the process holding the
// connection: a request of this process belongs to its tree, not to
// another process's; a request of that other process's child (busybox
// wget) belongs to that process's tree.
func TestSocketsOwnership(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("needs /bin/busybox")
	}
	type verdict struct{ self, other bool }
	got := make(chan verdict, 2)
	var self, other *sockets
	var port int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- verdict{self.owned(r.RemoteAddr, port), other.owned(r.RemoteAddr, port)}
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	port, _ = strconv.Atoi(u.Port())

	// the other process: a shell that fetches the URL once told to
	sh := exec.Command("/bin/busybox", "sh", "-c", "read go; /bin/busybox wget -q -O /dev/null "+srv.URL)
	stdin, err := sh.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sh.Process.Kill(); sh.Wait() }()
	self, other = newSockets(os.Getpid()), newSockets(sh.Process.Pid)
	if !slices.Contains(tree(os.Getpid()), sh.Process.Pid) {
		t.Fatalf("the tree of %d lacks its child %d", os.Getpid(), sh.Process.Pid)
	}

	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if v := <-got; !v.self || v.other {
		t.Errorf("this process's request: owned by this tree %v, by the shell's %v", v.self, v.other)
	}
	stdin.Write([]byte("go\n"))
	if v := <-got; !v.other || !v.self {
		t.Errorf("the shell's child's request: owned by the shell's tree %v, by this one (its grandparent) %v", v.other, v.self)
	}
}

// The boot clock agrees with /proc/uptime, which the scripts print.
func TestBootClock(t *testing.T) {
	c, err := newBootClock()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		t.Fatal(err)
	}
	now := c.at(time.Now())
	up, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	if d := now - up; d < 0 || d > 0.5 {
		t.Errorf("boot clock %.3f, /proc/uptime %.2f", now, up)
	}
}

// The steady state is from the last host's start to the first job's end,
// and only the daemon's requests in it count.
func TestSteadyWindow(t *testing.T) {
	at := func(s int) time.Time { return time.Unix(1000+int64(s), 0) }
	from, to, ok := steadyWindow([]time.Time{at(1), at(5), at(3)}, []time.Time{at(40), at(35), at(38)})
	if !ok || !from.Equal(at(5)) || !to.Equal(at(35)) {
		t.Fatalf("window %v → %v (%v)", from, to, ok)
	}
	if _, _, ok := steadyWindow([]time.Time{at(1), at(36)}, []time.Time{at(35), at(40)}); ok {
		t.Error("a job ended before the last host started, yet a steady state")
	}
	if _, _, ok := steadyWindow([]time.Time{at(1), {}}, []time.Time{at(35), at(40)}); ok {
		t.Error("a host never started, yet a steady state")
	}
	reqs := []request{
		{At: at(4), Route: "GET /api/v4/job", Daemon: true},
		{At: at(6), Route: "GET /api/v4/job", Daemon: true},
		{At: at(7), Route: "PATCH /api/v4/jobs/:id/trace", Daemon: false},
		{At: at(35), Route: "PUT /api/v4/jobs/:id", Daemon: true},
		{At: at(36), Route: "GET /api/v4/job", Daemon: true},
	}
	got := countDaemon(reqs, at(5), at(35))
	if len(got) != 2 || got["GET /api/v4/job"] != 1 || got["PUT /api/v4/jobs/:id"] != 1 {
		t.Errorf("counted %v", got)
	}
	r := &result{jobs: 2, variant: "sleep", perJob: map[string]float64{"PUT /api/v4/jobs/:id": 1, "POST /api/v4/jobs/request": 1.5},
		steady: got, steadyFrom: at(5), steadyTo: at(35)}
	if row := r.requests(); row != "| 2 | sleep | **2.50** (POST jobs/request 1.50; PUT jobs/:id 1.00) | 30.0 s | **0.07** (2: GET job 1; PUT jobs/:id 1) |" {
		t.Errorf("row %q", row)
	}
}

package main

import (
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// quantiles returns the p50 and p90 of ds (nearest rank), ok false when
// ds is empty.
func quantiles(ds []time.Duration) (p50, p90 time.Duration, ok bool) {
	if len(ds) == 0 {
		return 0, 0, false
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := func(q float64) time.Duration {
		i := int(q*float64(len(s))+0.999999) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return rank(0.5), rank(0.9), true
}

// pair formats p50 / p90 in seconds; "–" when there is nothing, with the
// count when some of want are missing.
func pair(ds []time.Duration, want int) string {
	p50, p90, ok := quantiles(ds)
	if !ok {
		return "–"
	}
	s := fmt.Sprintf("%s / %s", secs(p50), secs(p90))
	if len(ds) < want {
		s += fmt.Sprintf(" (%d of %d)", len(ds), want)
	}
	return s
}

func secs(d time.Duration) string {
	if d < 10*time.Second {
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

// printedRe matches a line the benchmark's scripts print, not the command
// echoed before it: `echo "PRINTED-A $(cat /proc/uptime)"` prints
// "PRINTED-A 1234.56 789.01" while its echo shows "$(cat".
var printedRe = regexp.MustCompile(`PRINTED-([A-Z]) ([0-9]+\.[0-9]+) `)

// printed is one such line found in a job log.
type printed struct {
	Mark string
	// Uptime is when the script printed it: the kernel's boot clock
	// (/proc/uptime, not namespaced: the same inside a container),
	// truncated to 10 ms.
	Uptime float64
}

// findPrinted returns the printed lines of log, in order.
func findPrinted(log []byte) []printed {
	var out []printed
	for _, m := range printedRe.FindAllSubmatch(log, -1) {
		u, err := strconv.ParseFloat(string(m[2]), 64)
		if err == nil {
			out = append(out, printed{Mark: string(m[1]), Uptime: u})
		}
	}
	return out
}

// bootClock maps wall-clock instants of this process to the kernel's boot
// clock (CLOCK_BOOTTIME, which /proc/uptime shows).
type bootClock struct {
	wall time.Time // with its monotonic reading
	boot float64   // seconds
}

func newBootClock() (bootClock, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return bootClock{}, fmt.Errorf("CLOCK_BOOTTIME: %w", err)
	}
	return bootClock{wall: time.Now(), boot: float64(ts.Sec) + float64(ts.Nsec)/1e9}, nil
}

// at is t on the boot clock.
func (c bootClock) at(t time.Time) float64 { return c.boot + t.Sub(c.wall).Seconds() }

// loadAvg is the 1-minute load average, "" when unknown.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// route names an API request by endpoint, ids replaced:
// "PATCH /api/v4/jobs/:id/trace".
func route(method, path string) string {
	parts := strings.Split(path, "/")
	for i, p := range parts {
		if _, err := strconv.ParseInt(p, 10, 64); err == nil && p != "" {
			parts[i] = ":id"
		}
	}
	return method + " " + strings.Join(parts, "/")
}

// shortRoute is route for a table cell: "PATCH jobs/:id/trace".
func shortRoute(r string) string { return strings.Replace(r, "/api/v4/", "", 1) }

// countDaemon counts the daemon's requests from from to to, by route.
func countDaemon(reqs []request, from, to time.Time) map[string]int {
	n := map[string]int{}
	for _, q := range reqs {
		if q.Daemon && !q.At.Before(from) && !q.At.After(to) {
			n[q.Route]++
		}
	}
	return n
}

// steadyWindow is when every job runs: from the last host's start to the
// first job's end; ok false when a job ended before the last host
// started, or a time is missing.
func steadyWindow(started, ended []time.Time) (from, to time.Time, ok bool) {
	for _, s := range started {
		if s.IsZero() {
			return from, to, false
		}
		if s.After(from) {
			from = s
		}
	}
	for _, e := range ended {
		if e.IsZero() {
			return from, to, false
		}
		if to.IsZero() || e.Before(to) {
			to = e
		}
	}
	return from, to, len(started) > 0 && to.After(from)
}

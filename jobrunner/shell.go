package jobrunner

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The job log's decorations, and the shell script a job's commands run in.

const (
	ansiBoldGreen = "\x1b[32;1m"
	ansiBoldRed   = "\x1b[31;1m"
	ansiYellow    = "\x1b[0;33m"
	ansiReset     = "\x1b[0;m"
)

func (r *runner) printf(format string, a ...any) { fmt.Fprintf(r.trace, format, a...) }

func (r *runner) section(name, header string) func() {
	start := time.Now().Unix()
	fmt.Fprintf(r.trace, "section_start:%d:%s\r\x1b[0K%s%s%s\n", start, name, ansiBoldGreen, header, ansiReset)
	return func() { fmt.Fprintf(r.trace, "section_end:%d:%s\r\x1b[0K", time.Now().Unix(), name) }
}

// shellCommand is the job container's command (after the image's
// ENTRYPOINT, kept unless the job sets one, as GitLab Runner does): it
// execs bash when the image has bash, else sh, trying the places GitLab
// Runner's docker executor tries, in its order. The shell reads the script
// on its standard input (shellScript), so an entrypoint that sets things
// up and then execs "$@" runs it in what it set up.
func shellCommand() []string {
	return []string{"sh", "-c", detectShell}
}

const detectShell = `for shell in /usr/local/bin/bash /usr/bin/bash /bin/bash /usr/local/bin/sh /usr/bin/sh /bin/sh /busybox/sh; do
	if [ -x "$shell" ]; then exec "$shell"; fi
done
echo "shell not found" >&2
exit 1`

// shellScript renders commands the way GitLab Runner runs them: each
// printed as "$ command" in green, run with eval, the first failure ending
// the script with its status. Like GitLab Runner, errexit is on, and
// pipefail too where the shell has it (bash, busybox, recent dash): a
// failing command piped into another fails the script; with CI_DEBUG_TRACE
// xtrace is on (in sh as in bash). The whole runs in one eval whose input
// is /dev/null: the shell reads this script on its standard input, and a
// command reading its own must not eat the script's rest.
func (r *runner) shellScript(cmds []string) string {
	var body strings.Builder
	fmt.Fprintf(&body, "mkdir -p %s && cd %s\n", shQuote(r.projectDir()), shQuote(r.projectDir()))
	for _, c := range cmds {
		shown := c
		if strings.Contains(shown, "\n") {
			shown = strings.SplitN(shown, "\n", 2)[0] + " # collapsed multi-line command"
		}
		fmt.Fprintf(&body, "printf '%%s\\n' %s\n", shQuote(ansiBoldGreen+"$ "+shown+ansiReset))
		fmt.Fprintf(&body, "eval %s\n", shQuote(c))
	}
	var b strings.Builder
	if r.debugTrace() {
		b.WriteString("set -o xtrace\n")
	}
	b.WriteString("if (set -o pipefail) 2>/dev/null; then set -o pipefail; fi\n")
	b.WriteString("set -o errexit\nset +o noclobber\n")
	fmt.Fprintf(&b, "eval %s < /dev/null\n", shQuote(body.String()))
	b.WriteString("exit 0\n")
	return b.String()
}

// debugTrace is CI_DEBUG_TRACE, read like GitLab Runner (a Go boolean;
// anything else is a warning, and false).
func (r *runner) debugTrace() bool {
	r.debugOnce.Do(func() {
		raw := r.expanded.Get("CI_DEBUG_TRACE")
		if raw == "" {
			return
		}
		v, err := strconv.ParseBool(raw)
		if err != nil {
			r.printf("%sWARNING: CI_DEBUG_TRACE: expected bool got %q, using default value: false%s\n", ansiYellow, raw, ansiReset)
			return
		}
		r.debug = v
	})
	return r.debug
}

func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

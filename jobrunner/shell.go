package jobrunner

import (
	"fmt"
	"strings"
	"time"
)

// The job log's decorations, and the shell script a job's commands run in.

const (
	ansiBoldGreen = "\x1b[32;1m"
	ansiBoldRed   = "\x1b[31;1m"
	ansiReset     = "\x1b[0;m"
)

func (r *runner) printf(format string, a ...any) { fmt.Fprintf(r.trace, format, a...) }

func (r *runner) section(name, header string) func() {
	start := time.Now().Unix()
	fmt.Fprintf(r.trace, "section_start:%d:%s\r\x1b[0K%s%s%s\n", start, name, ansiBoldGreen, header, ansiReset)
	return func() { fmt.Fprintf(r.trace, "section_end:%d:%s\r\x1b[0K", time.Now().Unix(), name) }
}

// shellCommand is the job container's command: it runs script in bash
// when the image has bash, else in sh, trying the places GitLab Runner's
// docker executor tries, in its order.
func shellCommand(script string) []string {
	return []string{"sh", "-c", detectShell, "sh", script}
}

const detectShell = `for shell in /usr/local/bin/bash /usr/bin/bash /bin/bash /usr/local/bin/sh /usr/bin/sh /bin/sh /busybox/sh; do
	if [ -x "$shell" ]; then exec "$shell" -c "$1"; fi
done
echo "no shell found in the image (bash or sh)" >&2
exit 1`

// shellScript renders commands the way GitLab Runner runs them: each
// printed as "$ command" in green, run with eval, the first failure ending
// the script with its status. Like GitLab Runner, errexit is on, and
// pipefail too where the shell has it (bash, busybox, recent dash): a
// failing command piped into another fails the script.
func (r *runner) shellScript(cmds []string) string {
	var b strings.Builder
	b.WriteString("if (set -o pipefail) 2>/dev/null; then set -o pipefail; fi\n")
	b.WriteString("set -o errexit\nset +o noclobber\n")
	fmt.Fprintf(&b, "mkdir -p %s && cd %s\n", shQuote(r.projectDir()), shQuote(r.projectDir()))
	for _, c := range cmds {
		shown := c
		if strings.Contains(shown, "\n") {
			shown = strings.SplitN(shown, "\n", 2)[0] + " # collapsed multi-line command"
		}
		fmt.Fprintf(&b, "printf '%%s\\n' %s\n", shQuote(ansiBoldGreen+"$ "+shown+ansiReset))
		fmt.Fprintf(&b, "eval %s\n", shQuote(c))
	}
	return b.String()
}

func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

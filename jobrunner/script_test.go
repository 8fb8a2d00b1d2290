package jobrunner

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/build"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
	"gitlab.com/paas-runner/paas-runner/executors/localdocker/localdockertest"
)

// buildTestImage builds tag FROM the busybox job image plus files (mode
// 0755) and the Dockerfile lines; it is removed when the test ends.
func buildTestImage(t *testing.T, tag string, files map[string]string, lines ...string) {
	t.Helper()
	var ctxTar bytes.Buffer
	tw := tar.NewWriter(&ctxTar)
	files["Dockerfile"] = "FROM " + jobImage + "\n" + strings.Join(lines, "\n") + "\n"
	for name, data := range files {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(data)), Typeflag: tar.TypeReg})
		tw.Write([]byte(data))
	}
	tw.Close()
	resp, err := cli.ImageBuild(context.Background(), &ctxTar, build.ImageBuildOptions{Tags: []string{tag}, Remove: true, ForceRemove: true})
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if bytes.Contains(out, []byte(`"error"`)) {
		t.Fatalf("building %s: %s", tag, out)
	}
	t.Cleanup(func() { localdockertest.RemoveImage(cli, tag) })
}

func withImage(img map[string]any) func(*coordinatortest.Server, *coordinatortest.Job) {
	return func(gl *coordinatortest.Server, q *coordinatortest.Job) {
		if img["name"] == nil {
			img["name"] = jobImage
		}
		img["pull_policy"] = []string{"if-not-present"}
		q.Payload["image"] = img
	}
}

// The image's ENTRYPOINT is kept, as GitLab Runner keeps it: the script
// runs in what it set up (here a variable it exports before exec "$@"),
// after_script too; image: entrypoint [""] overrides it.
func TestImageEntrypointKept(t *testing.T) {
	if cli == nil {
		t.Skip("no Docker engine")
	}
	tag := fmt.Sprintf("paas-runner-test-entrypoint:p%d", os.Getpid())
	buildTestImage(t, tag, map[string]string{
		"entry.sh": "#!/bin/busybox sh\nexport FROM_ENTRYPOINT=set-up-by-entrypoint\nexec \"$@\"\n",
	}, "COPY entry.sh /entry.sh", `ENTRYPOINT ["/entry.sh"]`)
	j := runJob(t, jobSpec{
		script: []string{`echo "script: $FROM_ENTRYPOINT"`, "cat README"},
		after:  []string{`echo "after: $FROM_ENTRYPOINT"`},
		setup:  withImage(map[string]any{"name": tag}),
	})
	tr := string(j.Trace)
	if j.Status != "success" || !strings.Contains(tr, "\nscript: set-up-by-entrypoint\n") || !strings.Contains(tr, "\nafter: set-up-by-entrypoint\n") ||
		!strings.Contains(tr, "hello from the repository") {
		t.Fatalf("%s\n%s", j.Status, tr)
	}
	j = runJob(t, jobSpec{
		script: []string{`echo "script: [$FROM_ENTRYPOINT]"`},
		setup:  withImage(map[string]any{"name": tag, "entrypoint": []string{""}}),
	})
	if tr := string(j.Trace); j.Status != "success" || !strings.Contains(tr, "\nscript: []\n") {
		t.Fatalf("entrypoint override: %s\n%s", j.Status, tr)
	}
}

// A command reading its standard input does not eat the script (which the
// shell reads on its own).
func TestScriptSurvivesStdinReaders(t *testing.T) {
	j := runJob(t, jobSpec{script: []string{"cat", "read line || echo no-input", "echo still-here"}})
	if tr := string(j.Trace); j.Status != "success" || !strings.Contains(tr, "\nno-input\n") || !strings.Contains(tr, "\nstill-here\n") {
		t.Fatalf("%s\n%s", j.Status, tr)
	}
}

// image: docker: user runs the job container as that user; platform is
// given to the engine when creating it (an image of another platform is
// refused).
func TestImageDockerUserAndPlatform(t *testing.T) {
	j := runJob(t, jobSpec{
		script: []string{"id -u", "id -g"},
		vars:   []map[string]any{{"key": "JOB_UID", "value": "1234", "public": true}},
		setup: withImage(map[string]any{"executor_opts": map[string]any{"docker": map[string]any{
			"user": "${JOB_UID}:4321", "platform": "linux/" + runtime.GOARCH}}}),
	})
	if tr := string(j.Trace); j.Status != "success" || !strings.Contains(tr, "\n1234\n") || !strings.Contains(tr, "\n4321\n") {
		t.Fatalf("%s\n%s", j.Status, tr)
	}
	other := "s390x"
	if runtime.GOARCH == "s390x" {
		other = "amd64"
	}
	j = runJob(t, jobSpec{
		script: []string{"echo ran"},
		setup:  withImage(map[string]any{"executor_opts": map[string]any{"docker": map[string]any{"platform": "linux/" + other}}}),
	})
	// the local image is not of that platform: not present, so pulled
	// (here, with no registry, in vain); an engine before API 1.49 cannot
	// tell, and refuses to create the container for that platform
	if tr := string(j.Trace); j.Status != "failed" || strings.Contains(tr, "\nran\n") ||
		!strings.Contains(tr, "Pulling docker image "+jobImage) && !strings.Contains(tr, "platform") {
		t.Fatalf("another platform: %s\n%s", j.Status, tr)
	}
	j = runJob(t, jobSpec{
		script: []string{"echo ran"},
		setup:  withImage(map[string]any{"executor_opts": map[string]any{"docker": map[string]any{"platform": "linux//x"}}}),
	})
	if j.Status != "failed" || !strings.Contains(string(j.Trace), `image: docker: platform "linux//x"`) {
		t.Fatalf("bad platform: %s\n%s", j.Status, j.Trace)
	}
}

// CI_DEBUG_TRACE=true traces the commands (xtrace) as GitLab Runner does,
// in sh here; a value that is not a boolean is GitLab Runner's warning.
func TestDebugTrace(t *testing.T) {
	j := runJob(t, jobSpec{
		script: []string{`X=traced-value`, `echo "x is $X"`},
		vars:   []map[string]any{{"key": "CI_DEBUG_TRACE", "value": "true", "public": true}},
	})
	tr := string(j.Trace)
	// The trace (stderr) and the script's output (stdout) are two pipes:
	// a line of one may land inside a line of the other (the shell writes
	// the "+ " prefix apart). Take the known stdout lines out first.
	traced := tr
	for _, out := range []string{"\x1b[32;1m$ X=traced-value\x1b[0;m\n", "\x1b[32;1m$ echo \"x is $X\"\x1b[0;m\n", "x is traced-value\n"} {
		traced = strings.ReplaceAll(traced, out, "")
	}
	if j.Status != "success" || !strings.Contains(traced, "+ X=traced-value\n") || !strings.Contains(traced, "+ echo 'x is traced-value'\n") || !strings.Contains(tr, "x is traced-value\n") {
		t.Fatalf("%s\n%s", j.Status, tr)
	}
	j = runJob(t, jobSpec{
		script: []string{`X=traced-value`},
		vars:   []map[string]any{{"key": "CI_DEBUG_TRACE", "value": "yes please", "public": true}},
	})
	tr = string(j.Trace)
	if j.Status != "success" || strings.Contains(tr, "+ X=") ||
		!strings.Contains(tr, "WARNING: CI_DEBUG_TRACE: expected bool got \"yes please\", using default value: false") {
		t.Fatalf("%s\n%s", j.Status, tr)
	}
}

// hooks: pre_get_sources_script runs before the sources are fetched, with
// the job's variables; its failure fails the job before the script.
func TestPreGetSourcesScript(t *testing.T) {
	hook := func(script ...string) func(*coordinatortest.Server, *coordinatortest.Job) {
		return func(gl *coordinatortest.Server, q *coordinatortest.Job) {
			q.Payload["hooks"] = []map[string]any{{"name": "pre_get_sources_script", "script": script}}
		}
	}
	j := runJob(t, jobSpec{
		script: []string{"cat README"},
		vars:   []map[string]any{{"key": "WHO", "value": "the hook", "public": true}},
		setup:  hook(`echo "run by $WHO"`, "test ! -e README && echo no-sources-yet"),
	})
	tr := string(j.Trace)
	hookAt, srcAt := strings.Index(tr, "\nno-sources-yet\n"), strings.Index(tr, "hello from the repository")
	if j.Status != "success" || !strings.Contains(tr, "\nrun by the hook\n") || hookAt < 0 || srcAt < hookAt {
		t.Fatalf("%s\n%s", j.Status, tr)
	}
	j = runJob(t, jobSpec{script: []string{"echo never-run"}, setup: hook("exit 3")})
	if tr := string(j.Trace); j.Status != "failed" || j.FailureReason != "script_failure" || strings.Contains(tr, "\nnever-run\n") {
		t.Fatalf("%s %s\n%s", j.Status, j.FailureReason, tr)
	}
	// not with GIT_STRATEGY=none, like GitLab Runner
	j = runJob(t, jobSpec{script: []string{"echo ran"}, setup: hook("exit 3"),
		vars: []map[string]any{{"key": "GIT_STRATEGY", "value": "none", "public": true}}})
	if j.Status != "success" {
		t.Fatalf("%s\n%s", j.Status, j.Trace)
	}
}

// Tokens with the payload's token_mask_prefixes (and glpat-) are masked
// in the log like GitLab Runner: the prefix stays, the rest is [MASKED].
func TestTokenPrefixesMaskedInLog(t *testing.T) {
	j := runJob(t, jobSpec{
		script: []string{"echo pat glpat-Xy12_ab.cd and gldt-Q9 end", "printf 'split gl'; printf 'dt-SECRETPART done\\n'"},
		setup: func(gl *coordinatortest.Server, q *coordinatortest.Job) {
			q.Payload["features"].(map[string]any)["token_mask_prefixes"] = []string{"gldt-"}
		},
	})
	tr := string(j.Trace)
	if j.Status != "success" || !strings.Contains(tr, "\npat glpat-[MASKED] and gldt-[MASKED] end\n") ||
		!strings.Contains(tr, "\nsplit gldt-[MASKED] done\n") || strings.Contains(tr, "Xy12") || strings.Contains(tr, "gldt-SECRETPART") {
		t.Fatalf("%s\n%s", j.Status, tr)
	}
}

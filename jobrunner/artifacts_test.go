package jobrunner

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

// A gzip report is one gzip member per file, in path order, each named
// like gitlab-runner names them; GitLab reads each member as one
// document, so a multi-file JUnit report must not be one member.
func TestGzipReportOneMemberPerFile(t *testing.T) {
	j := runJob(t, jobSpec{
		script: []string{"mkdir -p reports/sub", "echo '<testsuites name=\"b\"/>' > reports/b.xml",
			"echo '<testsuites name=\"a\"/>' > reports/a.xml", "echo '<testsuites name=\"c\"/>' > reports/sub/c.xml",
			"echo no > reports/skip.txt"},
		setup: func(gl *coordinatortest.Server, q *coordinatortest.Job) {
			q.Payload["artifacts"] = []map[string]any{{"name": "junit.xml", "paths": []string{"reports/**/*.xml", "reports/*.xml"},
				"when": "always", "expire_in": "1 week", "artifact_type": "junit", "artifact_format": "gzip"}}
		},
	})
	a, ok := j.Artifacts["junit"]
	if j.Status != "success" || !ok {
		t.Fatalf("%s %v\n%s", j.Status, ok, j.Trace)
	}
	if a.Filename != "junit.xml.gz" || a.Format != "gzip" || a.ExpireIn != "1 week" {
		t.Errorf("upload %s %s %s", a.Filename, a.Format, a.ExpireIn)
	}
	if a.MembersErr != nil || len(a.Members) != 3 || len(a.ReportErrors) != 0 {
		t.Fatalf("%d members (%v), report errors %q", len(a.Members), a.MembersErr, a.ReportErrors)
	}
	for i, want := range []struct{ name, path, suite string }{{"a.xml", "reports/a.xml", "a"}, {"b.xml", "reports/b.xml", "b"}, {"c.xml", "reports/sub/c.xml", "c"}} {
		m := a.Members[i]
		if m.Name != want.name || m.Comment != want.path || string(m.Data) != "<testsuites name=\""+want.suite+"\"/>\n" {
			t.Errorf("member %d: %s %s %q", i, m.Name, m.Comment, m.Data)
		}
	}
}

// A raw artifact is one file; several are an error that names them, as
// with gitlab-runner, and nothing is uploaded. One file goes as it is,
// under its artifacts:name.
func TestRawArtifact(t *testing.T) {
	j := runJob(t, jobSpec{
		script: []string{"echo '{}' > gl-sast-report.json", "echo '{}' > gl-other-report.json", "echo '{\"x\":1}' > one.json"},
		setup: func(gl *coordinatortest.Server, q *coordinatortest.Job) {
			q.Payload["artifacts"] = []map[string]any{
				{"name": "gl-dast-report.json", "paths": []string{"one.json"}, "when": "always", "artifact_type": "dast", "artifact_format": "raw"},
				{"name": "gl-sast-report.json", "paths": []string{"gl-*.json"}, "when": "always", "artifact_type": "sast", "artifact_format": "raw"},
			}
		},
	})
	if _, ok := j.Artifacts["sast"]; ok {
		t.Error("a raw artifact of two files was uploaded")
	}
	trace := string(j.Trace)
	if j.Status != "failed" || !strings.Contains(trace, "only one file can be sent as raw (artifact_format raw), but 2 files match: gl-other-report.json, gl-sast-report.json") {
		t.Errorf("%s\n%s", j.Status, trace)
	}
	if d := j.Artifacts["dast"]; d.Filename != "gl-dast-report.json" || string(d.Data) != "{\"x\":1}\n" {
		t.Errorf("raw upload %q %q", d.Filename, d.Data)
	}
}

// artifacts:name is expanded with the job's variables, its base name
// taken, like gitlab-runner; an archive is retried after a 5xx and
// followed through a 307, its body sent again.
func TestArtifactNameExpandedAndUploadRetried(t *testing.T) {
	j := runJob(t, jobSpec{
		script: []string{"echo x > out.txt"},
		vars:   []map[string]any{{"key": "KIND", "value": "release", "public": true}},
		setup: func(gl *coordinatortest.Server, q *coordinatortest.Job) {
			q.Payload["artifacts"] = []map[string]any{{"name": "dist/bundle-${KIND}", "paths": []string{"out.txt"},
				"when": "on_success", "artifact_type": "archive", "artifact_format": "zip"}}
			gl.FailArtifactUploads(502, 1)
			gl.RedirectArtifactUploads(gl.URL+"/elsewhere?signature=1", 1)
		},
	})
	a := j.Artifacts["archive"]
	if j.Status != "success" {
		t.Fatalf("%s\n%s", j.Status, j.Trace)
	}
	if want := "bundle-release.zip"; a.Filename != want {
		t.Errorf("uploaded as %q, want %q", a.Filename, want)
	}
	zr, err := zip.NewReader(bytes.NewReader(a.Data), int64(len(a.Data)))
	if err != nil || len(zr.File) != 1 || zr.File[0].Name != "out.txt" {
		t.Fatalf("%v %+v", err, zr)
	}
	if !strings.Contains(string(j.Trace), "WARNING: Retrying in") {
		t.Errorf("no retry in the log:\n%s", j.Trace)
	}
}

// Dependencies are downloaded directly from the object storage (no job
// token there) unless FF_USE_DIRECT_DOWNLOAD is false; a failed download
// is tried again.
func TestDependencyDirectDownload(t *testing.T) {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.Create("dep.txt")
	w.Write([]byte("from the dependency\n"))
	zw.Close()
	for _, direct := range []bool{true, false} {
		var storage *coordinatortest.ObjectStorage
		spec := jobSpec{
			script: []string{"cat dep.txt"},
			setup: func(gl *coordinatortest.Server, q *coordinatortest.Job) {
				storage = gl.UseObjectStorage()
				build := gl.AddRunning("")
				gl.SetArtifacts(build.ID, buf.Bytes())
				q.Payload["dependencies"] = []map[string]any{{"id": build.ID, "name": "build", "token": q.Token,
					"artifacts_file": map[string]any{"filename": "artifacts.zip", "size": buf.Len()}}}
				if !direct {
					gl.Inject(`^GET /api/v4/jobs/\d+/artifacts$`, 502, 1, nil)
				}
			},
		}
		if !direct {
			spec.vars = []map[string]any{{"key": "FF_USE_DIRECT_DOWNLOAD", "value": "false", "public": true}}
		}
		j := runJob(t, spec)
		if j.Status != "success" || !strings.Contains(string(j.Trace), "\nfrom the dependency\n") {
			t.Fatalf("direct %v: %s\n%s", direct, j.Status, j.Trace)
		}
		reqs := storage.Requests()
		if direct && (len(reqs) != 1 || reqs[0].Get("Job-Token") != "") {
			t.Errorf("direct download: storage requests %v", reqs)
		}
		if !direct && len(reqs) != 0 {
			t.Errorf("FF_USE_DIRECT_DOWNLOAD=false went to the storage: %v", reqs)
		}
	}
}

func TestArtifactFilename(t *testing.T) {
	for _, tc := range []struct{ name, format, want string }{
		{"artifacts", "zip", "artifacts.zip"},
		{"bundle.zip", "zip", "bundle.zip.zip"}, // as gitlab-runner does
		{"junit.xml", "gzip", "junit.xml.gz"},
		{"gl-sast-report.json", "raw", "gl-sast-report.json"},
		{"a/b/c", "zip", "c.zip"},
		{"", "zip", "default.zip"},
		{"dir/", "gzip", "dir.gz"},
	} {
		if got := artifactFilename(tc.name, tc.format); got != tc.want {
			t.Errorf("%q %s: %q, want %q", tc.name, tc.format, got, tc.want)
		}
	}
}

// The gzip packer: members in path order whatever the order files come
// in, header names kept ASCII like gitlab-runner's, and only regular
// files (a symbolic link is an error, as there).
func TestGzipPacker(t *testing.T) {
	tmp, err := os.CreateTemp(t.TempDir(), "pack")
	if err != nil {
		t.Fatal(err)
	}
	defer tmp.Close()
	p := newGzipPacker(tmp)
	for _, f := range []struct{ rel, data string }{{"z/last.xml", "Z"}, {"r\u00e9sum\u00e9 100%.xml", "R"}, {"a.xml", "A"}} {
		if err := p.add(f.rel, &tar.Header{Typeflag: tar.TypeReg, Size: int64(len(f.data)), ModTime: time.Unix(1700000000, 0)}, strings.NewReader(f.data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.add("link.xml", &tar.Header{Typeflag: tar.TypeSymlink, Linkname: "a.xml"}, strings.NewReader("")); err == nil || !strings.Contains(err.Error(), `the "link.xml" is not a regular file`) {
		t.Errorf("symlink: %v", err)
	}
	body, err := p.finish()
	if err != nil {
		t.Fatal(err)
	}
	for attempt := 0; attempt < 2; attempt++ { // each attempt gets the whole body
		r, _ := body()
		data, _ := io.ReadAll(r)
		ms, err := coordinatortest.GzipMembers(data)
		if err != nil || len(ms) != 3 {
			t.Fatalf("%v %d members", err, len(ms))
		}
		var got []string
		for _, m := range ms {
			got = append(got, m.Name+"|"+m.Comment+"|"+string(m.Data))
		}
		want := "a.xml|a.xml|A;e:r%C3%A9sum%C3%A9%20100%25.xml|e:r%C3%A9sum%C3%A9%20100%25.xml|R;last.xml|z/last.xml|Z"
		if strings.Join(got, ";") != want {
			t.Errorf("attempt %d: %s", attempt, strings.Join(got, ";"))
		}
	}
}

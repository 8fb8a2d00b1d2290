package coordinatortest_test

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

	"gitlab.com/paas-runner/paas-runner/coordinator/coordinatortest"
)

// The observer sees every request as it arrives (with its connection) and
// every accepted trace chunk with its offset; a refused chunk (416) is not
// one.
func TestObserverSeesRequestsAndTraceChunks(t *testing.T) {
	gl := coordinatortest.New(t)
	gl.AddRunner("glrt-observe-0123456789")
	q := gl.AddRunning("glrt-observe-0123456789")
	var mu sync.Mutex
	var reqs []string
	var chunks []coordinatortest.TraceChunk
	gl.Observe(coordinatortest.Observer{
		Request: func(r *http.Request) {
			mu.Lock()
			reqs = append(reqs, r.Method+" "+r.URL.Path+" "+r.Header.Get("User-Agent"))
			mu.Unlock()
			if r.RemoteAddr == "" {
				t.Errorf("no remote address")
			}
		},
		Trace: func(c coordinatortest.TraceChunk) { chunks = append(chunks, c) },
	})
	patch := func(rng, body string) int {
		req, _ := http.NewRequest(http.MethodPatch, gl.URL+"/api/v4/jobs/"+itoa(q.ID)+"/trace", strings.NewReader(body))
		req.Header.Set("Job-Token", q.Token)
		req.Header.Set("Content-Range", rng)
		req.Header.Set("User-Agent", "observer-test")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := patch("0-5", "hello "); c != http.StatusAccepted {
		t.Fatalf("first chunk: %d", c)
	}
	if c := patch("0-4", "again"); c != http.StatusRequestedRangeNotSatisfiable {
		t.Fatalf("stale chunk: %d", c)
	}
	if c := patch("6-11", "world\n"); c != http.StatusAccepted {
		t.Fatalf("second chunk: %d", c)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reqs) != 3 || reqs[0] != "PATCH /api/v4/jobs/"+itoa(q.ID)+"/trace observer-test" {
		t.Errorf("requests seen: %q", reqs)
	}
	if len(chunks) != 2 || string(chunks[0].Data) != "hello " || chunks[0].Offset != 0 ||
		string(chunks[1].Data) != "world\n" || chunks[1].Offset != 6 || chunks[1].JobID != q.ID || chunks[1].At.Before(chunks[0].At) {
		t.Errorf("chunks seen: %+v", chunks)
	}
	// a zero observer stops observing
	gl.Observe(coordinatortest.Observer{})
	patch("12-13", "!\n")
	if len(reqs) != 3 || len(chunks) != 2 {
		t.Errorf("observed after removal: %d requests, %d chunks", len(reqs), len(chunks))
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

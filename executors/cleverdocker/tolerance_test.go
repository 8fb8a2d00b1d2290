package cleverdocker

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestTolerantAnswers: answers are read tolerantly, as another server (or
// a later API) may shape them: extra fields, nulls, numbers as strings or
// floats, dates as strings. One odd field does not fail a whole listing.
func TestTolerantAnswers(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/v2/products/instances":
			io.WriteString(w, `[{"type":"docker","version":20240101,"name":"Docker","enabled":null,"variant":null,"extra":{"x":[1,2]}},
				{"type":null,"version":null,"name":null}]`)
		case "/v2/products/flavors":
			io.WriteString(w, `[{"name":"heptapod-runner-M","mem":8192.0,"cpus":"4","available":true,"price":null,"memory":null},
				{"name":"heptapod-runner-S","mem":null,"cpus":2,"available":true},
				{"name":"heptapod-runner-L","mem":16384,"cpus":6,"available":null}]`)
		case "/v2/organisations/o/applications":
			io.WriteString(w, `[{"id":"app_1","name":"hpd-job-r-1","description":null,"creationDate":"2026-01-02T03:04:05Z","deployment":null,"instance":null,"tags":null},
				{"id":"app_2","name":"hpd-job-r-2","description":42,"creationDate":1767322800000,"deployment":{"repoState":"CREATED","httpUrl":null,"url":null},"deployUrl":"https://push/app_2.git","vhosts":null}]`)
		case "/v2/organisations/o/applications/app_3":
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"id":"9017","message":"The specified instance does not exist","type":"error","extra":null}`)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	t.Cleanup(srv.Close)
	e, err := New(Options{APIURL: srv.URL + "/v2", OrgaID: "o", Token: "t", InnerImage: "i", RunnerID: "r", RunnerURL: "https://g", RetryFor: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	c := context.Background()
	p, err := e.products(c, false)
	if err != nil {
		t.Fatal(err)
	}
	if p.instanceType != "docker" || p.instanceVersion != "20240101" || len(p.flavors) != 1 || p.flavors["M"].Mem != 8192 || p.flavors["M"].CPUs != 4 {
		t.Fatalf("products: %+v", p)
	}
	ten, _ := e.tenant(c, "")
	apps, err := e.listApps(c, &ten, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(apps) != 2 || apps[0].CreationDate != flexMillis(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixMilli()) ||
		apps[1].Description != "42" || apps[1].pushURL() != "https://push/app_2.git" || apps[0].pushURL() != "" {
		t.Fatalf("apps: %+v", apps)
	}
	err = e.api.do(c, http.MethodGet, "/organisations/o/applications/app_3", "t", nil, nil)
	if !isCleverID(err, 9017) || !strings.Contains(err.Error(), "GET /organisations/o/applications/app_3: HTTP 400 (id 9017): The specified instance does not exist") {
		t.Fatalf("error answer: %v", err)
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"": 0, "3": 3 * time.Second, " 7 ": 7 * time.Second, "-1": 0, "soon": 0,
		"Wed, 02 Dec 2026 01:00:05 GMT": 5 * time.Second, "Wed, 02 Dec 2026 00:59:00 GMT": 0,
	} {
		if got := retryAfter(v, now); got != want {
			t.Fatalf("Retry-After %q: %v, want %v", v, got, want)
		}
	}
}

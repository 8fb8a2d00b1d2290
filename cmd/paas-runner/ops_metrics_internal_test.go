package main

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"gitlab.com/paas-runner/paas-runner/config"
)

// GitLab requests are counted under gitlab-runner's names and labels: an
// answer by status and method, its latency by status_class; a request
// with no answer in paas_runner_gitlab_request_errors_total.
func TestGitLabRequestMetrics(t *testing.T) {
	o := newOps(&config.Config{}, "r_test", zap.NewNop())
	answers := []error{nil, errors.New("connection refused")}
	rt := o.wrapTransport("t1234567")(roundTripFunc(func(r *http.Request) (*http.Response, error) {
		err := answers[0]
		answers = answers[1:]
		if err != nil {
			return nil, err
		}
		return &http.Response{StatusCode: 201, Body: http.NoBody, Request: r}, nil
	}))
	for range 2 {
		req, _ := http.NewRequest(http.MethodPost, "http://gitlab.example/api/v4/jobs/request", nil)
		if resp, err := rt.RoundTrip(req); err == nil {
			resp.Body.Close()
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(o.apiStatuses, o.apiDuration, o.apiErrors)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			v := m.GetCounter().GetValue()
			if h := m.GetHistogram(); h != nil {
				v = float64(h.GetSampleCount())
			}
			got[f.GetName()] += fmt.Sprintf("{%s} %v;", strings.Join(labels, ","), v)
		}
	}
	for name, want := range map[string]string{
		"gitlab_runner_api_request_statuses_total":   "{endpoint=request_job,method=post,runner=t1234567,status=201,system_id=r_test} 1;",
		"gitlab_runner_api_request_duration_seconds": "{endpoint=request_job,method=post,runner=t1234567,status_class=2xx,system_id=r_test} 1;",
		"paas_runner_gitlab_request_errors_total":    "{endpoint=request_job,method=post,runner=t1234567} 1;",
	} {
		if got[name] != want {
			t.Errorf("%s: %q, want %q", name, got[name], want)
		}
	}
	for code, want := range map[int]string{200: "2xx", 204: "2xx", 404: "4xx", 503: "5xx", 0: "unknown"} {
		if got := statusClass(code); got != want {
			t.Errorf("statusClass(%d) = %s, want %s", code, got, want)
		}
	}
}

// PaaS API requests (to the API's host) are counted by endpoint, status
// and method; requests elsewhere (GitLab's group attributes) are not.
func TestPaaSRequestMetrics(t *testing.T) {
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodDelete {
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	defer api.Close()
	other := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer other.Close()
	o := newOps(&config.Config{}, "r_test", zap.NewNop())
	c := o.paasClient("clever-docker", api.URL+"/v2")
	for _, r := range []struct{ method, url string }{
		{http.MethodPost, api.URL + "/v2/organisations/orga_1/applications"},
		{http.MethodDelete, api.URL + "/v2/organisations/orga_1/applications/app_2"},
		{http.MethodGet, other.URL + "/api/v4/groups/acme"},
	} {
		req, _ := http.NewRequest(r.method, r.url, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+strings.TrimPrefix(api.URL, "http://")+"/v2/products/flavors", nil)
	api.Close() // no answer
	if _, err := c.Do(req); err == nil {
		t.Fatal("a closed server answered")
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(o.paasStatuses, o.paasErrors)
	fams, _ := reg.Gather()
	var got []string
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			got = append(got, fmt.Sprintf("%s{%s} %v", f.GetName(), strings.Join(labels, ","), m.GetCounter().GetValue()))
		}
	}
	want := []string{
		"paas_runner_paas_api_request_errors_total{endpoint=products_flavors,executor=clever-docker,method=get} 1",
		"paas_runner_paas_api_request_statuses_total{endpoint=create_application,executor=clever-docker,method=post,status=200} 1",
		"paas_runner_paas_api_request_statuses_total{endpoint=delete_application,executor=clever-docker,method=delete,status=404} 1",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for path, want := range map[string]string{"/products/instances": "products_instances", "/organisations/o/applications/a/env": "set_application_env",
		"/self": "other"} {
		if got := paasEndpoint(http.MethodPut, path); got != want {
			t.Errorf("%s: %s, want %s", path, got, want)
		}
	}
}

// local-docker's PaaS API is the Docker engine's: its calls are named by
// object kind and operation, never by an object's name or id.
func TestEngineEndpoint(t *testing.T) {
	for _, c := range []struct{ method, path, want string }{
		{"GET", "/_ping", "ping"},
		{"HEAD", "/v1.41/_ping", "ping"},
		{"GET", "/v1.41/info", "info"},
		{"GET", "/v1.41/events", "events"},
		{"POST", "/v1.41/containers/create", "container_create"},
		{"GET", "/v1.41/containers/json", "container_list"},
		{"GET", "/v1.41/containers/paas-job-t1-42/json", "container_inspect"},
		{"POST", "/v1.41/containers/abc/start", "container_start"},
		{"POST", "/v1.41/containers/abc/wait", "container_wait"},
		{"POST", "/v1.41/containers/abc/attach", "container_attach"},
		{"PUT", "/v1.41/containers/abc/archive", "container_archive_put"},
		{"HEAD", "/v1.41/containers/abc/archive", "container_archive_head"},
		{"POST", "/v1.41/containers/abc/exec", "container_exec"},
		{"DELETE", "/v1.41/containers/abc", "container_remove"},
		{"POST", "/v1.41/containers/prune", "container_prune"},
		{"GET", "/v1.41/images/paas-runner-host:1.2/json", "image_inspect"},
		{"GET", "/v1.41/images/registry.example.com/group/img:tag/json", "image_inspect"},
		{"DELETE", "/v1.41/images/registry.example.com/group/img:tag", "image_remove"},
		{"POST", "/v1.41/images/create", "image_create"},
		{"POST", "/v1.41/images/load", "image_load"},
		{"GET", "/v1.41/images/json", "image_list"},
		{"POST", "/v1.41/volumes/create", "volume_create"},
		{"GET", "/v1.41/volumes", "volume_list"},
		{"GET", "/v1.41/volumes/paas-job-t1-42-builds", "volume_inspect"},
		{"DELETE", "/v1.41/volumes/paas-job-t1-42-builds", "volume_remove"},
		{"POST", "/v1.41/networks/create", "network_create"},
		{"POST", "/v1.41/networks/n1/connect", "network_connect"},
		{"DELETE", "/v1.41/networks/n1", "network_remove"},
		{"POST", "/v1.41/exec/e1/start", "exec_start"},
		{"GET", "/v1.41/exec/e1/json", "exec_inspect"},
		{"POST", "/v1.41/build", "build"},
		{"GET", "/v1.41/swarm", "other"},
		{"GET", "/", "other"},
		{"POST", "/v1.41/containers/abc/frobnicate", "container_other"},
	} {
		if got := engineEndpoint(c.method, c.path); got != c.want {
			t.Errorf("%s %s: %s, want %s", c.method, c.path, got, c.want)
		}
	}
}

// gitlab_runner_errors_total counts the warning and error lines of the
// logger its hook is on, by gitlab-runner's level names.
func TestLogErrorsCounted(t *testing.T) {
	l := &logErrors{}
	core, _ := observer.New(zap.InfoLevel)
	log := zap.New(core).WithOptions(zap.Hooks(l.hook))
	log.Info("fine")
	log.Warn("careful")
	log.Warn("careful again")
	log.Error("broken")
	reg := prometheus.NewRegistry()
	reg.MustRegister(l)
	fams, err := reg.Gather()
	if err != nil || len(fams) != 1 {
		t.Fatal(err, fams)
	}
	got := map[string]float64{}
	for _, m := range fams[0].GetMetric() {
		got[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
	}
	if fams[0].GetName() != "gitlab_runner_errors_total" || got["warning"] != 2 || got["error"] != 1 || got["fatal"] != 0 || got["panic"] != 0 || len(got) != 4 {
		t.Fatalf("%s %v", fams[0].GetName(), got)
	}
}

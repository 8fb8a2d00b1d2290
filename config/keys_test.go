package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// Every key the loader accepts, set to a value other than its default:
// either the value reaches the configuration the daemon is built from
// (check), or the key is refused (want names it), or it is accepted with a
// warning naming it (warn). The process-level tests in cmd/paas-runner
// check the run-time effect of the keys whose effect is only visible there.
func TestEveryKeyHonouredOrNamed(t *testing.T) {
	const local = `state_file = "/tmp/s.json"
[[runners]]
url = "https://gitlab.example"
token = "glrt-abcdefgh"
executor = "local-docker"
`
	const clever = `state_file = "/tmp/s.json"
[[runners]]
url = "https://gitlab.example"
token = "glrt-abcdefgh"
executor = "clever-docker"
inner_image = "img"
cc_orga_id = "orga_1"
cc_token = "cc-secret"
`
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte("s3cret\n"), 0o600)
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, testCA(t), 0o600)
	r0 := func(c *Config) *Runner { return &c.Runners[0] }
	inner := func(c *Config, k string) any { return r0(c).Inner[k] }
	cases := []struct {
		name  string
		head  string // the file before the key ("" = local)
		key   string // TOML appended (runner-level keys after head's runner)
		pre   string // TOML prepended (top-level keys)
		check func(c *Config) bool
		warn  string // a warning naming this key
	}{
		// global keys
		{name: "concurrent", pre: "concurrent = 7", check: func(c *Config) bool { return c.Concurrent == 7 }},
		{name: "check_interval", pre: "check_interval = 0.25", check: func(c *Config) bool { return c.CheckInterval == 0.25 }},
		{name: "job_progress_poll_interval", pre: "job_progress_poll_interval = 45", check: func(c *Config) bool { return c.JobProgressPollInterval == 45 }},
		{name: "shutdown_timeout", pre: "shutdown_timeout = 5", check: func(c *Config) bool { return c.ShutdownTimeout == 5 }},
		{name: "log_level", pre: `log_level = "debug"`, check: func(c *Config) bool { return c.LogLevel == "debug" }},
		{name: "log_format", pre: `log_format = "json"`, check: func(c *Config) bool { return c.LogFormat == "json" }},
		{name: "listen_address", pre: `listen_address = "127.0.0.1:9999"`, check: func(c *Config) bool { return c.ListenAddress == "127.0.0.1:9999" }},
		{name: "paas_max_concurrent_provisioning", pre: "paas_max_concurrent_provisioning = 3", check: func(c *Config) bool { return c.PaasMaxConcurrentProvisioning == 3 }},
		{name: "paas_finished_jobs_keep_resources", pre: "paas_finished_jobs_keep_resources = true", check: func(c *Config) bool { return c.PaasFinishedJobsKeepResources }},
		{name: "paas_decommission_launch_failures", pre: "paas_decommission_launch_failures = false", check: func(c *Config) bool { return !c.PaasDecommissionLaunchFailures }},
		{name: "paas_min_seconds_between_launches", pre: "paas_min_seconds_between_launches = 1.5", check: func(c *Config) bool { return c.PaasMinSecondsBetweenLaunches == 1.5 }},
		{name: "paas_log_statistics", pre: "paas_log_statistics = false", check: func(c *Config) bool { return !c.PaasLogStatistics }},
		{name: "paas_tracking_requests_per_second", pre: "paas_tracking_requests_per_second = 2.5", check: func(c *Config) bool { return c.PaasTrackingRequestsPerSecond == 2.5 }},
		{name: "quota_computation", pre: "", key: "name = \"r\"\n[quota_computation]\nreference_runner = \"r\"\nreference_flavor = \"XS\"\nreference_jobs_count = 4",
			check: func(c *Config) bool {
				q := c.QuotaComputation
				return q != nil && q.ReferenceRunner == "r" && q.ReferenceFlavor == "XS" && q.ReferenceJobsCount == 4 && q.RunnerIndex == 0
			}},
		{name: "session_server", pre: `session_server = { listen_address = "0.0.0.0:8093" }`, warn: "session_server: ignored"},
		{name: "connection_max_age", pre: `connection_max_age = "15m"`, warn: "connection_max_age: ignored"},
		{name: "sentry_dsn", pre: `sentry_dsn = "https://x@sentry.example/1"`, warn: "sentry_dsn: ignored"},
		// [[runners]]
		{name: "name", key: `name = "paas-9"`, check: func(c *Config) bool { return r0(c).Name == "paas-9" && r0(c).DisplayName() == "paas-9" }},
		{name: "limit", key: "limit = 4", check: func(c *Config) bool { return r0(c).Limit == 4 }},
		{name: "tls-ca-file", key: "tls-ca-file = " + quote(ca), check: func(c *Config) bool { return r0(c).TLSCAFile == ca }},
		{name: "guard_api_token", key: `guard_api_token = "gt"`, check: func(c *Config) bool { return r0(c).GuardAPIToken == "gt" }},
		{name: "guard_api_token_file", key: "guard_api_token_file = " + quote(secret), check: func(c *Config) bool { return r0(c).GuardAPIToken == "s3cret" }},
		{name: "guard_api_token_env", key: `guard_api_token_env = "PAAS_KEYS_TEST_TOKEN"`, check: func(c *Config) bool { return r0(c).GuardAPIToken == "from-env" }},
		{name: "unhealthy_requests_limit", key: "unhealthy_requests_limit = 9", check: func(c *Config) bool { return r0(c).UnhealthyRequestsLimit == 9 }},
		{name: "unhealthy_interval", key: "unhealthy_interval = 60", check: func(c *Config) bool { return r0(c).UnhealthyInterval == 60 }},
		{name: "inner_image", key: `inner_image = "own:1"`, check: func(c *Config) bool { return r0(c).InnerImage == "own:1" }},
		{name: "heptapod_runner_main_image", key: `heptapod_runner_main_image = "hpd:1"`, check: func(c *Config) bool { return r0(c).InnerImage == "hpd:1" }},
		{name: "host", key: `host = "tcp://127.0.0.1:2375"`, check: func(c *Config) bool { return r0(c).LocalDocker.Host == "tcp://127.0.0.1:2375" }},
		{name: "local_docker.host", key: "[runners.local_docker]\nhost = \"unix:///x.sock\"", check: func(c *Config) bool { return r0(c).LocalDocker.Host == "unix:///x.sock" }},
		{name: "local_docker.network_mode", key: "[runners.local_docker]\nnetwork_mode = \"host\"", check: func(c *Config) bool { return r0(c).LocalDocker.NetworkMode == "host" }},
		{name: "local_docker.inner_image", key: "[runners.local_docker]\ninner_image = \"own:2\"", check: func(c *Config) bool { return r0(c).InnerImage == "own:2" }},
		// registration metadata: accepted silently, not settings
		{name: "id", key: "id = 12\ntoken_obtained_at = 2026-01-01T00:00:00Z\ntoken_expires_at = 0001-01-01T00:00:00Z", check: func(c *Config) bool { return len(c.Warnings) == 0 }},
		{name: "token_expires_at in the past", key: "token_expires_at = 2020-01-01T00:00:00Z", warn: "runners[0].token_expires_at: the runner token expired at 2020-01-01T00:00:00Z"},
		{name: "token_expires_at ahead", key: "token_expires_at = 2999-01-01T00:00:00Z", check: func(c *Config) bool { return len(c.Warnings) == 0 }},
		{name: "request_concurrency", key: "request_concurrency = 4", warn: "runners[0].request_concurrency: ignored"},
		{name: "strict_check_interval", key: "strict_check_interval = true", warn: "runners[0].strict_check_interval: ignored"},
		{name: "tls-cert-file", key: `tls-cert-file = "/c.pem"`, warn: "runners[0].tls-cert-file: ignored: client certificates"},
		{name: "tls-key-file", key: `tls-key-file = "/k.pem"`, warn: "runners[0].tls-key-file: ignored: client certificates"},
		{name: "paas_job_trace_watch", key: "[runners.paas_job_trace_watch]\ntoken = \"w\"", warn: "runners[0].paas_job_trace_watch: ignored"},
		{name: "paas_keep_resources_for_reuse_seconds", key: "paas_keep_resources_for_reuse_seconds = 60", warn: "runners[0].paas_keep_resources_for_reuse_seconds: ignored"},
		{name: "heptapod_paas_runner_helper_image", key: `heptapod_paas_runner_helper_image = "h"`, warn: "runners[0].heptapod_paas_runner_helper_image: ignored"},
		// job-level keys: the honoured ones forwarded, the others warned about
		{name: "environment", key: `environment = ["A=1", "B=x=y"]`, check: func(c *Config) bool {
			return reflect.DeepEqual(inner(c, "environment"), []any{"A=1", "B=x=y"})
		}},
		{name: "builds_dir", key: `builds_dir = "/work"`, check: func(c *Config) bool { return inner(c, "builds_dir") == "/work" }},
		{name: "output_limit", key: "output_limit = 8192", check: func(c *Config) bool { return inner(c, "output_limit") == int64(8192) }},
		{name: "pre_build_script", key: `pre_build_script = "echo hi"`, warn: "runners[0].pre_build_script: ignored: paas-runner's inner runner does not honour it"},
		{name: "pre_build_script, Heptapod image", key: "inner_image = \"hpd:1\"\npre_build_script = \"echo hi\"", warn: "runners[0].pre_build_script: forwarded to the inner runner: honoured only if inner_image is a Heptapod Runner image"},
		{name: "shell", key: `shell = "bash"`, warn: "runners[0].shell: ignored"},
		{name: "clone_url", key: `clone_url = "https://g"`, warn: "runners[0].clone_url: ignored"},
		{name: "feature_flags", key: "[runners.feature_flags]\nFF_X = true", warn: "runners[0].feature_flags: ignored"},
		// [runners.cache]
		{name: "cache.Type", key: "[runners.cache]\nType = \"s3\"\nPath = \"p\"\nShared = true\n[runners.cache.s3]\nServerAddress = \"s3\"\nAccessKey = \"a\"\nSecretKey = \"s\"\nBucketName = \"b\"\nBucketLocation = \"eu\"\nInsecure = true",
			check: func(c *Config) bool {
				m, _ := inner(c, "cache").(map[string]any)
				s3, _ := m["s3"].(map[string]any)
				return m["Type"] == "s3" && m["Path"] == "p" && m["Shared"] == true && s3["BucketLocation"] == "eu" && s3["Insecure"] == true && len(c.Warnings) == 0
			}},
		{name: "cache.max_age", key: "[runners.cache]\nmax_age = 60", check: func(c *Config) bool { m, _ := inner(c, "cache").(map[string]any); return m["max_age"] == int64(60) }},
		{name: "cache.MaxUploadedArchiveSize", key: "[runners.cache]\nMaxUploadedArchiveSize = 10", warn: "runners[0].cache.MaxUploadedArchiveSize: ignored"},
		{name: "cache.gcs", key: "[runners.cache]\n[runners.cache.gcs]\nBucketName = \"b\"", warn: "runners[0].cache.gcs: ignored"},
		{name: "cache.s3 without Type", key: "[runners.cache]\n[runners.cache.s3]\nBucketName = \"b\"", warn: "runners[0].cache.s3.BucketName: ignored: [runners.cache] Type is not \"s3\""},
		{name: "cache.s3.AuthenticationType", key: "[runners.cache]\nType = \"s3\"\n[runners.cache.s3]\nServerAddress = \"s3\"\nAccessKey = \"a\"\nSecretKey = \"s\"\nBucketName = \"b\"\nAuthenticationType = \"iam\"",
			warn: "runners[0].cache.s3.AuthenticationType: ignored"},
		// clever-docker
		{name: "cc_api_url", head: clever, key: `cc_api_url = "http://127.0.0.1:1/v2"`, check: func(c *Config) bool { return r0(c).Clever.APIURL == "http://127.0.0.1:1/v2" }},
		{name: "cc_zone", head: clever, key: `cc_zone = "rbx"`, check: func(c *Config) bool { return r0(c).Clever.Zone == "rbx" }},
		{name: "cc_default_flavor", head: clever, key: `cc_default_flavor = "XS"`, check: func(c *Config) bool { return r0(c).Clever.DefaultFlavor == "XS" }},
		{name: "cc_max_flavor", head: clever, key: `cc_max_flavor = "L"`, check: func(c *Config) bool { return r0(c).Clever.MaxFlavor == "L" }},
		{name: "cc_deployment_repo_timeout", head: clever, key: "cc_deployment_repo_timeout = 7", check: func(c *Config) bool { return r0(c).Clever.DeploymentRepoTimeout == 7 }},
		{name: "cc_deployment_repo_wait_step", head: clever, key: "cc_deployment_repo_wait_step = 0.5", check: func(c *Config) bool { return r0(c).Clever.DeploymentRepoWaitStep == 0.5 }},
		{name: "cc_multi_tenant", head: clever, key: "cc_multi_tenant = true\ncc_gitlab_namespace_attributes_token = \"adm\"",
			check: func(c *Config) bool {
				return r0(c).Clever.MultiTenant && r0(c).Clever.NamespaceAttributesToken == "adm"
			}},
		{name: "cc_gitlab_namespace_attributes_token_file", head: clever, key: "cc_multi_tenant = true\ncc_gitlab_namespace_attributes_token_file = " + quote(secret),
			check: func(c *Config) bool { return r0(c).Clever.NamespaceAttributesToken == "s3cret" }},
		{name: "cc_orga_id_attribute", head: clever, key: `cc_orga_id_attribute = "orga"`, check: func(c *Config) bool { return r0(c).Clever.OrgaIDAttribute == "orga" }},
		{name: "cc_orga_token_attribute", head: clever, key: `cc_orga_token_attribute = "tok"`, check: func(c *Config) bool { return r0(c).Clever.OrgaTokenAttribute == "tok" }},
		{name: "cc_auth_user", head: clever, key: `cc_auth_user = "bot"`, check: func(c *Config) bool { return r0(c).Clever.AuthUser == "bot" }},
		{name: "cc_instance_variant_uuid", head: clever, key: `cc_instance_variant_uuid = "0b4a1b6e-7c1d-4e5f-9a2b-3c4d5e6f7a8b"`, check: func(c *Config) bool {
			return r0(c).Clever.InstanceVariantUUID == "0b4a1b6e-7c1d-4e5f-9a2b-3c4d5e6f7a8b"
		}},
		{name: "cc_flavor_context", head: clever, key: `cc_flavor_context = "ctx"`, check: func(c *Config) bool {
			return r0(c).Clever.FlavorContext == "ctx" && r0(c).Clever.FlavorNamePrefix == "ctx-"
		}},
		{name: "cc_flavor_name_prefix", head: clever, key: `cc_flavor_name_prefix = "pre_"`, check: func(c *Config) bool { return r0(c).Clever.FlavorNamePrefix == "pre_" }},
		{name: "cc_extra_env", head: clever, key: "cc_extra_env = { A = \"1\" }", check: func(c *Config) bool { return r0(c).Clever.ExtraEnv["A"] == "1" }},
		{name: "cc_auth_scheme", head: clever, key: `cc_auth_scheme = "Bearer"`, check: func(c *Config) bool { return r0(c).Clever.AuthScheme == "bearer" }},
		{name: "cc_token_file", head: strings.Replace(clever, "cc_token = \"cc-secret\"\n", "", 1), key: "cc_token_file = " + quote(secret),
			check: func(c *Config) bool { return r0(c).Clever.Token == "s3cret" }},
		{name: "cc_token_env", head: strings.Replace(clever, "cc_token = \"cc-secret\"\n", "", 1), key: `cc_token_env = "PAAS_KEYS_TEST_TOKEN"`,
			check: func(c *Config) bool { return r0(c).Clever.Token == "from-env" }},
		// [guards]
		{name: "guards", key: "[guards]\nbackend = \"local\"\ndefault_process_mode = \"newest_first\"\nmax_waiting_jobs = 3\nlease_margin = \"90s\"\nlock_environments = true",
			check: func(c *Config) bool {
				g := c.Guards
				return g.DefaultProcessMode == "newest_first" && g.MaxWaitingJobs == 3 && g.LeaseMargin == 90*time.Second && g.LockEnvironments
			}},
		{name: "guards.git", key: "[guards]\nbackend = \"git\"\n[guards.git]\nurl = \"https://g/l.git\"\nbranch = \"locks\"\nusername = \"u\"\npassword_file = " + quote(secret) + "\nretry_delay = \"5s\"",
			check: func(c *Config) bool {
				g := c.Guards.Git
				return c.Guards.Backend == "git" && g.URL == "https://g/l.git" && g.Branch == "locks" && g.Username == "u" && g.Password == "s3cret" && g.RetryDelay == 5*time.Second
			}},
		{name: "guards.git.password", key: "[guards]\nbackend = \"git\"\n[guards.git]\nurl = \"file:///l.git\"\npassword = \"pw\"", check: func(c *Config) bool { return c.Guards.Git.Password == "pw" }},
		{name: "guards.pools", key: "[[guards.pools]]\nname = \"aws\"\nnamespaces = [\"acme\"]\nprocess_mode = \"unordered\"\nsupersede = true\n[guards.pools.locks]\nenv-1 = \"m1\"",
			check: func(c *Config) bool {
				p := c.Guards.Pools
				return len(p) == 1 && p[0].Name == "aws" && reflect.DeepEqual(p[0].Namespaces, []string{"acme"}) && p[0].ProcessMode == "unordered" && p[0].Supersede && p[0].Locks["env-1"] == "m1"
			}},
	}
	t.Setenv("PAAS_KEYS_TEST_TOKEN", "from-env")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			head := tc.head
			if head == "" {
				head = local
			}
			body := head + tc.key + "\n"
			if tc.pre != "" {
				body = tc.pre + "\n" + body
			}
			p := filepath.Join(t.TempDir(), "config.toml")
			os.WriteFile(p, []byte(body), 0o600)
			c, err := Load(p, execs)
			if err != nil {
				t.Fatalf("refused:\n%v\n--\n%s", err, body)
			}
			if tc.check != nil && !tc.check(c) {
				t.Fatalf("value not honoured: %+v\n--\n%s", c, body)
			}
			var ws []string
			for _, w := range c.Warnings {
				ws = append(ws, w.String())
			}
			all := strings.Join(ws, "\n")
			if tc.warn == "" {
				if tc.check == nil {
					t.Fatal("case checks nothing")
				}
				return
			}
			if !strings.Contains(all, tc.warn) {
				t.Fatalf("no warning %q; warnings:\n%s", tc.warn, all)
			}
			if !strings.Contains(all, p+":") || strings.Contains(all, p+":0:") {
				t.Errorf("warning does not locate the key: %s", all)
			}
		})
	}
}

func quote(s string) string { return `"` + s + `"` }

// Values of honoured keys that the inner runner could not use (it would
// fail every job at launch, on the host) are refused at start, naming the
// key and its line.
func TestForwardedKeysRefused(t *testing.T) {
	for _, tc := range []struct{ key, want string }{
		{`environment = "A=1"`, ":6: runners[0].environment: want an array"},
		{`environment = ["A=1", "NOEQUALS"]`, ":6: runners[0].environment: entry 1: \"NOEQUALS\" is not NAME=value"},
		{`environment = ["=x"]`, "runners[0].environment: entry 0"},
		{`environment = [1]`, "runners[0].environment: entry 0: want a \"NAME=value\" string, not an integer"},
		{`builds_dir = "builds"`, ":6: runners[0].builds_dir: \"builds\": want an absolute directory"},
		{`builds_dir = "/"`, "runners[0].builds_dir"},
		{`builds_dir = 3`, "runners[0].builds_dir: want a string"},
		{`output_limit = -1`, ":6: runners[0].output_limit: must not be negative"},
		{`output_limit = 1.5`, "runners[0].output_limit: want a whole number of kilobytes"},
		{`output_limit = "4096"`, "runners[0].output_limit: want a whole number"},
		{`output_limit = 99999999999`, "runners[0].output_limit: 99999999999 KB is absurd"},
		{"[runners.cache]\nType = \"gcs\"", ":7: runners[0].cache.Type: \"gcs\" is not supported"},
		{"[runners.cache]\nType = \"s4\"", ":7: runners[0].cache.Type: unknown cache type \"s4\""},
		{"[runners.cache]\nType = 3", ":7: runners[0].cache.Type: wrong type"},
		{"[runners.cache]\nShared = \"yes\"", ":7: runners[0].cache.Shared: wrong type: want a bool"},
		{"[runners.cache]\nTyp = \"s3\"", ":7: runners[0].cache.Typ: unknown key"},
		{"[runners.cache]\nType = \"s3\"\nServerAddress = \"s3.example\"\n[runners.cache.s3]\nServerAddress = \"s3\"\nAccessKey = \"a\"\nSecretKey = \"s\"\nBucketName = \"b\"", ":8: runners[0].cache.ServerAddress: belongs in [runners.cache.s3]"},
		{"[runners.cache]\nType = \"s3\"\n[runners.cache.s3]\nBucketNam = \"b\"\nServerAddress = \"s3\"\nAccessKey = \"a\"\nSecretKey = \"s\"\nBucketName = \"b\"", ":9: runners[0].cache.s3.BucketNam: unknown key"},
		{"[runners.cache]\nType = \"s3\"\n[runners.cache.s3]\nInsecure = \"no\"\nServerAddress = \"s3\"\nAccessKey = \"a\"\nSecretKey = \"s\"\nBucketName = \"b\"", ":9: runners[0].cache.s3.Insecure: wrong type: want a bool"},
		{"cache = 3", "runners[0].cache: want a table"},
		{"[runners.cache]\nType = \"s3\"", ":7: runners[0].cache.s3: Type = \"s3\" needs ServerAddress, AccessKey, SecretKey, BucketName in [runners.cache.s3]"},
		{"[runners.cache]\nType = \"s3\"\n[runners.cache.s3]\nBucketName = \"b\"", ":8: runners[0].cache.s3: Type = \"s3\" needs ServerAddress, AccessKey, SecretKey in"},
		{"[runners.cache]\nType = \"s3\"\n[runners.cache.s3]\nServerAddress = \"https://s3.example\"\nAccessKey = \"a\"\nSecretKey = \"s\"\nBucketName = \"b\"",
			":9: runners[0].cache.s3.ServerAddress: \"https://s3.example\": want host[:port], without scheme"},
		{"[runners.local_docker]\nhost = \"tcp://\"", ":7: runners[0].local_docker.host: \"tcp://\": give host:port"},
		{"host = \"unix://\"", ":6: runners[0].host: \"unix://\": give the socket's path"},
	} {
		p := write(t, minimal+tc.key+"\n")
		_, err := Load(p, execs)
		if err == nil || !strings.Contains(err.Error(), p+tc.want) && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: want %q, got %v", tc.key, tc.want, err)
			continue
		}
		if strings.Count(err.Error(), "\n") != 0 {
			t.Errorf("%s: one problem, several lines:\n%v", tc.key, err)
		}
	}
}

// Configuration mistakes the run would only meet later are refused at
// load, each naming its key.
func TestMoreBadValues(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{"listen_address = \"9252\"\n" + minimal, ":1: listen_address: \"9252\" is not host:port"},
		{"listen_address = \"localhost:http\"\n" + minimal, ":1: listen_address: \"localhost:http\" is not host:port with a port number"},
		{"listen_address = \"127.0.0.1:99999\"\n" + minimal, ":1: listen_address"},
		{minimal + "[guards]\nmax_waiting_jobs = 100000000\n", ":7: guards.max_waiting_jobs: 100000000 is absurd"},
		{"", ": the configuration file is empty"},
		{strings.Replace(minimal, `"https://gitlab.example"`, `"https://gitlab.example/api/v4/"`, 1), `:3: runners[0].url: "https://gitlab.example/api/v4/": give GitLab's own URL, without /api/v4`},
		{strings.Replace(minimal, `token = "glrt-abcdefgh"`, `token = "glrt-abcdefgh "`, 1), ":4: runners[0].token: contains whitespace"},
		{strings.Replace(minimal, `token = "glrt-abcdefgh"`, `token = "glrt-abc\ndefgh"`, 1), ":4: runners[0].token: contains whitespace or a control character"},
		{"\n  \n", ": the configuration file is empty"},
	} {
		p := write(t, tc.body)
		_, err := Load(p, execs)
		if err == nil || !strings.Contains(err.Error(), p+tc.want) {
			t.Errorf("%q: want %q, got %v", tc.body, tc.want, err)
		}
	}
	// a port-less ":0" style address stays valid
	if _, err := Load(write(t, "listen_address = \":0\"\n"+minimal), execs); err != nil {
		t.Fatal(err)
	}
}

// Secret files: a trailing newline is trimmed; one every user may read is
// accepted with a warning naming the key (a group-readable one is how a
// root-owned secret is handed to the daemon's group: no warning); a
// relative password_file is read from the configuration's directory, as
// the other *_file keys.
func TestSecretFiles(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("line-secret\r\n"), 0o600)
	cfg := filepath.Join(dir, "config.toml")
	body := minimal + "guard_api_token_file = \"pw\"\n[guards]\n[guards.git]\nurl = \"https://g/l.git\"\npassword_file = \"pw\"\n"
	os.WriteFile(cfg, []byte(body), 0o600)
	// from elsewhere: relative names are the configuration's directory's
	wd, _ := os.Getwd()
	t.Chdir(t.TempDir())
	defer os.Chdir(wd)
	for _, mode := range []os.FileMode{0o600, 0o640, 0o644} {
		os.Chmod(pw, mode)
		c, err := Load(cfg, execs)
		if err != nil {
			t.Fatalf("%04o: %v", mode, err)
		}
		if c.Runners[0].GuardAPIToken != "line-secret" || c.Guards.Git.Password != "line-secret" {
			t.Fatalf("not trimmed: %q %q", c.Runners[0].GuardAPIToken, c.Guards.Git.Password)
		}
		var ws []string
		for _, w := range c.Warnings {
			ws = append(ws, w.String())
		}
		all := strings.Join(ws, "\n")
		if mode&0o004 == 0 {
			if all != "" {
				t.Errorf("%04o: warned: %s", mode, all)
			}
			continue
		}
		for _, k := range []string{":6: runners[0].guard_api_token_file: " + pw + " holds a secret and is readable by every user (mode 0644)", ":10: guards.git.password_file: "} {
			if !strings.Contains(all, cfg+k) {
				t.Errorf("no warning %q in:\n%s", k, all)
			}
		}
	}
	os.Remove(pw)
	_, err := Load(cfg, execs)
	if err == nil || !strings.Contains(err.Error(), cfg+":6: runners[0].guard_api_token_file: cannot read "+pw) || !strings.Contains(err.Error(), cfg+":10: guards.git.password_file: cannot read "+pw) {
		t.Fatalf("missing secret file: %v", err)
	}
}

// testCA is a self-signed certificate, PEM-encoded.
func testCA(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// A tls-ca-file that is not a PEM bundle is refused at load, located.
func TestTLSCAFileNotPEM(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.pem")
	os.WriteFile(bad, []byte("not a certificate\n"), 0o600)
	p := write(t, minimal+"tls-ca-file = "+quote(bad)+"\n")
	_, err := Load(p, execs)
	if err == nil || err.Error() != p+":6: runners[0].tls-ca-file: "+bad+" holds no PEM certificate" {
		t.Fatalf("got %v", err)
	}
}

package config

import (
	"fmt"
	"math"
	"path"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Keys paas-runner accepts (gitlab-runner or Heptapod PAAS Runner write
// them) and does not act on: each one set is a warning naming it, so that
// nobody counts on it silently. Registration metadata (id,
// token_obtained_at, token_expires_at) is not a setting and stays silent.
var ignoredTopKeys = map[string]string{
	"session_server":     "ignored: paas-runner has no interactive web terminal session server",
	"connection_max_age": "ignored: paas-runner does not use it",
	"sentry_dsn":         "ignored: paas-runner does not report to Sentry",
}

var ignoredRunnerKeys = map[string]string{
	"request_concurrency":                   "ignored: paas-runner does not use it (concurrent and limit bound the jobs)",
	"strict_check_interval":                 "ignored: paas-runner does not use it (check_interval applies)",
	"tls-cert-file":                         "ignored: client certificates are not supported (only tls-ca-file is)",
	"tls-key-file":                          "ignored: client certificates are not supported (only tls-ca-file is)",
	"paas_job_trace_watch":                  "ignored: paas-runner watches jobs itself (see paas_tracking_requests_per_second)",
	"paas_keep_resources_for_reuse_seconds": "ignored: paas-runner never reuses hosts",
	"heptapod_paas_runner_helper_image":     "ignored: paas-runner has no helper image",
}

// honouredJobKeys are the gitlab-runner job-level keys the inner runner
// acts on (besides docker and cache); the other forwarded ones are only
// honoured by a Heptapod Runner inner image.
var honouredJobKeys = map[string]bool{"environment": true, "builds_dir": true, "output_limit": true}

// maxOutputLimitKB bounds output_limit (kilobytes): 10 GiB of job log.
const maxOutputLimitKB = 10 << 20

// checkRunnerKeys validates the forwarded job-level keys the inner runner
// acts on (a value it could not read would fail every job at launch, on
// the host) and warns about accepted keys nothing acts on.
func (d *decoder) checkRunnerKeys(i int, p string, r *Runner, prims []string) {
	for _, k := range prims {
		key := p + "." + k
		line := d.lineOfKey(key)
		warn := func(msg string) { d.warns = append(d.warns, Warning{File: d.file, Line: line, Key: key, Msg: msg}) }
		fail := func(msg string) { d.errs = append(d.errs, &Error{File: d.file, Line: line, Key: key, Msg: msg}) }
		if msg, ok := ignoredRunnerKeys[k]; ok {
			warn(msg)
			continue
		}
		v, forwarded := r.Inner[k]
		if !forwarded || k == "docker" || k == "cache" {
			continue
		}
		if !honouredJobKeys[k] {
			if r.InnerImage == "" {
				warn("ignored: paas-runner's inner runner does not honour it (only a Heptapod Runner inner_image would)")
			} else {
				warn("forwarded to the inner runner: honoured only if inner_image is a Heptapod Runner image (paas-runner's own inner runner ignores it)")
			}
			continue
		}
		switch k {
		case "environment":
			list, ok := v.([]any)
			if !ok {
				fail(fmt.Sprintf("want an array of \"NAME=value\" strings, not %s", tomlType(v)))
				continue
			}
			for j, e := range list {
				s, ok := e.(string)
				if !ok {
					fail(fmt.Sprintf("entry %d: want a \"NAME=value\" string, not %s", j, tomlType(e)))
					continue
				}
				if name, _, ok := strings.Cut(s, "="); !ok || strings.TrimSpace(name) == "" {
					fail(fmt.Sprintf("entry %d: %q is not NAME=value", j, s))
				}
			}
		case "builds_dir":
			s, ok := v.(string)
			switch {
			case !ok:
				fail(fmt.Sprintf("want a string, not %s", tomlType(v)))
			case !path.IsAbs(s) || path.Clean(s) == "/":
				fail(fmt.Sprintf("%q: want an absolute directory of the job's container, such as /builds", s))
			}
		case "output_limit":
			n, ok := v.(int64)
			switch {
			case !ok:
				fail(fmt.Sprintf("want a whole number of kilobytes, not %s", tomlType(v)))
			case n < 0:
				fail("must not be negative (0 means the default, 4096 KB)")
			case n > maxOutputLimitKB:
				fail(fmt.Sprintf("%d KB is absurd (at most %d)", n, maxOutputLimitKB))
			}
		}
	}
}

// Keys of [runners.cache] and [runners.cache.s3]: honoured, or
// gitlab-runner's and ignored (a warning).
var (
	cacheHonoured = map[string]string{"Type": "string", "Path": "string", "Shared": "bool", "max_age": "", "s3": "table"}
	cacheIgnored  = map[string]string{
		"MaxUploadedArchiveSize": "ignored: paas-runner does not bound cache archives",
		"gcs":                    "ignored: only the S3 cache is supported",
		"azure":                  "ignored: only the S3 cache is supported",
	}
	cacheS3Honoured = map[string]string{"ServerAddress": "string", "AccessKey": "string", "SecretKey": "string",
		"BucketName": "string", "BucketLocation": "string", "Insecure": "bool"}
	cacheS3Ignored = []string{"SessionToken", "AuthenticationType", "ServerSideEncryption", "ServerSideEncryptionKeyID",
		"DualStack", "PathStyle", "Accelerate", "RoleARN", "UploadRoleARN"}
	// gitlab-runner's old place of the S3 keys, directly in [runners.cache]
	cacheOldS3 = map[string]bool{"ServerAddress": true, "AccessKey": true, "SecretKey": true, "BucketName": true,
		"BucketLocation": true, "Insecure": true}
)

// checkInnerCache validates [runners.cache]: Type (s3 or none), Path,
// Shared, [runners.cache.s3] (what the daemon presigns with) and max_age,
// seconds a local cache volume is kept after its last save (a positive,
// finite number). Unknown keys are errors; gitlab-runner's keys nothing
// acts on are warnings.
func (d *decoder) checkInnerCache(i int, p string, v any) {
	m, ok := v.(map[string]any)
	if !ok {
		d.errKey(p, "want a table ([runners.cache])")
		return
	}
	at := func(path ...string) int { return d.loc.line(i, append([]string{"cache"}, path...)) }
	fail := func(line int, key, msg string) {
		d.errs = append(d.errs, &Error{File: d.file, Line: line, Key: key, Msg: msg})
	}
	warn := func(line int, key, msg string) {
		d.warns = append(d.warns, Warning{File: d.file, Line: line, Key: key, Msg: msg})
	}
	typeOK := func(want string, v any) bool {
		switch want {
		case "string":
			_, ok := v.(string)
			return ok
		case "bool":
			_, ok := v.(bool)
			return ok
		case "table":
			_, ok := v.(map[string]any)
			return ok
		}
		return true
	}
	isS3 := false
	for _, k := range sortedAny(m) {
		val := m[k]
		key := p + "." + k
		if want, ok := cacheHonoured[k]; ok {
			if !typeOK(want, val) {
				fail(at(k), key, fmt.Sprintf("wrong type: want a %s, not %s", want, tomlType(val)))
				continue
			}
			if k == "Type" {
				switch t := val.(string); strings.ToLower(t) {
				case "s3":
					isS3 = true
				case "":
				case "gcs", "azure":
					fail(at(k), key, fmt.Sprintf("%q is not supported: only \"s3\" (the daemon presigns S3 URLs; without Type, caches are local Docker volumes)", t))
				default:
					fail(at(k), key, fmt.Sprintf("unknown cache type %q (want \"s3\", or no Type for local Docker volumes)", t))
				}
			}
			continue
		}
		if msg, ok := cacheIgnored[k]; ok {
			warn(at(k), key, msg)
			continue
		}
		if cacheOldS3[k] {
			fail(at(k), key, "belongs in [runners.cache.s3] (gitlab-runner's old place for it is not read)")
			continue
		}
		fail(at(k), key, "unknown key")
	}
	if isS3 {
		// what the daemon presigns with: refused here, located, rather
		// than when the executor is built
		s3, _ := m["s3"].(map[string]any)
		var missing []string
		for _, k := range []string{"ServerAddress", "AccessKey", "SecretKey", "BucketName"} {
			if v, _ := s3[k].(string); v == "" {
				missing = append(missing, k)
			}
		}
		if len(missing) > 0 {
			line := at("s3")
			if line == 0 {
				line = at("Type")
			}
			fail(line, p+".s3", "Type = \"s3\" needs "+strings.Join(missing, ", ")+" in [runners.cache.s3]")
		}
		if a, _ := s3["ServerAddress"].(string); strings.Contains(a, "://") || strings.Contains(a, "/") {
			fail(at("s3", "ServerAddress"), p+".s3.ServerAddress", fmt.Sprintf("%q: want host[:port], without scheme nor path (Insecure = true for http)", a))
		}
	}
	if s3, ok := m["s3"].(map[string]any); ok {
		ignored := map[string]bool{}
		for _, k := range cacheS3Ignored {
			ignored[k] = true
		}
		for _, k := range sortedAny(s3) {
			key := p + ".s3." + k
			line := at("s3", k)
			switch want, ok := cacheS3Honoured[k]; {
			case ok && !typeOK(want, s3[k]):
				fail(line, key, fmt.Sprintf("wrong type: want a %s, not %s", want, tomlType(s3[k])))
			case ok && !isS3:
				warn(line, key, "ignored: [runners.cache] Type is not \"s3\"")
			case ok:
			case ignored[k]:
				warn(line, key, "ignored: not supported by paas-runner's S3 cache (static AccessKey and SecretKey only)")
			default:
				fail(line, key, "unknown key")
			}
		}
	}
	age, ok := m["max_age"]
	if !ok {
		return
	}
	line := at("max_age")
	var secs float64
	switch n := age.(type) {
	case int64:
		secs = float64(n)
	case float64:
		secs = n
	default:
		fail(line, p+".max_age", "want a number of seconds")
		return
	}
	if math.IsNaN(secs) || math.IsInf(secs, 0) || secs <= 0 || secs > 100*365*24*3600 {
		fail(line, p+".max_age", "want a positive number of seconds (at most 100 years)")
	}
}

func sortedAny(m map[string]any) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sortStrings(ks)
	return ks
}

// checkTokenExpiry warns when registration recorded that the runner's
// token has expired: GitLab refuses it, and paas-runner does not rotate
// tokens. The zero time (0001-01-01) means it never expires.
func (d *decoder) checkTokenExpiry(key string, p toml.Primitive) {
	var at time.Time
	if err := d.md.PrimitiveDecode(p, &at); err != nil || at.IsZero() || at.Year() <= 1 || at.After(time.Now()) {
		return
	}
	d.warns = append(d.warns, Warning{File: d.file, Line: d.lineOfKey(key), Key: key,
		Msg: fmt.Sprintf("the runner token expired at %s: GitLab refuses it (create a new token in GitLab and register again)", at.UTC().Format(time.RFC3339))})
}

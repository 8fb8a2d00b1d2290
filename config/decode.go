package config

import (
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// decoder decodes key by key (toml.Primitive) so that one bad value does not
// hide the others, and so that every key not in the schema is reported.
type decoder struct {
	file string
	md   toml.MetaData
	errs Errors
	// warnings: accepted keys that are not honoured
	warns []Warning
	// prims of each [[runners]] entry, for executor-key checks
	runners []map[string]toml.Primitive
	// defined key paths, in our runners[i].x notation, with their line
	// (0 when unknown)
	keys map[string]int
	loc  *runnerLocator
	// schema, when set (tests), is told of every table decodeFields
	// decodes and of the keys it accepts there, with their destinations.
	schema func(table string, fields fieldSet)
}

var lineRe = regexp.MustCompile(`^toml: line (\d+)(?: \(last key "[^"]*"\))?: (.*)$`)

// Parse decodes and validates configuration data; file names it in errors.
func Parse(file string, data []byte, opts Options) (*Config, error) {
	return parse(file, data, opts, nil)
}

func parse(file string, data []byte, opts Options, schema func(table string, fields fieldSet)) (*Config, error) {
	d := &decoder{file: file, keys: map[string]int{}, schema: schema}
	if len(strings.TrimSpace(string(data))) == 0 {
		return nil, Errors{{File: file, Msg: "the configuration file is empty (it needs state_file and a [[runners]] section)"}}
	}
	var top map[string]toml.Primitive
	md, err := toml.Decode(string(data), &top)
	if err != nil {
		d.errs = append(d.errs, d.syntaxError(err))
		return nil, d.errs
	}
	d.md = md
	d.loc = newRunnerLocator(string(data))
	c := &Config{Path: file}
	d.decodeTop(top, c)
	c.validate(d, opts)
	sort.SliceStable(d.warns, func(i, j int) bool { return d.warns[i].Line < d.warns[j].Line })
	c.Warnings = d.warns
	c.lines = d.keys
	if !d.ok() {
		sortErrors(d.errs)
		return nil, d.errs
	}
	return c, nil
}

func (d *decoder) ok() bool { return len(d.errs) == 0 }

// refused tells whether key has an error already (a wrong type): a check
// of its value would only repeat it.
func (d *decoder) refused(key string) bool {
	for _, e := range d.errs {
		if e.Key == key {
			return true
		}
	}
	return false
}

func (d *decoder) defined(key string) bool { _, ok := d.keys[key]; return ok }

func (d *decoder) syntaxError(err error) *Error {
	var pe toml.ParseError
	if ok := asParseError(err, &pe); ok {
		line := pe.Position.Line
		if strings.HasSuffix(pe.Message, `but got '\n' instead`) && line > 1 {
			// an unclosed table header: the parser has read the line's
			// newline already and points at the next line
			line--
		}
		return &Error{File: d.file, Line: line, Msg: "invalid TOML: " + pe.Message}
	}
	return &Error{File: d.file, Msg: "invalid TOML: " + err.Error()}
}

func asParseError(err error, pe *toml.ParseError) bool {
	switch e := err.(type) {
	case toml.ParseError:
		*pe = e
		return true
	case *toml.ParseError:
		*pe = *e
		return true
	}
	return false
}

// errKey records a problem with a key, located at the key's line.
func (d *decoder) errKey(key, msg string) {
	d.errs = append(d.errs, &Error{File: d.file, Line: d.lineOfKey(key), Key: key, Msg: msg})
}

// lineOf finds where a value is in the file. The toml package keeps key
// positions private but puts them in decode errors, so decode the value into
// two destinations no value fits both of and read the line from the error.
func (d *decoder) lineOf(p toml.Primitive) int {
	var probe struct{}
	err := d.md.PrimitiveDecode(p, &probe)
	if err == nil {
		var n int
		err = d.md.PrimitiveDecode(p, &n)
	}
	if err == nil {
		return 0
	}
	if m := lineRe.FindStringSubmatch(err.Error()); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	return 0
}

// lineOfKey is where key is defined; a key of a [[runners]] entry that is
// not in the file (a required one missing) is located at its entry's header.
func (d *decoder) lineOfKey(key string) int {
	if n := d.keys[key]; n > 0 {
		return n
	}
	if m := runnerKeyRe.FindStringSubmatch(key); m != nil && d.loc != nil {
		if i, _ := strconv.Atoi(m[1]); i < len(d.loc.starts) {
			return d.loc.starts[i] + 1
		}
	}
	return 0
}

// note records that key is defined, and where.
func (d *decoder) note(key string, p toml.Primitive) {
	if n := d.guardsLine(key); n > 0 {
		d.keys[key] = n
		return
	}
	if m := runnerKeyRe.FindStringSubmatch(key); m != nil {
		i, _ := strconv.Atoi(m[1])
		d.keys[key] = d.loc.line(i, strings.Split(m[2], "."))
		return
	}
	d.keys[key] = d.lineOf(p)
}

func sortStrings(s []string) { sort.Strings(s) }

// sortErrors puts errors in file order, those without a line last, keeping
// the discovery order among equals.
func sortErrors(es Errors) {
	sort.SliceStable(es, func(i, j int) bool {
		li, lj := es[i].Line, es[j].Line
		if li == 0 || lj == 0 {
			return li != 0 && lj == 0
		}
		return li < lj
	})
}

// decodeValue decodes one primitive into dst, recording a located error.
func (d *decoder) decodeValue(key string, p toml.Primitive, dst any) bool {
	if err := d.md.PrimitiveDecode(p, dst); err != nil {
		msg := err.Error()
		line := d.lineOfKey(key)
		if m := lineRe.FindStringSubmatch(msg); m != nil {
			if line == 0 {
				line, _ = strconv.Atoi(m[1])
			}
			msg = m[2]
		}
		msg = strings.Replace(msg, "incompatible types: TOML value has type", "wrong type: the value is", 1)
		msg = strings.Replace(msg, "; destination has type", ", expected", 1)
		msg = goTypeNames.Replace(msg)
		d.errs = append(d.errs, &Error{File: d.file, Line: line, Key: key, Msg: msg})
		return false
	}
	// TOML has nan and inf: no setting of paas-runner means either, and a
	// NaN slips through every comparison meant to bound it.
	if f, ok := dst.(*float64); ok && (math.IsNaN(*f) || math.IsInf(*f, 0)) {
		d.errKey(key, fmt.Sprintf("%v is not allowed: give a finite number", *f))
		return false
	}
	return true
}

type fieldSet map[string]any

// decodeFields decodes the known keys of one table into their destinations,
// hands keys accepted by forward (if any) over, and reports the rest.
func (d *decoder) decodeFields(prefix string, prims map[string]toml.Primitive, fields fieldSet, forward func(key string, p toml.Primitive) bool) {
	if d.schema != nil {
		d.schema(prefix, fields)
	}
	for _, k := range sortedKeys(prims) {
		p := prims[k]
		path := k
		if prefix != "" {
			path = prefix + "." + k
		}
		d.note(path, p)
		if dst, ok := fields[k]; ok {
			d.decodeValue(path, p, dst)
			continue
		}
		if forward != nil && forward(k, p) {
			continue
		}
		d.errKey(path, "unknown key")
	}
}

func sortedKeys(m map[string]toml.Primitive) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sortStrings(ks)
	return ks
}

func (d *decoder) decodeTop(top map[string]toml.Primitive, c *Config) {
	c.Concurrent = DefaultConcurrent
	c.CheckInterval = DefaultCheckInterval
	c.JobProgressPollInterval = DefaultJobProgressPollInterval
	c.ShutdownTimeout = DefaultShutdownTimeout
	c.PaasMaxConcurrentProvisioning = DefaultMaxProvisioning
	c.PaasDecommissionLaunchFailures = true
	c.PaasLogStatistics = true
	c.PaasTrackingRequestsPerSecond = DefaultTrackingRPS
	var runners []map[string]toml.Primitive
	var guards map[string]toml.Primitive
	var ignoredTables map[string]any
	var quotaPrim toml.Primitive
	fields := fieldSet{
		"concurrent":                        &c.Concurrent,
		"check_interval":                    &c.CheckInterval,
		"job_progress_poll_interval":        &c.JobProgressPollInterval,
		"state_file":                        &c.StateFile,
		"shutdown_timeout":                  &c.ShutdownTimeout,
		"log_level":                         &c.LogLevel,
		"log_format":                        &c.LogFormat,
		"listen_address":                    &c.ListenAddress,
		"paas_max_concurrent_provisioning":  &c.PaasMaxConcurrentProvisioning,
		"paas_finished_jobs_keep_resources": &c.PaasFinishedJobsKeepResources,
		"paas_decommission_launch_failures": &c.PaasDecommissionLaunchFailures,
		"paas_min_seconds_between_launches": &c.PaasMinSecondsBetweenLaunches,
		"paas_log_statistics":               &c.PaasLogStatistics,
		"paas_tracking_requests_per_second": &c.PaasTrackingRequestsPerSecond,
		"quota_computation":                 &quotaPrim,
		"runners":                           &runners,
		"guards":                            &guards,
		// gitlab-runner keys with no meaning here, accepted so that a
		// gitlab-runner style file loads.
		"session_server":     &ignoredTables,
		"connection_max_age": new(any),
		"sentry_dsn":         new(any),
	}
	if _, ok := top["runners"]; ok {
		// [runners] or [runners.docker] alone (a gitlab-runner snippet
		// pasted without its [[runners]] header), runners = 5: say what is
		// expected, at the line, in TOML's words rather than Go's
		if typ := d.md.Type("runners"); typ != "ArrayHash" && typ != "Array" {
			d.note("runners", top["runners"])
			if d.keys["runners"] == 0 {
				d.keys["runners"] = d.loc.firstTable("runners")
			}
			d.errKey("runners", fmt.Sprintf("wrong type: the value is %s, expected [[runners]] entries (an array of tables: write [[runners]] above each runner's keys)", tomlTypeName(typ)))
			delete(top, "runners")
		}
	}
	d.decodeFields("", top, fields, nil)
	for _, k := range sortedKeys(top) {
		if msg, ok := ignoredTopKeys[k]; ok {
			d.warns = append(d.warns, Warning{File: d.file, Line: d.lineOfKey(k), Key: k, Msg: msg})
		}
	}
	if _, ok := top["quota_computation"]; ok {
		var quota map[string]toml.Primitive
		if typ := d.md.Type("quota_computation"); typ != "Hash" {
			d.errKey("quota_computation", fmt.Sprintf("wrong type: the value is %s, expected a table ([quota_computation])", strings.ToLower(typ)))
		} else if d.decodeValue("quota_computation", quotaPrim, &quota) {
			q := &QuotaComputation{}
			d.decodeFields("quota_computation", quota, fieldSet{
				"reference_runner":     &q.ReferenceRunner,
				"reference_flavor":     &q.ReferenceFlavor,
				"reference_jobs_count": &q.ReferenceJobsCount,
			}, nil)
			c.QuotaComputation = q
		}
	}
	c.Guards = d.decodeGuards(guards)
	if c.CheckInterval == 0 {
		c.CheckInterval = DefaultCheckInterval
	}
	d.runners = runners
	for i, rp := range runners {
		c.Runners = append(c.Runners, d.decodeRunner(i, rp))
	}
}

// Keys of a [[runners]] entry forwarded to the inner runner verbatim: they
// describe how a job runs, not how paas-runner provisions hosts.
var innerKeys = map[string]bool{
	"docker": true, "cache": true, "environment": true, "shell": true,
	"builds_dir": true, "cache_dir": true, "clone_url": true, "output_limit": true,
	"pre_get_sources_script": true, "post_get_sources_script": true,
	"pre_build_script": true, "post_build_script": true,
	"feature_flags": true, "custom_build_dir": true, "debug_trace_disabled": true,
	"safe_directory_checkout": true, "clean_git_config": true,
	"prepare_timeout": true, "get_sources_timeout": true, "artifact": true,
	"job_status_final_update_retry_limit": true, "labels": true,
}

// Keys of a [[runners]] entry that registration writes or that only matter
// to gitlab-runner itself; accepted, not used.
var acceptedRunnerKeys = map[string]bool{
	"id": true, "token_obtained_at": true, "token_expires_at": true,
	"request_concurrency": true, "strict_check_interval": true,
	"tls-cert-file": true, "tls-key-file": true,
	"paas_job_trace_watch": true, "paas_keep_resources_for_reuse_seconds": true,
	"heptapod_paas_runner_helper_image": true,
}

func (d *decoder) decodeRunner(i int, prims map[string]toml.Primitive) Runner {
	p := fmt.Sprintf("runners[%d]", i)
	r := Runner{
		Index:                  i,
		UnhealthyRequestsLimit: DefaultUnhealthyRequestsLimit,
		UnhealthyInterval:      DefaultUnhealthyInterval,
		Inner:                  map[string]any{},
		Clever: Clever{
			APIURL:                 "https://api.clever-cloud.com/v2",
			Zone:                   "par",
			DefaultFlavor:          "M",
			DeploymentRepoTimeout:  20,
			DeploymentRepoWaitStep: 2,
			OrgaIDAttribute:        "cc_orga_id",
			OrgaTokenAttribute:     "cc_orga_token",
			AuthUser:               "Jenkins",
			InstanceVariantUUID:    "70d676a0-a775-4dc9-a43d-3121036e8515",
			FlavorContext:          "heptapod-runner",
			AuthScheme:             "token",
		},
	}
	var localDocker map[string]toml.Primitive
	var heptapodImage, hostAlias string
	fields := fieldSet{
		"name":                                 &r.Name,
		"url":                                  &r.URL,
		"token":                                &r.Token,
		"executor":                             &r.Executor,
		"limit":                                &r.Limit,
		"tls-ca-file":                          &r.TLSCAFile,
		"guard_api_token":                      &r.GuardAPIToken,
		"guard_api_token_file":                 &r.GuardAPITokenFile,
		"guard_api_token_env":                  &r.GuardAPITokenEnv,
		"unhealthy_requests_limit":             &r.UnhealthyRequestsLimit,
		"unhealthy_interval":                   &r.UnhealthyInterval,
		"inner_image":                          &r.InnerImage,
		"heptapod_runner_main_image":           &heptapodImage,
		"host":                                 &hostAlias,
		"local_docker":                         &localDocker,
		"cc_api_url":                           &r.Clever.APIURL,
		"cc_zone":                              &r.Clever.Zone,
		"cc_default_flavor":                    &r.Clever.DefaultFlavor,
		"cc_max_flavor":                        &r.Clever.MaxFlavor,
		"cc_deployment_repo_timeout":           &r.Clever.DeploymentRepoTimeout,
		"cc_deployment_repo_wait_step":         &r.Clever.DeploymentRepoWaitStep,
		"cc_multi_tenant":                      &r.Clever.MultiTenant,
		"cc_orga_id":                           &r.Clever.OrgaID,
		"cc_token":                             &r.Clever.Token,
		"cc_gitlab_namespace_attributes_token": &r.Clever.NamespaceAttributesToken,
		"cc_orga_id_attribute":                 &r.Clever.OrgaIDAttribute,
		"cc_orga_token_attribute":              &r.Clever.OrgaTokenAttribute,
		"cc_auth_user":                         &r.Clever.AuthUser,
		"cc_instance_variant_uuid":             &r.Clever.InstanceVariantUUID,
		"cc_flavor_context":                    &r.Clever.FlavorContext,
		"cc_flavor_name_prefix":                &r.Clever.FlavorNamePrefix,
		"cc_extra_env":                         &r.Clever.ExtraEnv,
		"cc_auth_scheme":                       &r.Clever.AuthScheme,
		"cc_token_file":                        &r.Clever.TokenFile,
		"cc_token_env":                         &r.Clever.TokenEnv,
		"cc_gitlab_namespace_attributes_token_file": &r.Clever.AttributesTokenFile,
		"cc_gitlab_namespace_attributes_token_env":  &r.Clever.AttributesTokenEnv,
	}
	d.decodeFields(p, prims, fields, func(k string, prim toml.Primitive) bool {
		switch {
		case innerKeys[k]:
			var v any
			if d.decodeValue(p+"."+k, prim, &v) {
				r.Inner[k] = v
				switch k {
				case "cache":
					d.checkInnerCache(i, p+".cache", v)
				case "docker":
					d.checkInnerDocker(i, p+".docker", v)
				}
			}
			return true
		case acceptedRunnerKeys[k]:
			if k == "token_expires_at" {
				d.checkTokenExpiry(p+"."+k, prim)
			}
			return true
		}
		return false
	})
	if r.InnerImage == "" {
		r.InnerImage = heptapodImage
	} else if heptapodImage != "" {
		d.errKey(p+".heptapod_runner_main_image", "set inner_image or its alias heptapod_runner_main_image, not both")
	}
	if localDocker != nil {
		d.decodeFields(p+".local_docker", localDocker, fieldSet{
			"host":         &r.LocalDocker.Host,
			"network_mode": &r.LocalDocker.NetworkMode,
			"inner_image":  &r.InnerImage,
		}, nil)
	}
	if hostAlias != "" {
		if r.LocalDocker.Host != "" {
			d.errKey(p+".host", "set local_docker.host or its alias host, not both")
		}
		r.LocalDocker.Host = hostAlias
	}
	d.checkRunnerKeys(i, p, &r, sortedKeys(prims))
	if r.Clever.FlavorNamePrefix == "" {
		r.Clever.FlavorNamePrefix = r.Clever.FlavorContext + "-"
	}
	r.Clever.AuthScheme = strings.ToLower(r.Clever.AuthScheme)
	return r
}

// runnerKeysWithPrefix lists the keys of runners[i] starting with prefix.
func (d *decoder) runnerKeysWithPrefix(i int, prefix string) []string {
	if i >= len(d.runners) {
		return nil
	}
	var ks []string
	for _, k := range sortedKeys(d.runners[i]) {
		if strings.HasPrefix(k, prefix) {
			ks = append(ks, k)
		}
	}
	return ks
}

// checkInnerDocker validates [runners.docker] with the parser the inner
// runner uses: invalid values and unknown keys are errors, gitlab-runner
// keys the inner runner does not honour are warnings.
func (d *decoder) checkInnerDocker(i int, p string, v any) {
	m, ok := v.(map[string]any)
	if !ok {
		d.errKey(p, "want a table ([runners.docker])")
		return
	}
	_, probs := ParseDocker(m)
	for _, pr := range probs {
		line := d.loc.line(i, []string{"docker", pr.Key})
		if pr.Warning {
			d.warns = append(d.warns, Warning{File: d.file, Line: line, Key: p + "." + pr.Key, Msg: pr.Msg})
			continue
		}
		d.errs = append(d.errs, &Error{File: d.file, Line: line, Key: p + "." + pr.Key, Msg: pr.Msg})
	}
}

// goTypeNames puts the TOML decoder's Go names of a value's type in TOML's
// words ("the value is string, expected integer", not "int64", "float64",
// "map[string]any").
var goTypeNames = strings.NewReplacer(
	"the value is int64,", "the value is an integer,",
	"the value is float64,", "the value is a float,",
	"the value is string,", "the value is a string,",
	"the value is bool,", "the value is a boolean,",
	"the value is map[string]any,", "the value is a table,",
	"the value is map[string]interface {},", "the value is a table,",
	"the value is []any,", "the value is an array,",
	"the value is []interface {},", "the value is an array,",
	"the value is []map[string]any,", "the value is an array of tables,",
	"the value is time.Time,", "the value is a date-time,",
	", expected slice", ", expected an array",
	", expected map", ", expected a table",
)

// tomlTypeName is a TOML type as the specification names it ("" is a
// table only implied by a sub-table's header, such as [runners.docker]).
func tomlTypeName(typ string) string {
	switch typ {
	case "Hash", "":
		return "a table"
	case "Integer", "Array", "ArrayHash":
		return "an " + strings.ToLower(typ)
	}
	return "a " + strings.ToLower(typ)
}

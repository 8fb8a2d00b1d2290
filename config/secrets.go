package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// resolveSecret fills *dst from key_file (a file holding the secret,
// relative to the configuration's directory) or key_env (the name of an
// environment variable), so that secrets need not sit in the file. At most
// one of key, key_file and key_env may be set.
func (d *decoder) resolveSecret(p, key string, dst *string, file, env string) {
	set := []string{}
	for _, k := range []string{key, key + "_file", key + "_env"} {
		if d.defined(p + "." + k) {
			set = append(set, k)
		}
	}
	if len(set) > 1 {
		d.errKey(p+"."+set[1], fmt.Sprintf("set only one of %s", strings.Join(set, ", ")))
		return
	}
	switch {
	case file != "":
		path := file
		if !filepath.IsAbs(path) {
			path = filepath.Join(filepath.Dir(d.file), path)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			d.errKey(p+"."+key+"_file", fmt.Sprintf("cannot read %s: %v", path, unwrapPathError(err)))
			return
		}
		v := strings.TrimSpace(string(b))
		if v == "" {
			d.errKey(p+"."+key+"_file", fmt.Sprintf("%s is empty", path))
			return
		}
		*dst = v
	case env != "":
		v := strings.TrimSpace(os.Getenv(env))
		if v == "" {
			d.errKey(p+"."+key+"_env", fmt.Sprintf("the environment variable %s is not set or empty", env))
			return
		}
		*dst = v
	case d.defined(p+"."+key+"_file") || d.defined(p+"."+key+"_env"):
		d.errKey(p+"."+set[0], "must not be empty")
	}
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

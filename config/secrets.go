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
		d.warnExposedSecret(p+"."+key+"_file", path)
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

// warnExposedSecret warns when a file holding a secret can be read by
// every user of the machine. A group-readable one is fine: that is how a
// root-owned secret is given to the daemon's group (mode 0640).
func (d *decoder) warnExposedSecret(key, path string) {
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm()&0o004 == 0 {
		return
	}
	d.warns = append(d.warns, Warning{File: d.file, Line: d.lineOfKey(key), Key: key,
		Msg: fmt.Sprintf("%s holds a secret and is readable by every user (mode %04o): chmod 600 %s (or 640, group of the daemon's user)", path, fi.Mode().Perm(), path)})
}

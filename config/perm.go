package config

import (
	"fmt"
	"os"
)

// ExposedTo tells who other than its owner may read the file at path:
// "group", "others", "group and others", or "" when nobody (or when the
// file cannot be looked at). A configuration holds runner tokens.
func ExposedTo(path string) (string, os.FileMode) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", 0
	}
	m := fi.Mode().Perm()
	switch g, o := m&0o040 != 0, m&0o004 != 0; {
	case g && o:
		return "group and others", m
	case g:
		return "group", m
	case o:
		return "others", m
	}
	return "", m
}

// PermissionWarning is the warning to log at start when the configuration
// is readable by every user (mode & 0o004), "" when it is not. A file
// readable by its group only is not warned about: 0640 root:<the daemon's
// group> is the natural systemd setup (ConfigurationDirectory), and the
// same rule as for secret files (secrets.go).
func PermissionWarning(path string) string {
	who, m := ExposedTo(path)
	if m&0o004 == 0 {
		return ""
	}
	return fmt.Sprintf("%s is readable by %s (mode %04o) and holds runner tokens: chmod 600 %s (or 640, group of the daemon's user)", path, who, m, path)
}

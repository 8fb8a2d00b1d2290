// Package logging builds the daemon's zap logger and redacts secrets.
package logging

import (
	"fmt"
	"os"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// New returns a logger writing to stderr. level is debug, info, warn(ing),
// error (case-insensitive); format is text or json.
func New(level, format string) (*zap.Logger, error) {
	log, _, err := NewAtomic(level, format)
	return log, err
}

// NewAtomic is New with the level returned for changing it while the
// logger is used (a configuration reload).
func NewAtomic(level, format string) (*zap.Logger, zap.AtomicLevel, error) {
	l, err := ParseLevel(level)
	if err != nil {
		return nil, zap.AtomicLevel{}, err
	}
	lvl := zap.NewAtomicLevelAt(l)
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.TimeKey = "time"
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	encCfg.EncodeDuration = zapcore.StringDurationEncoder
	var enc zapcore.Encoder
	switch strings.ToLower(format) {
	case "", "text", "runner":
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	case "json":
		enc = zapcore.NewJSONEncoder(encCfg)
	default:
		return nil, zap.AtomicLevel{}, fmt.Errorf("unknown log format %q (want text or json)", format)
	}
	core := zapcore.NewCore(enc, zapcore.Lock(os.Stderr), lvl)
	return zap.New(core), lvl, nil
}

// ParseLevel accepts the level names of gitlab-runner and Python's logging.
func ParseLevel(s string) (zapcore.Level, error) {
	switch strings.ToLower(s) {
	case "", "info":
		return zapcore.InfoLevel, nil
	case "debug":
		return zapcore.DebugLevel, nil
	case "warn", "warning":
		return zapcore.WarnLevel, nil
	case "error", "critical", "fatal", "panic":
		return zapcore.ErrorLevel, nil
	}
	return 0, fmt.Errorf("unknown log level %q (want debug, info, warn or error)", s)
}

// ShortToken keeps enough of a token to tell tokens apart in logs without
// revealing it: the glrt-/glcbt- style prefix plus 8 characters.
func ShortToken(tok string) string {
	prefix := ""
	for _, p := range []string{"glrt-", "glcbt-", "glrtr-", "GR1348941"} {
		if strings.HasPrefix(tok, p) {
			prefix, tok = p, tok[len(p):]
			break
		}
	}
	if len(tok) > 8 {
		tok = tok[:8]
	}
	return prefix + tok
}

// Token is a zap field that logs a shortened token.
func Token(key, tok string) zap.Field { return zap.String(key, ShortToken(tok)) }

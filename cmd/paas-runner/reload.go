package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"gitlab.com/paas-runner/paas-runner/config"
	"gitlab.com/paas-runner/paas-runner/dispatcher"
	"gitlab.com/paas-runner/paas-runner/internal/logging"
)

// reloadCoalesce is how long a burst of file events is gathered into one
// reload (editors write, rename and chmod in a row).
const reloadCoalesce = 250 * time.Millisecond

// reloader re-reads the configuration on SIGHUP and when the file changes,
// and applies what can change live: concurrent, limit, check_interval, the
// tracking rate, log_level. Other changes are reported as needing a
// restart. An invalid file changes nothing.
type reloader struct {
	o     *ops
	opts  *options
	load  config.Options
	d     *dispatcher.Dispatcher
	level zap.AtomicLevel
	log   *zap.Logger

	reloads *prometheus.CounterVec
	hup     chan struct{}
	done    chan struct{} // tests: one value per finished reload
}

func newReloader(o *ops, opts *options, load config.Options, d *dispatcher.Dispatcher, level zap.AtomicLevel, log *zap.Logger) *reloader {
	rl := &reloader{o: o, opts: opts, load: load, d: d, level: level, log: log, hup: make(chan struct{}, 1)}
	rl.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "paas_runner", Name: "config_reloads_total",
		Help: "Configuration reloads, by result: ok, or error (the file was refused and the running configuration kept)."}, []string{"result"})
	rl.reloads.WithLabelValues("ok")
	rl.reloads.WithLabelValues("error")
	return rl
}

// sighup asks for a reload now.
func (rl *reloader) sighup() {
	select {
	case rl.hup <- struct{}{}:
	default:
	}
}

// run watches the configuration file's directory (an editor may replace
// the file) until ctx ends.
func (rl *reloader) run(ctx context.Context) {
	path := rl.o.config().Path
	w, err := fsnotify.NewWatcher()
	var events chan fsnotify.Event
	if err == nil {
		if err = w.Add(filepath.Dir(path)); err == nil {
			events = w.Events
		}
		defer w.Close()
	}
	if err != nil {
		rl.log.Warn("not watching the configuration file; reload with SIGHUP", zap.String("config", path), zap.Error(err))
	}
	var timer <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-rl.hup:
			rl.reload("SIGHUP")
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if filepath.Clean(ev.Name) == filepath.Clean(path) && ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Rename) != 0 {
				timer = time.After(reloadCoalesce)
			}
		case <-timer:
			timer = nil
			rl.reload("file changed")
		}
	}
}

func (rl *reloader) reload(why string) {
	_ = rl.o.reloading(func() error {
		err := rl.apply(why)
		result := "ok"
		if err != nil {
			result = "error"
		}
		rl.reloads.WithLabelValues(result).Inc()
		return err
	})
	if rl.done != nil {
		rl.done <- struct{}{}
	}
}

func (rl *reloader) apply(why string) error {
	cur := rl.o.config()
	cfg, err := config.Load(cur.Path, rl.load)
	if err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			rl.log.Error("configuration reload refused: keeping the running configuration", zap.String("trigger", why), zap.String("error", line))
		}
		return err
	}
	if msg := validateReload(cfg); msg != "" {
		rl.log.Error("configuration reload refused: keeping the running configuration", zap.String("trigger", why), zap.String("error", msg))
		return errors.New(msg)
	}
	for _, k := range restartKeys(cur, cfg) {
		rl.log.Warn("this change needs a restart; the running value is kept", zap.String("key", k))
	}
	if rl.opts.setPollIntvl { // the deprecated flag still wins
		cfg.CheckInterval = rl.opts.pollInterval
	}
	dc := dispatcherConfig(cfg, rl.opts, rl.log)
	t := dispatcher.Tuning{Concurrent: dc.Concurrent, CheckInterval: dc.CheckInterval, TrackingRPS: dc.TrackingRPS, Limits: map[string]int{}}
	kept := *cfg
	kept.Runners = append([]config.Runner(nil), cur.Runners...) // runners change only with a restart
	newByID := map[string]config.Runner{}
	for _, r := range cfg.Runners {
		newByID[r.ID()] = r
	}
	for i := range kept.Runners {
		if n, ok := newByID[kept.Runners[i].ID()]; ok {
			kept.Runners[i].Limit = n.Limit
		}
		t.Limits[kept.Runners[i].ID()] = kept.Runners[i].Limit
	}
	kept.StateFile, kept.ListenAddress = cur.StateFile, cur.ListenAddress
	if err := rl.d.Retune(t); err != nil {
		rl.log.Error("configuration reload refused: keeping the running configuration", zap.Error(err))
		return err
	}
	if rl.opts.logLevel == "" {
		if lvl, err := logging.ParseLevel(cfg.LogLevel); err == nil {
			rl.level.SetLevel(lvl)
		}
	}
	rl.o.mu.Lock()
	rl.o.cfg = &kept
	rl.o.mu.Unlock()
	rl.log.Info("configuration reloaded", zap.String("trigger", why), zap.Int("concurrent", t.Concurrent),
		zap.Duration("check_interval", t.CheckInterval), zap.Float64("tracking_requests_per_second", t.TrackingRPS),
		zap.String("log_level", rl.level.Level().String()))
	return nil
}

func validateReload(cfg *config.Config) string {
	if cfg.Concurrent <= 0 || cfg.CheckInterval <= 0 || cfg.PaasTrackingRequestsPerSecond <= 0 {
		return fmt.Sprintf("%s: concurrent, check_interval and paas_tracking_requests_per_second must be positive", cfg.Path)
	}
	return ""
}

// restartKeys names the changes a reload does not apply.
func restartKeys(cur, next *config.Config) []string {
	var out []string
	if cur.StateFile != next.StateFile {
		out = append(out, "state_file")
	}
	if cur.ListenAddress != next.ListenAddress {
		out = append(out, "listen_address")
	}
	ids := func(c *config.Config) string {
		var s []string
		for _, r := range c.Runners {
			s = append(s, r.ID()+"/"+r.Executor+"/"+r.URL)
		}
		return strings.Join(s, ",")
	}
	if ids(cur) != ids(next) {
		out = append(out, "runners (added, removed, or a token, url or executor changed)")
	}
	return out
}

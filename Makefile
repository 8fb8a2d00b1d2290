# paas-runner build, test and lint. `make test` is what CI runs.
GO          ?= go
PKG         := gitlab.com/paas-runner/paas-runner
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION    ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS     := -s -w -X $(PKG)/internal/version.Version=$(VERSION) -X $(PKG)/internal/version.Revision=$(REVISION)
# staticcheck 2026.2.2 is module version v0.8.2 (the proxy serves semver only)
STATICCHECK_VERSION ?= v0.8.2
GOBIN       ?= $(shell $(GO) env GOPATH)/bin
# make install: PREFIX and DESTDIR as usual; systemd finds units, sysusers
# and tmpfiles snippets under $(PREFIX)/lib for PREFIX /usr and /usr/local.
PREFIX      ?= /usr/local
DESTDIR     ?=
BINDIR      ?= $(PREFIX)/bin
LIBDIR      ?= $(PREFIX)/lib
DOCDIR      ?= $(PREFIX)/share/doc/paas-runner

.PHONY: all build test test-tools lint fmt staticcheck bench clean docker-up image demo install

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/paas-runner ./cmd/paas-runner
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/paas-runner-register ./cmd/paas-runner-register

# All tests, with the race detector. Process-level tests build the binaries
# themselves; Docker tests need an engine, which docker-up provides.
test: docker-up test-tools
	PAAS_RUNNER_REQUIRE_DOCKER=1 $(GO) test -race -count=1 -timeout 20m ./...

# The race detector needs cgo, hence a C compiler: Debian's gcc (and
# libc6-dev), installed as root when missing; else make test stops saying so.
# packaging/'s tests check the unit and snippets with systemd-analyze
# verify, systemd-sysusers and systemd-tmpfiles: Debian's systemd package,
# installed as root when missing (else those tests are skipped).
test-tools:
	@command -v gcc >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "test-tools: installing Debian's gcc (go test -race needs cgo)" >&2; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null; \
	  else echo "test-tools: no C compiler, and go test -race needs cgo: sudo apt-get install gcc" >&2; exit 1; fi; }
	@command -v systemd-analyze >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "test-tools: installing Debian's systemd (systemd-analyze verify)" >&2; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null; \
	  else echo "test-tools: systemd-analyze missing: packaging tests are skipped (sudo apt-get install systemd)" >&2; fi; }

docker-up:
	@./.ci/docker-up.sh

# paas-runner end to end with no GitLab: an embedded development GitLab,
# a sample pipeline, the daemon with local-docker; cleans up after itself.
demo: build docker-up
	$(GO) run ./demo --binary bin/paas-runner

# The default host base image of local-docker (the daemon also builds it
# on first use): paas-runner-host:$(VERSION), from the static binary.
image: build
	./bin/paas-runner host-image

lint: staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GOBIN)/staticcheck ./...

staticcheck:
	@[ -x $(GOBIN)/staticcheck ] || $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

bench:
	./bench/run.sh

# Binaries, the systemd unit (paths rewritten to BINDIR/DOCDIR), the
# sysusers.d and tmpfiles.d snippets, the README and the Grafana dashboard.
install: build
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR)/systemd/system $(DESTDIR)$(LIBDIR)/sysusers.d $(DESTDIR)$(LIBDIR)/tmpfiles.d $(DESTDIR)$(DOCDIR)
	install -m 0755 bin/paas-runner bin/paas-runner-register $(DESTDIR)$(BINDIR)/
	sed -e 's|/usr/local/bin/paas-runner|$(BINDIR)/paas-runner|' -e 's|/usr/local/share/doc/paas-runner|$(DOCDIR)|' \
		packaging/systemd/paas-runner.service > $(DESTDIR)$(LIBDIR)/systemd/system/paas-runner.service
	chmod 0644 $(DESTDIR)$(LIBDIR)/systemd/system/paas-runner.service
	install -m 0644 packaging/sysusers.d/paas-runner.conf $(DESTDIR)$(LIBDIR)/sysusers.d/paas-runner.conf
	install -m 0644 packaging/tmpfiles.d/paas-runner.conf $(DESTDIR)$(LIBDIR)/tmpfiles.d/paas-runner.conf
	install -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	if [ -f packaging/grafana/paas-runner.json ]; then install -m 0644 packaging/grafana/paas-runner.json $(DESTDIR)$(DOCDIR)/grafana-paas-runner.json; fi

clean:
	rm -rf bin

# paas-runner build, test and lint. `make test` is what CI runs.
GO          ?= go
PKG         := gitlab.com/paas-runner/paas-runner
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION    ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS     := -s -w -X $(PKG)/internal/version.Version=$(VERSION) -X $(PKG)/internal/version.Revision=$(REVISION)
STATICCHECK_VERSION ?= 2026.2.2
GOBIN       ?= $(shell $(GO) env GOPATH)/bin

.PHONY: all build test lint fmt staticcheck bench clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/paas-runner ./cmd/paas-runner
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/paas-runner-register ./cmd/paas-runner-register

# All tests, with the race detector. Process-level tests build the binaries
# themselves.
test:
	$(GO) test -race -count=1 -timeout 20m ./...

lint: staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GOBIN)/staticcheck ./...

staticcheck:
	@[ -x $(GOBIN)/staticcheck ] || $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

bench:
	./bench/run.sh

clean:
	rm -rf bin

# bbal: build, demo and tests. `make demo` and `make test` are the two
# commands README.md starts with.

GO        ?= go
NPM       ?= npm
BIN       := bin
MNAME_DIR := tools/mname-backend
FUZZTIME  ?= 200000x

.PHONY: all build demo test npm-deps vet fuzz bench chaos deb scale-test clean

all: build

VERSION   := $(shell git describe --always --dirty 2>/dev/null || echo unknown)
LDFLAGS   := -X github.com/bbal/bbal/cmd/internal/debugapi.version=$(VERSION)

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/bbal ./cmd/bbal
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/balstat ./cmd/balstat
	$(GO) build -o $(BIN)/demo-backend ./tools/demo-backend

# bbal in front of two demo backends on 127.0.0.1:$(DEMO_PORT).
DEMO_PORT ?= 10053
demo: build
	DEMO_PORT=$(DEMO_PORT) tools/demo.sh

# The npm packages of the interoperability tests (node-mname and the
# bunyan CLI), installed from the committed package-lock.json.
npm-deps: $(MNAME_DIR)/node_modules/.package-lock.json

$(MNAME_DIR)/node_modules/.package-lock.json: $(MNAME_DIR)/package-lock.json $(MNAME_DIR)/package.json
	$(NPM) ci --ignore-scripts --no-audit --no-fund --prefix $(MNAME_DIR)

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

# The whole suite, with the race detector: cmd/bbal alone first, as its
# failure-latency tests measure real time (a stopped node-mname hangs in
# real time) and must not share the two cores with the Debian package's
# lintian or the scale-out test's namespaces; then every other package.
test: npm-deps vet
	$(GO) test -race -count=1 ./cmd/bbal
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v '/cmd/bbal$$')

# The scale-out test alone (tools/scale; make test runs it too): three
# bbal hosts behind a BIRD router by BGP and ECMP, each announced by
# ExaBGP's healthcheck while its /readyz says ready, in network
# namespaces. Needs root and the Debian packages bird2, exabgp, curl and
# iproute2; skipped without them.
scale-test:
	$(GO) test -count=1 -v -run '^TestScaleOut$$' ./tools/scale

# bbal against dnsdist and the direct path (needs the Debian packages
# dnsperf and dnsdist); see BENCHMARKS.md. Not part of make test.
BENCH_FLAGS ?=
bench: build npm-deps
	$(GO) run ./tools/bench $(BENCH_FLAGS)

# The chaos test: CHAOS_ROUNDS rounds of SIGKILL, SIGSTOP/SIGCONT,
# unlink-and-restart and a poison query of node-mname and Go backends
# under load (CHAOS_ACTIONS=poison, say, for only those), then the
# slow-reader flood for SLOW_READER. Not part of make test (it runs for
# minutes on the real clock).
CHAOS_ROUNDS ?= 24
SLOW_READER  ?= 2m
chaos: npm-deps
	CHAOS_ROUNDS=$(CHAOS_ROUNDS) $(GO) test -tags chaos -count=1 -timeout 30m -v -run '^TestChaos$$' ./cmd/bbal
	BBAL_SLOW_READER=$(SLOW_READER) $(GO) test -count=1 -timeout 30m -v -run '^TestSlowBackendKeepsMemoryFlat$$' ./cmd/bbal

# Each fuzz target for FUZZTIME (their seed corpora are committed under
# testdata/fuzz, and run with every make test). A count of executions
# (Nx) rather than a duration: Go 1.26's fuzzing coordinator can fail a
# duration's run with a bare "context deadline exceeded" when a worker
# is mid-input at the deadline (golang/go#75804, fixed in Go 1.27), which
# a count does not race.
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecoder$$' -fuzztime $(FUZZTIME) ./protocol
	$(GO) test -run '^$$' -fuzz '^FuzzSession$$' -fuzztime $(FUZZTIME) ./backend
	$(GO) test -run '^$$' -fuzz '^FuzzServfail$$' -fuzztime $(FUZZTIME) ./udpproxy
	$(GO) test -run '^$$' -fuzz '^FuzzAnswer$$' -fuzztime $(FUZZTIME) ./udpproxy/cache

# The Debian package, $(DIST)/bbal_VERSION_ARCH.deb, with dpkg-deb (see
# tools/deb/build.sh; DEB_VERSION=X.Y.Z to choose the version).
DIST ?= dist
deb:
	GO=$(GO) tools/deb/build.sh $(DIST)

clean:
	rm -rf $(BIN) $(DIST)

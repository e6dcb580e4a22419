# tokenbroker's build. `make help` lists the targets. Every tool the build
# needs is pinned below and installed into .bin/ on first use.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
STATICCHECK_VERSION        := v0.8.2

BIN         := $(CURDIR)/.bin
BUF         := $(BIN)/buf
STATICCHECK := $(BIN)/staticcheck
# One stamp per tool and version: changing a pin reinstalls that tool only.
BUF_STAMP                := $(BIN)/.buf-$(BUF_VERSION)
PROTOC_GEN_GO_STAMP      := $(BIN)/.protoc-gen-go-$(PROTOC_GEN_GO_VERSION)
PROTOC_GEN_GO_GRPC_STAMP := $(BIN)/.protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION)
STATICCHECK_STAMP        := $(BIN)/.staticcheck-$(STATICCHECK_VERSION)
TOOL_STAMPS := $(BUF_STAMP) $(PROTOC_GEN_GO_STAMP) $(PROTOC_GEN_GO_GRPC_STAMP) $(STATICCHECK_STAMP)
# Tools are built without symbol tables and DWARF (-s -w): smaller, and
# linked sooner on a cold machine.
GO_INSTALL  := GOBIN=$(BIN) go install -trimpath -ldflags='-s -w'
# Fuzzing is bounded by a count of executions, not a duration: Go 1.26's fuzz
# coordinator can report a spurious "context deadline exceeded" when a
# -fuzztime duration ends (go.dev/issue/75804, fixed in Go 1.27).
FUZZTIME    ?= 500000x
RUN_ARGS    ?=

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: check-go
check-go:
	@command -v go >/dev/null || { echo "error: Go is required (https://go.dev/dl), go 1.26 or newer" >&2; exit 1; }

# buf is big to compile. Where npm is at hand on linux/amd64, the same
# release's prebuilt binary comes from buf's own npm package
# (@bufbuild/buf-linux-x64, checked by npm against the registry's integrity
# hash) in seconds; anywhere else, or if that fails, it is built with
# go install. Either way the binary must say it is $(BUF_VERSION).
$(BUF_STAMP): | check-go
	@mkdir -p $(BIN)
	@if command -v npm >/dev/null && [ "$$(go env GOOS)/$$(go env GOARCH)" = linux/amd64 ] \
		&& npm install --silent --no-audit --no-fund --ignore-scripts --prefix $(BIN)/npm @bufbuild/buf-linux-x64@$(BUF_VERSION:v%=%) \
		&& install -m 0755 $(BIN)/npm/node_modules/@bufbuild/buf-linux-x64/bin/buf $(BUF); then \
		echo "buf $(BUF_VERSION): the release binary from npm (@bufbuild/buf-linux-x64)"; \
	else \
		echo "buf $(BUF_VERSION): building with go install"; \
		$(GO_INSTALL) github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION); \
	fi
	@[ "$$($(BUF) --version)" = "$(BUF_VERSION:v%=%)" ] || { echo "error: $(BUF) is not buf $(BUF_VERSION)" >&2; exit 1; }
	@rm -rf $(BIN)/npm $(BIN)/.buf-* $(BIN)/.tools-*
	@touch $@

$(PROTOC_GEN_GO_STAMP): | check-go
	$(GO_INSTALL) google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	@rm -f $(BIN)/.protoc-gen-go-v*
	@touch $@

$(PROTOC_GEN_GO_GRPC_STAMP): | check-go
	$(GO_INSTALL) google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	@rm -f $(BIN)/.protoc-gen-go-grpc-*
	@touch $@

$(STATICCHECK_STAMP): | check-go
	$(GO_INSTALL) honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	@rm -f $(BIN)/.staticcheck-*
	@touch $@

.PHONY: tools
tools: $(TOOL_STAMPS) ## Install the pinned tools (buf, protoc-gen-go, protoc-gen-go-grpc, staticcheck) into .bin/.

.PHONY: generate
generate: tools ## Regenerate api/ from proto/.
	rm -rf api/tokenbroker
	$(BUF) generate

.PHONY: generate-check
generate-check: tools ## Fail if api/ is not what proto/ generates.
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(BUF) generate --output "$$tmp"; \
	diff -r api/tokenbroker "$$tmp/api/tokenbroker" || { echo "error: api/ is stale; run 'make generate' and commit the result" >&2; exit 1; }

# vet and staticcheck type-check with the build's own settings (static,
# -trimpath), so they reuse what make build compiled instead of compiling
# every package once more (about 45 s on a cold 2-core machine).
STATIC := CGO_ENABLED=0 GOFLAGS=-trimpath

.PHONY: lint
lint: tools ## go vet, gofmt, staticcheck, buf lint and buf format.
	$(STATIC) go vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.bin/*')); \
	if [ -n "$$out" ]; then echo "error: gofmt would change:" >&2; echo "$$out" >&2; exit 1; fi
	$(STATIC) $(STATICCHECK) ./...
	$(BUF) lint
	$(BUF) format --diff --exit-code

.PHONY: build
# Static binaries, built as the image builder builds them (deploy/image), so
# that make test's image test finds every package already compiled.
build: check-go ## Build bin/tokenbroker and bin/tokenbrokerctl (static).
	CGO_ENABLED=0 go build -trimpath -o bin/ ./cmd/...

.PHONY: run
run: check-go ## Run the broker in -dev mode with its embedded token endpoint.
	go run ./cmd/tokenbroker -dev $(RUN_ARGS)

# The parts run one after the other: the tests' timeouts are generous, but
# compiling buf beside them is more load than the heaviest ones (10,000
# watch streams under the race detector) should have to take.
.PHONY: test
test: build lint generate-check race-test fuzz-short deploy-test ## Everything: build, lint, generated-code check, unit, integration and race tests, fuzz seeds, a short fuzz of every target, image and chart tests.

# Every test runs under the race detector; each fuzz target's seed corpus
# (its f.Add inputs and testdata/fuzz) runs as part of it. Fuzzing proper
# is make fuzz. go test's own vet pass is off: make lint runs go vet on
# every package, test files included, with all of vet's analyzers (go test
# runs a subset), and a second pass under -race settings would analyse
# every dependency once more.
.PHONY: race-test
race-test: redis-server ## Only the tests (under the race detector, with the fuzz seeds).
	@command -v "$$(go env CC)" >/dev/null || { echo "error: the race detector needs a C compiler: apt-get install gcc" >&2; exit 1; }
	go test -race -vet=off -count=1 -timeout 10m ./...

# deploy/ is a Go module of its own (go-containerregistry, Helm's SDK and
# the Kubernetes API types stay out of the broker's go.mod). Its tests
# build the image twice and render the chart; no race detector, since they
# test no concurrent code of their own. They are compiled with make
# build's settings (static, -trimpath), like the binaries they put in the
# image, so the standard library and the broker's packages make build
# compiled are reused rather than compiled once more; go test's vet
# subset is off because go vet runs just before, with every analyzer.
.PHONY: deploy-test
deploy-test: check-go ## Only the deploy module's tests: image (entrypoint, user, labels, -version, same digest twice), Dockerfile, Helm chart.
	cd deploy && $(STATIC) go vet ./... && $(STATIC) go test -vet=off -count=1 -timeout 10m ./...

# The image builder is deploy/image (go-containerregistry, pinned in
# deploy/go.mod): no daemon, no base image, the version and times from git
# (SOURCE_DATE_EPOCH overrides the commit time).
.PHONY: image
image: check-go ## Build the OCI image into bin/image/ (oci/ layout and tokenbroker.tar) without Docker; same commit, same digest.
	cd deploy && go run ./image/cmd/build-image -source .. -out ../bin/image

# The Redis tier's tests start a real redis-server. Install Debian's when
# it is absent (as root, or through sudo).
.PHONY: redis-server
redis-server:
	@command -v redis-server >/dev/null || { \
		echo "redis-server not found: installing Debian's redis-server"; \
		sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
		command -v apt-get >/dev/null || { echo "error: the tests need redis-server on PATH (Debian: apt-get install redis-server)" >&2; exit 1; }; \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
			|| { echo "error: could not install redis-server; install it (apt-get install redis-server) and run make test again" >&2; exit 1; }; \
	}
	@command -v redis-server >/dev/null || { echo "error: redis-server is still not on PATH" >&2; exit 1; }

# Each fuzz target runs alone for FUZZTIME executions (go test allows one -fuzz
# target per package run). The targets are read from the test files that go
# list selects for this platform (a top-level func FuzzXxx), so a new one is
# fuzzed without being listed here and finding them compiles nothing. vet
# runs in make lint, with every analyzer, not once more per fuzz run.
FUZZ_FILES := go list -f '{{$$p := .ImportPath}}{{range .TestGoFiles}}{{$$p}} {{$$.Dir}}/{{.}}{{"\n"}}{{end}}{{range .XTestGoFiles}}{{$$p}} {{$$.Dir}}/{{.}}{{"\n"}}{{end}}' ./...

.PHONY: fuzz
fuzz: check-go ## Fuzz every target in turn (FUZZTIME=500000x executions each; FUZZTIME=50000x for a short run).
	@targets=$$($(FUZZ_FILES) | awk 'NF == 2 { while ((getline line < $$2) > 0) if (match(line, /^func Fuzz[A-Za-z0-9_]*\(/)) print $$1 ":" substr(line, 6, RLENGTH - 6); close($$2) }'); \
	[ -n "$$targets" ] || { echo "error: no fuzz targets found" >&2; exit 1; }; \
	for t in $$targets; do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
		go test -vet=off -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) "$$pkg"; \
	done

# make test fuzzes every target briefly, so that a target that no longer
# runs under the fuzzing engine fails here, not in a long run later.
FUZZTIME_SHORT ?= 3000x

.PHONY: fuzz-short
fuzz-short: check-go ## Fuzz every target briefly (FUZZTIME_SHORT=3000x executions each); part of make test.
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(FUZZTIME_SHORT)

.PHONY: bench
bench: check-go redis-server ## Run the benchmarks (side by side with their baselines).
	go test -run '^$$' -bench . -benchmem -count 1 -timeout 20m ./...

.PHONY: clean
clean: ## Remove build output and installed tools.
	rm -rf bin .bin

# tokenbroker's build. `make help` lists the targets. Every tool the build
# needs is pinned below and installed into .bin/ on first use.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2

BIN         := $(CURDIR)/.bin
TOOLS_STAMP := $(BIN)/.tools-$(BUF_VERSION)-$(PROTOC_GEN_GO_VERSION)-$(PROTOC_GEN_GO_GRPC_VERSION)
BUF         := $(BIN)/buf
# Fuzzing is bounded by a count of executions, not a duration: Go 1.26's fuzz
# coordinator can report a spurious "context deadline exceeded" when a
# -fuzztime duration ends (go.dev/issue/75804, fixed in Go 1.27).
FUZZTIME    ?= 50000x
RUN_ARGS    ?=

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: check-go
check-go:
	@command -v go >/dev/null || { echo "error: Go is required (https://go.dev/dl), go 1.26 or newer" >&2; exit 1; }

$(TOOLS_STAMP): | check-go
	@mkdir -p $(BIN)
	GOBIN=$(BIN) go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	GOBIN=$(BIN) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(BIN) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	@rm -f $(BIN)/.tools-*
	@touch $@

.PHONY: tools
tools: $(TOOLS_STAMP) ## Install the pinned tools (buf, protoc-gen-go, protoc-gen-go-grpc) into .bin/.

.PHONY: generate
generate: tools ## Regenerate api/ from proto/.
	rm -rf api/tokenbroker
	$(BUF) generate

.PHONY: generate-check
generate-check: tools ## Fail if api/ is not what proto/ generates.
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(BUF) generate --output "$$tmp"; \
	diff -r api/tokenbroker "$$tmp/api/tokenbroker" || { echo "error: api/ is stale; run 'make generate' and commit the result" >&2; exit 1; }

.PHONY: lint
lint: tools ## go vet, gofmt, buf lint and buf format.
	go vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.bin/*')); \
	if [ -n "$$out" ]; then echo "error: gofmt would change:" >&2; echo "$$out" >&2; exit 1; fi
	$(BUF) lint
	$(BUF) format --diff --exit-code

.PHONY: build
build: check-go ## Build bin/tokenbroker and bin/tokenbrokerctl.
	go build -o bin/ ./cmd/...

.PHONY: run
run: check-go ## Run the broker in -dev mode with its embedded token endpoint.
	go run ./cmd/tokenbroker -dev $(RUN_ARGS)

.PHONY: test
test: build lint generate-check redis-server ## Everything: build, lint, generated-code check, unit, integration, race and fuzz tests.
	@command -v "$$(go env CC)" >/dev/null || { echo "error: the race detector needs a C compiler: apt-get install gcc" >&2; exit 1; }
	go test -race -count=1 -timeout 10m ./...
	$(MAKE) --no-print-directory fuzz

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
# target per package run).
FUZZ_TARGETS := \
	./internal/upstream:FuzzParseTokenResponse \
	./internal/server:FuzzToBrokerRequest \
	./internal/config:FuzzLoad \
	./internal/access:FuzzPolicyAuthorize \
	./internal/shared:FuzzHandle \
	./internal/httpapi:FuzzTokenRequest \
	./internal/verifier:FuzzParseJWT

.PHONY: fuzz
fuzz: check-go ## Run every fuzz target briefly (FUZZTIME=50000x executions each).
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
		go test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) "$$pkg"; \
	done

.PHONY: bench
bench: check-go redis-server ## Run the benchmarks (side by side with their baselines).
	go test -run '^$$' -bench . -benchmem -count 1 -timeout 20m ./...

.PHONY: clean
clean: ## Remove build output and installed tools.
	rm -rf bin .bin

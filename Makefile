# Kith — every set-up step lives here so that a fresh machine needs only `make test` / `make bench`.
SHELL := /bin/bash
.DEFAULT_GOAL := test

# Debian packages the build links against (system library targets) and the tools make targets use.
APT_PACKAGES := liblmdb-dev libssl-dev pkg-config python3
SWIFT ?= swift
BENCH_CUSTOMERS ?= 100000
BENCH_EVENTS ?= 1000000
BENCH_DIR := Benchmarks/.work

.PHONY: deps build test bench clean

# Install what is missing. As root: apt-get. Otherwise: say exactly what to install and stop.
deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	  else \
	    echo "error: missing Debian packages:$$missing" >&2; \
	    echo "run: sudo apt-get update && sudo apt-get install -y$$missing" >&2; \
	    exit 1; \
	  fi; \
	fi
	@command -v $(SWIFT) >/dev/null || { echo "error: swift (6.x) not found on PATH" >&2; exit 1; }

build: deps
	$(SWIFT) build

test: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --parallel

# Benchmarks run a release build against the deterministic workload (generated once, cached).
bench: deps
	$(SWIFT) build -c release --product kith-bench
	@mkdir -p $(BENCH_DIR)
	@f=$(BENCH_DIR)/workload-$(BENCH_CUSTOMERS)-$(BENCH_EVENTS).jsonl; \
	if [ ! -s $$f ]; then \
	  echo "generating workload ($(BENCH_CUSTOMERS) customers, $(BENCH_EVENTS) events) ..." >&2; \
	  python3 ../shared/workload/generate.py --customers $(BENCH_CUSTOMERS) --events $(BENCH_EVENTS) --out $$f.tmp && mv $$f.tmp $$f; \
	fi; \
	.build/release/kith-bench --workload $$f --data-dir $(BENCH_DIR)/lmdb

clean:
	rm -rf .build $(BENCH_DIR)

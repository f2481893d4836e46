# Kith — every set-up step lives here so that a fresh machine needs only `make test` / `make bench`.
SHELL := /bin/bash
.DEFAULT_GOAL := test

# Debian packages the build links against (system library targets) and the tools make targets use.
APT_PACKAGES := liblmdb-dev libssl-dev zlib1g-dev pkg-config python3 faketime zsh curl
SWIFT ?= swift
BENCH_CUSTOMERS ?= 100000
BENCH_EVENTS ?= 1000000
BENCH_DIR := Benchmarks/.work
HTTP_BENCH_SECONDS ?= 10

FUZZ_SECONDS ?= 60
FUZZ_HARNESSES := json message binary http frame identifier

DEMO_WRITE_KEY ?= demo-write-key
DEMO_TOKEN ?= demo-token

SIM_SEEDS ?= 5000
CLUSTER ?= local-3

.PHONY: deps build test lint format bench bench-peers schemathesis fuzz fuzz-long fuzz-run run clean simulate cluster failure-detection kill-loop

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
	@# Segment's own Python library, for the compatibility test (from PyPI).
	@python3 -c "import segment.analytics" 2>/dev/null || python3 -m pip install -q segment-analytics-python 2>&1 | grep -v "^WARNING: Running pip as" || true
	@python3 -c "import segment.analytics" 2>/dev/null || { echo "error: could not install segment-analytics-python (pip)" >&2; exit 1; }

build: deps
	$(SWIFT) build

# The deterministic cluster simulation over many seeds (CI runs 200 inside `make test`).
# One failing seed replays with: KITH_SIM_SEED=<n> swift test --filter KithSimulationTests
simulate: deps
	$(SWIFT) build --build-tests
	KITH_SIM_SEEDS=$(SIM_SEEDS) $(SWIFT) test --skip-build --filter KithSimulationTests

# The write-ahead log under kill -9: KILL_CYCLES cycles (500 by default; `make test` runs 50) of a
# node killed at a random moment while three clients write; nothing acknowledged may be lost.
KILL_CYCLES ?= 500
kill-loop: deps
	$(SWIFT) build --build-tests
	$(SWIFT) build --product kith
	KITH_KILL_CYCLES=$(KILL_CYCLES) KITH_KILL_SEED=$$(date +%s) $(SWIFT) test --skip-build --filter noAcknowledgedMessageIsLostAcrossFiftyKills

# Failure detection and rejoin of three real nodes (stop/continue trials, and as root a two-sided
# partition through a network namespace; several minutes).
failure-detection: deps
	$(SWIFT) build -c release --product kith
	python3 Benchmarks/scripts/failure-detection.py --kith .build/release/kith $$([ "$$(id -u)" = 0 ] && echo --netns)

# Every node of cluster-configs/$(CLUSTER) (local-3 or edge-site) on this machine, until Ctrl-C.
cluster: deps
	$(SWIFT) build -c release --product kith
	cluster-configs/start.sh cluster-configs/$(CLUSTER)

test: deps lint
	@# The alerting rules, checked and unit-tested when promtool is installed (Debian's prometheus).
	@if command -v promtool >/dev/null; then \
	  promtool check rules docs/operations/kith-alerts.yml && (cd docs/operations && promtool test rules kith-alerts.test.yml) || exit 1; \
	else echo "note: promtool not installed; alerting rules not checked (apt-get install prometheus)" >&2; fi
	@# The OpenAPI description is valid OpenAPI 3.1 (openapi-spec-validator, from PyPI); a test
	@# checks that it and the route table name the same routes.
	@python3 -c 'import openapi_spec_validator' 2>/dev/null || python3 -m pip install --quiet openapi-spec-validator
	python3 -c 'from openapi_spec_validator import validate; from openapi_spec_validator.readers import read_from_filename; validate(read_from_filename("docs/openapi.yaml")[0])'
	$(SWIFT) build --build-tests
	@# Replay the committed fuzz corpora (seeds and crash reproducers) through every harness.
	@for h in $(FUZZ_HARNESSES); do .build/debug/kith-fuzz $$h Tests/FuzzCorpus/$$h || exit 1; done
	$(SWIFT) test --skip-build --parallel
	@# The contract against a live node: a bounded Schemathesis run (`make schemathesis` runs more).
	Tests/Contract/schemathesis.sh .build/debug/kith 5

# Schemathesis (PyPI) against a live node started and stopped by the script (docs/openapi.yaml).
SCHEMATHESIS_EXAMPLES ?= 100
schemathesis: deps
	$(SWIFT) build --product kith
	Tests/Contract/schemathesis.sh .build/debug/kith $(SCHEMATHESIS_EXAMPLES)

# The toolchain's formatter, with the repository's .swift-format: `make format` fixes what it finds.
# The API decides every answer without sockets, threads or clocks of its own (docs/architecture.md);
# only its log lines carry the wall time they were written at.
lint:
	$(SWIFT) format lint --strict --recursive Sources Tests Benchmarks Package.swift
	@if grep -rnE '^import (KithNet|Dispatch|Glibc|CLinux)|DispatchQueue|DispatchTime|Thread[.( ]|pthread_|Date\(\)' --exclude=Log.swift Sources/KithAPI; then \
	  echo "Sources/KithAPI must not use sockets, threads or clocks: take them from the node (Services.swift)"; exit 1; fi

format:
	$(SWIFT) format format --in-place --recursive Sources Tests Benchmarks Package.swift

# libFuzzer with AddressSanitizer, FUZZ_SECONDS per harness, from the committed seeds. A crash
# leaves its input in .build-fuzz/artifacts/: copy it into Tests/FuzzCorpus/<harness>/ with the fix.
fuzz: deps
	@$(MAKE) --no-print-directory fuzz-run FUZZ_LIMIT=-max_total_time=$(FUZZ_SECONDS) FUZZ_WHAT="for $(FUZZ_SECONDS) s"

# Each harness for FUZZ_RUNS executions (10 million by default; hours in all on two cores).
FUZZ_RUNS ?= 10000000
fuzz-long: deps
	@$(MAKE) --no-print-directory fuzz-run FUZZ_LIMIT=-runs=$(FUZZ_RUNS) FUZZ_WHAT="for $(FUZZ_RUNS) runs"

fuzz-run:
	$(SWIFT) build -c release --product kith-fuzz --scratch-path .build-fuzz \
	  -Xswiftc -sanitize=fuzzer,address -Xcc -fsanitize=fuzzer-no-link,address
	@mkdir -p .build-fuzz/artifacts
	@for h in $(FUZZ_HARNESSES); do \
	  mkdir -p .build-fuzz/corpus/$$h && cp -n Tests/FuzzCorpus/$$h/* .build-fuzz/corpus/$$h/ 2>/dev/null; \
	  echo "fuzzing $$h $(FUZZ_WHAT)"; \
	  SWIFT_BACKTRACE=enable=no .build-fuzz/release/kith-fuzz $$h $(FUZZ_LIMIT) \
	    -artifact_prefix=.build-fuzz/artifacts/$$h- -print_final_stats=1 .build-fuzz/corpus/$$h 2>&1 \
	    | grep -E "^(Done|stat::number_of_executed_units|stat::average_exec_per_sec)|ERROR|SUMMARY" ; \
	  test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	done

# One node from cluster-configs/single-node.json, data under ./data/, stopped with Ctrl-C.
run: deps
	$(SWIFT) build -c release --product kith
	@mkdir -p data
	@echo "demo write key: $(DEMO_WRITE_KEY)   demo token: $(DEMO_TOKEN)"
	@echo "try: curl -u $(DEMO_WRITE_KEY): -d '{\"userId\":\"u-1\",\"traits\":{\"name\":\"Ana\"}}' http://127.0.0.1:7080/v1/identify"
	@echo "     curl -H 'Authorization: Bearer $(DEMO_TOKEN)' 'http://127.0.0.1:7080/v1/profiles/user_id:u-1?purpose=support'"
	.build/release/kith serve --config cluster-configs/single-node.json --write-key $(DEMO_WRITE_KEY) --token $(DEMO_TOKEN)

# Benchmarks run a release build against the deterministic workload (generated once, cached).
# wrk drives the HTTP reads and nginx gives the ceiling beside them (both Debian packages).
BENCH_APT_PACKAGES := wrk nginx-light

bench: deps
	@missing=""; for p in $(BENCH_APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = "0" ]; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || echo "note: could not install$$missing" >&2; \
	elif [ -n "$$missing" ]; then echo "note: install$$missing for the wrk and nginx figures" >&2; fi
	$(SWIFT) build -c release --product kith-bench
	@mkdir -p $(BENCH_DIR)
	@f=$(BENCH_DIR)/workload-$(BENCH_CUSTOMERS)-$(BENCH_EVENTS).jsonl; \
	if [ ! -s $$f ]; then \
	  echo "generating workload ($(BENCH_CUSTOMERS) customers, $(BENCH_EVENTS) events) ..." >&2; \
	  python3 Benchmarks/scripts/generate-workload.py --customers $(BENCH_CUSTOMERS) --events $(BENCH_EVENTS) --out $$f.tmp && mv $$f.tmp $$f; \
	fi; \
	.build/release/kith-bench --workload $$f --data-dir $(BENCH_DIR)/lmdb; \
	.build/release/kith-bench --lmdb-ceiling $(BENCH_DIR)/ceiling --data-dir $(BENCH_DIR)/lmdb --read-seconds 3; \
	$(SWIFT) build -c release --product kith >/dev/null && \
	.build/release/kith-bench --workload $$f --http .build/release/kith --seconds $(HTTP_BENCH_SECONDS); \
	.build/release/kith-bench --cluster .build/release/kith; \
	.build/release/kith-bench --catch-up $(BENCH_DIR)/catch-up --customers 2000; \
	y=$(BENCH_DIR)/year-5000-365000.jsonl; \
	if [ ! -s $$y ]; then \
	  echo "generating a year of messages (5000 customers, 10 % churn a day) ..." >&2; \
	  python3 Benchmarks/scripts/generate-workload.py --customers 5000 --events 365000 --interval-ms 86400 --churn-per-day 0.1 --out $$y.tmp && mv $$y.tmp $$y; \
	fi; \
	.build/release/kith-bench --year $$y --data-dir $(BENCH_DIR)/year --batch 10

# Kith beside PostgreSQL and nginx in one run (issue 25's shapes; Benchmarks/KithBench/PeersBench.swift),
# with each shape's CPU per operation (cpu.SHAPE.server_us / client_us / busy_cores).
PEERS_APT_PACKAGES := wrk nginx-light postgresql
PEERS_BENCH_SECONDS ?= 5
PEERS_BENCH_ROUNDS ?= 3

bench-peers: deps
	@missing=""; for p in $(PEERS_APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = "0" ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) || echo "note: could not install$$missing" >&2; \
	elif [ -n "$$missing" ]; then echo "note: install$$missing first" >&2; fi
	$(SWIFT) build -c release --product kith-bench
	$(SWIFT) build -c release --product kith
	@mkdir -p $(BENCH_DIR)
	@f=$(BENCH_DIR)/workload-20000-200000.jsonl; \
	if [ ! -s $$f ]; then \
	  python3 Benchmarks/scripts/generate-workload.py --customers 20000 --events 200000 --out $$f.tmp && mv $$f.tmp $$f; \
	fi; \
	.build/release/kith-bench --vs-postgres .build/release/kith --workload $$f --seconds $(PEERS_BENCH_SECONDS) --rounds $(PEERS_BENCH_ROUNDS)

clean:
	rm -rf .build .build-fuzz $(BENCH_DIR)

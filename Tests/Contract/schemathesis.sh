#!/usr/bin/env bash
# Schemathesis (from PyPI) against a live node started here, from docs/openapi.yaml: no answer
# may be a 5xx, and none may violate the description. Three passes, one per credential: the
# admin token for everything but ingest, the privacy token for the profile routes, and the write
# key for ingest. The backup route is left out (it writes directories on the node's machine).
#
#   Tests/Contract/schemathesis.sh KITH_BINARY [MAX_EXAMPLES] [SEED]
#
# `make schemathesis` runs it with 100 examples an operation; `make test` with 5.
set -euo pipefail
kith=${1:?usage: schemathesis.sh KITH_BINARY [MAX_EXAMPLES] [SEED]}
examples=${2:-100}
seed=${3:-1}
python3 -c 'import schemathesis' 2>/dev/null || python3 -m pip install --quiet schemathesis
directory=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$kith" serve --data-dir "$directory/data" --http "127.0.0.1:$port" --write-key wk --token tk --privacy-token ptk \
  >"$directory/out" 2>"$directory/node.log" &
node=$!
# Stop the node this script started, by its pid, whatever happens.
trap 'kill "$node" 2>/dev/null; wait "$node" 2>/dev/null; rm -rf "$directory"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
curl -sf -u wk: -d '{"userId":"u-1","traits":{"name":"Ana","email":"ana@example.com"},"messageId":"st-1"}' \
  "http://127.0.0.1:$port/v1/identify" >/dev/null
common=(docs/openapi.yaml --url "http://127.0.0.1:$port" --checks not_a_server_error,response_schema_conformance
  --max-examples "$examples" --seed "$seed" --exclude-path /v1/admin/backup)
# The feed's long poll waits up to a minute for news that never comes here: its pass fixes
# `wait` at 0 (every other parameter is generated).
cat >"$directory/feed.toml" <<'TOML'
[[operations]]
include-path = "/v1/changes"
parameters = { wait = 0 }
TOML
st run "${common[@]}" --exclude-tag ingest --exclude-tag feed -H "Authorization: Bearer tk"
# Subscriptions are left out: a fuzzed url would have the node deliver to hosts the fuzzer made
# up (beyond loopback). Their routes are checked in process (WebhookAPITests, NodeAPITests).
st --config-file "$directory/feed.toml" run "${common[@]}" --include-tag feed --exclude-path-regex '^/v1/subscriptions' \
  -H "Authorization: Bearer tk"
st run "${common[@]}" --include-tag profiles -H "Authorization: Bearer ptk"
st run "${common[@]}" --include-tag ingest --auth wk:

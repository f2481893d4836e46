#!/usr/bin/env bash
# Starts every node of a cluster configuration folder on this machine and stops them all on
# Ctrl-C: `cluster-configs/start.sh cluster-configs/local-3` (or `make cluster CLUSTER=local-3`).
# Creates the shared cluster key on first use; the nodes create their shared forget-key secret.
set -euo pipefail
folder=${1:?usage: start.sh <cluster-configs/NAME>}
kith=${KITH:-.build/release/kith}
name=$(basename "$folder")
mkdir -p "data/$name"
key="data/$name/cluster.key"
if [ ! -f "$key" ]; then
  umask 077
  echo "1 $(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" > "$key"
fi
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait' INT TERM
for config in "$folder"/*.json; do
  "$kith" serve --config "$config" --write-key "${KITH_DEMO_WRITE_KEY:-demo-write-key}" --token "${KITH_DEMO_TOKEN:-demo-token}" \
    2> "data/$name/$(basename "$config" .json).log" &
  pids+=($!)
done
echo "started ${#pids[@]} nodes of $name; logs in data/$name/; Ctrl-C stops them"
wait

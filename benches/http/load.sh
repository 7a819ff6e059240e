#!/usr/bin/env bash
# Load figures for the HTTP API on loopback (issue 16): work-list reads and completions with the
# memory store, measured with wrk (installed from Debian's packages when missing).
#
#   benches/http/load.sh [SECONDS]
#   STORE=sqlite:target/http-load.db benches/http/load.sh [SECONDS]   # a fresh SQLite file
#
# Builds the release binary with the server feature, serves benches/http/desk.yaml with the
# memory store, and runs wrk (2 threads, 32 connections): reads of a 20-task work list, starts,
# then completions of the started tickets. Prints wrk's figures (requests/s, latency percentiles).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
command -v wrk > /dev/null || apt-get install -y wrk > /dev/null
cargo build --release --bin procflow --features server
port=${PORT:-18080}
base=http://127.0.0.1:$port
store=${STORE:-memory}
case "$store" in sqlite:*) rm -f "${store#sqlite:}" "${store#sqlite:}"-wal "${store#sqlite:}"-shm ;; esac
target/release/procflow serve --store "$store" --listen 127.0.0.1:$port \
  --org process-defs/org/province.yaml --tokens process-defs/org/tokens.yaml benches/http/desk.yaml 2> target/http-load-server.log &
pid=$!
trap 'kill $pid' EXIT
for _ in $(seq 100); do curl -sf $base/openapi.json > /dev/null && break; sleep 0.1; done
auth="Authorization: Bearer agent-wang-demo"
for _ in $(seq 20); do
  curl -sf -X POST -H "$auth" -H 'Content-Type: application/json' -d '{}' $base/api/processes/desk/instances > /dev/null
done
echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); store $store"
echo "== work-list reads (20 open tasks), ${secs} s"
wrk -t2 -c32 -d${secs}s --latency -H "$auth" "$base/api/work?scope=groups"
echo "== starts, ${secs} s"
wrk -t2 -c32 -d${secs}s --latency -s benches/http/start.lua "$base/api/processes/desk/instances"
tasks=$(mktemp)
curl -sf -H "$auth" "$base/api/work?scope=groups" | python3 -c 'import json,sys; [print(r["task"]) for r in json.load(sys.stdin)]' > "$tasks"
n=$(wc -l < "$tasks")
echo "== completions of $n open tasks, $((secs / 2)) s (a repeated id answers 409: see Non-2xx)"
TASKS=$tasks THREADS=2 wrk -t2 -c32 -d$((secs / 2))s --latency -s benches/http/complete.lua "$base"
rm -f "$tasks"

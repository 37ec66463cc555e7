#!/usr/bin/env bash
# Runs the load generator against the reference Node.js `ws` server (server.js), pinned to one
# core like the reference numbers of issue 3, and prints the generator's JSON line.
#
#   benches/baseline/run.sh --rooms 50 --clients-per-room 20 --rate 2 --duration 15
#   benches/baseline/run.sh --idle 5000
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[[ -x $root/target/release/loadgen ]] || {
    echo "build first: cargo build --release -p benches --bins" >&2
    exit 2
}
[[ -d $here/node_modules/ws ]] || (cd "$here" && npm ci --no-audit --no-fund >/dev/null)
dir=${CHAT_BENCH_DIR:-$root/target/chat-bench}/node-ws-$(date +%s%N)
mkdir -p "$dir"
secret=$(awk -F'"' '/^jwt_secret/ { print $2; exit }' "$root/cluster.toml")
printf '[web]\njwt_secret = "%s"\n\n[[node]]\nid = "n1"\nhttp_addr = "127.0.0.1:8101"\n' \
    "$secret" >"$dir/cluster.toml"
taskset -c "${CHAT_BENCH_SERVER_CPUS:-0}" node "$here/server.js" 8101 &
server=$!
trap 'kill $server 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    curl -sf http://127.0.0.1:8101/readyz >/dev/null && break
    sleep 0.1
done
taskset -c "${CHAT_BENCH_LOAD_CPUS:-1}" "$root/target/release/loadgen" --config "$dir/cluster.toml" --pids "$server" "$@"

#!/usr/bin/env bash
# The chat table in one command: the three workloads of issue 17 against ActorHub (one node, and
# three nodes on the same core), an older ActorHub build when one is named, and the Node.js
# reference server, in the same run, server pinned to CPU 0 and generator to CPU 1.
#
#   benches/compare.sh [FSYNC] [DURATION_S]           # FSYNC true|false (default false), 15 s
#   COMPARE_OLD_NODE=/path/node COMPARE_OLD_CONFIG=/path/cluster.toml benches/compare.sh false
#
# Prints one JSON line per run (the generator's, with "setup" and "workload" added), then a
# table: CPU s per 10⁶ deliveries, p50/p99/p999/max ms, lost/duplicated/out of order, and the
# node-log objects the nodes wrote per 1 000 posts (ActorHub rows).
# Build first: cargo build --release -p node -p benches --bins
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
fsync=${1:-false}
duration=${2:-15}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

workloads=("10 10 5" "50 20 2" "1 200 1")
run() { # run SETUP WORKLOAD COMMAND...: appends the command's JSON lines, tagged, to $out
    local setup=$1 workload=$2
    shift 2
    "$@" 2>/dev/null | jq -c --arg setup "$setup" --arg workload "$workload" \
        '. + {setup: $setup, workload: $workload}' | tee -a "$out"
}
for workload in "${workloads[@]}"; do
    read -r rooms clients rate <<<"$workload"
    args=(--rooms "$rooms" --clients-per-room "$clients" --rate "$rate" --duration "$duration")
    label="$rooms × $clients × $rate/s"
    run "ActorHub, 1 node" "$label" "$here/chat.sh" 1 "$fsync" "${args[@]}"
    run "ActorHub, 3 nodes" "$label" "$here/chat.sh" 3 "$fsync" "${args[@]}"
    if [[ -n ${COMPARE_OLD_NODE:-} ]]; then
        CHAT_BENCH_NODE=$COMPARE_OLD_NODE CHAT_BENCH_CONFIG=${COMPARE_OLD_CONFIG:-} \
            run "older build, 1 node" "$label" "$here/chat.sh" 1 "$fsync" "${args[@]}"
    fi
    run "Node.js ws" "$label" "$here/baseline/run.sh" "${args[@]}"
done

# One row per run: the generator's line, plus the journal lines chat.sh printed after it.
python3 - "$out" <<'EOF'
import json, sys
rows, current = [], None
for line in open(sys.argv[1]):
    record = json.loads(line)
    if record.get("mode") == "traffic":
        current = dict(record, objects=0)
        rows.append(current)
    elif "journal_objects_written" in record and current is not None:
        current["objects"] += record["journal_objects_written"]
print("| workload | setup | CPU s / 10⁶ | p50 | p99 | p999 | max ms | lost/dup/ooo | objects / 1000 posts |")
print("|---|---|---|---|---|---|---|---|---|")
for row in rows:
    latency = row["latency_ms"]
    objects = f'{row["objects"] * 1000 / row["acked"]:.1f}' if row["setup"].startswith(("ActorHub", "older")) and row["acked"] else "–"
    print(f'| {row["workload"]} | {row["setup"]} | {row["cpu_seconds_per_million_deliveries"]:.1f} '
          f'| {latency["p50"]:.2f} | {latency["p99"]:.2f} | {latency["p999"]:.2f} | {latency["max"]:.1f} '
          f'| {row["lost"]}/{row["duplicates"]}/{row["out_of_order"]} | {objects} |')
EOF

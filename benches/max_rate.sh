#!/usr/bin/env bash
# The highest sustained chat rate one server takes at a p99 send → receive within a bound:
# ActorHub (one node, every message journaled) and the Node.js reference server, in the same run,
# server pinned to CPU 0 and generator to CPU 1 (as in chat.sh).
#
#   benches/max_rate.sh [ROOMS] [CLIENTS_PER_ROOM] [DURATION_S] [P99_MS] [FSYNC]
#   benches/max_rate.sh 10 10 10 10 false        # the defaults
#
# For each server the rate per client doubles from 5 msg/s until a run misses (p99 above P99_MS,
# or a message lost, duplicated or out of order), then bisects twice between the last rate that
# held and the first that missed. Prints every run as a JSON line (the generator's, with "setup"
# added) and then the highest rate that held per server, as messages per second into the rooms
# and deliveries per second out of them. Set CHAT_BENCH_FS=ext4 as for chat.sh.
# Build first: cargo build --release -p node -p benches --bins
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
rooms=${1:-10}
clients=${2:-10}
duration=${3:-10}
bound=${4:-10}
fsync=${5:-false}

# run SETUP RATE: one run; prints its JSON line, returns 0 if it held.
run() {
    local setup=$1 rate=$2 line
    local args=(--rooms "$rooms" --clients-per-room "$clients" --rate "$rate" --duration "$duration")
    if [[ $setup == ActorHub ]]; then
        line=$("$here/chat.sh" 1 "$fsync" "${args[@]}" 2>/dev/null | grep '"mode":"traffic"')
    else
        line=$("$here/baseline/run.sh" "${args[@]}" 2>/dev/null | grep '"mode":"traffic"')
    fi
    jq -c --arg setup "$setup" '. + {setup: $setup}' <<<"$line" >&2
    jq -e --argjson bound "$bound" \
        '.latency_ms.p99 <= $bound and .lost == 0 and .duplicates == 0 and .out_of_order == 0' \
        <<<"$line" >/dev/null
}

for setup in ActorHub Node.js; do
    held=0 missed=0 rate=5
    while ((rate <= 5120)); do
        if run "$setup" "$rate"; then held=$rate rate=$((rate * 2)); else missed=$rate; break; fi
    done
    for _ in 1 2; do
        ((missed > 0 && missed - held > 1)) || break
        middle=$(((held + missed) / 2))
        if run "$setup" "$middle"; then held=$middle; else missed=$middle; fi
    done
    printf '%s: highest rate that held (p99 <= %s ms): %s msg/s per client = %s posts/s, %s deliveries/s (first miss: %s msg/s per client)\n' \
        "$setup" "$bound" "$held" $((held * rooms * clients)) $((held * rooms * clients * clients)) \
        "${missed:-none}"
done

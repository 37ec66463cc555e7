#!/usr/bin/env bash
# Chat load benchmark: starts N release nodes from a throw-away copy of cluster.toml, runs the
# load generator against them with the given arguments, prints its JSON line, stops the nodes.
#
#   benches/chat.sh NODES FSYNC [loadgen arguments...]
#   benches/chat.sh 3 true --rooms 50 --clients-per-room 20 --rate 2 --duration 15
#   benches/chat.sh 1 true --idle 5000
#
# FSYNC (true|false) is `storage.fsync`. The data lives in a fresh directory under
# ${CHAT_BENCH_DIR:-target/chat-bench}; nothing is deleted (deleting many files just before a run
# makes ext4 without a journal slow at creating new ones, which would skew the next run).
# The per-connection limits are raised so the generator, not the limits, sets the pace.
# CHAT_BENCH_NODE names another `node` binary (an older build, for a before/after comparison);
# CHAT_BENCH_CONFIG another cluster.toml to take the shared sections from (that build's own,
# since a node refuses keys it does not know).
# CHAT_BENCH_STORE_LATENCY_MS adds that much to every object-store request (S3's first-byte
# latency, on a local directory); CHAT_BENCH_FLUSH_MS sets `journal.flush_interval_ms`.
# CHAT_BENCH_FS=ext4 puts that directory on a journaled ext4 file system in a loop-mounted image
# (target/chat-bench-ext4.img, made once, left mounted at target/chat-bench-ext4; root only). Use
# it where the checkout sits on ext4 *without* a journal (this CI machine's root): there every new
# file costs a scan past recently deleted inodes (ext4's `recently_deleted`, which only runs
# without a journal), and the node log creates and compacts away a file per flush, so about 40 %
# of a node's CPU went to that scan. Journaled ext4 or XFS, what a server or a Kubernetes volume
# has, does not scan.
# The nodes run on CHAT_BENCH_SERVER_CPUS (default 0) and the generator on CHAT_BENCH_LOAD_CPUS
# (default 1), as the issue's reference numbers were measured; set both empty not to pin.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,12p' "$0"
    exit 2
fi
nodes=$1
fsync=$2
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/release
[[ -x $bin/node && -x $bin/loadgen ]] || {
    echo "build first: cargo build --release -p node -p benches --bins" >&2
    exit 2
}
if [[ ${CHAT_BENCH_FS:-} == ext4 ]]; then
    mount_dir=$root/target/chat-bench-ext4
    if ! mountpoint -q "$mount_dir"; then
        image=$root/target/chat-bench-ext4.img
        mkdir -p "$mount_dir"
        [[ -f $image ]] || { truncate -s 8G "$image" && mkfs.ext4 -q -F "$image"; }
        mount -o loop "$image" "$mount_dir" || {
            echo "cannot mount $image (CHAT_BENCH_FS=ext4 needs root)" >&2
            exit 2
        }
    fi
    CHAT_BENCH_DIR=$mount_dir
elif [[ -n ${CHAT_BENCH_FS:-} ]]; then
    echo "CHAT_BENCH_FS: only ext4 is known" >&2
    exit 2
fi
dir=${CHAT_BENCH_DIR:-$root/target/chat-bench}/run-$(date +%s%N)
mkdir -p "$dir"
config=$dir/cluster.toml

# The shared sections of cluster.toml, with this run's paths and limits, then N nodes.
awk -v dir="$dir" -v fsync="$fsync" -v latency="${CHAT_BENCH_STORE_LATENCY_MS:-}" '
    /^\[\[node\]\]/ { exit }
    /^data_dir *=/ { print "data_dir = \"" dir "/data\""; next }
    /^url *=/ && section == "storage" { print "url = \"file:" dir "/objects\""; print "fsync = " fsync; if (latency != "") print "latency_ms = " latency; next }
    /^messages_per_second *=/ { print "messages_per_second = 1000"; next }
    /^outbound_queue_max *=/ { print "outbound_queue_max = 4096"; print "connections_max = 20000"; next }
    /^\[/ { section = $0; gsub(/[\[\] ]/, "", section) }
    { print }
' "${CHAT_BENCH_CONFIG:-$root/cluster.toml}" >"$config"
[[ -n ${CHAT_BENCH_FLUSH_MS:-} ]] && printf '\n[journal]\nflush_interval_ms = %d\n' "$CHAT_BENCH_FLUSH_MS" >>"$config"
# The abuse limits (a build that has them) let the generator create its rooms at once.
[[ -z ${CHAT_BENCH_CONFIG:-} ]] && printf '\n[web.limits]\n%s\n%s\n' \
    'room_create_per_address = { count = 100000, per_s = 60 }' \
    'room_create_per_user = { count = 100000, per_s = 60 }' >>"$config"
for i in $(seq 1 "$nodes"); do
    printf '\n[[node]]\nid = "n%d"\ncluster_addr = "127.0.0.1:%d"\nhttp_addr = "127.0.0.1:%d"\n' \
        "$i" $((7100 + i)) $((8100 + i)) >>"$config"
done

server_cpus=${CHAT_BENCH_SERVER_CPUS-0}
load_cpus=${CHAT_BENCH_LOAD_CPUS-1}
# taskset execs its command, so a node's pid (for its CPU time and its stop) is taskset's.
server_pin=() load_pin=()
[[ -n $server_cpus ]] && server_pin=(taskset -c "$server_cpus")
[[ -n $load_cpus ]] && load_pin=(taskset -c "$load_cpus")
pids=()
stop() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop EXIT
for i in $(seq 1 "$nodes"); do
    RUST_LOG=${RUST_LOG:-warn} "${server_pin[@]}" "${CHAT_BENCH_NODE:-$bin/node}" run --config "$config" --id "n$i" >"$dir/n$i.log" 2>&1 &
    pids+=($!)
done
for i in $(seq 1 "$nodes"); do
    for _ in $(seq 1 150); do
        if curl -sf "http://127.0.0.1:$((8100 + i))/readyz" >/dev/null; then continue 2; fi
        sleep 0.2
    done
    echo "node n$i did not become ready; see $dir/n$i.log" >&2
    exit 1
done
"${load_pin[@]}" "$bin/loadgen" --config "$config" --pids "$(IFS=,; echo "${pids[*]}")" "$@"
# What the journal wrote meanwhile, per node (from its /metrics, which loopback may read): node-log
# objects created (one per flush) and the append's time to durability.
for i in $(seq 1 "$nodes"); do
    curl -sf "http://127.0.0.1:$((8100 + i))/metrics" | awk -v node="n$i" '
        /^actorhub_journal_appends_total / { appends = $2 }
        /^actorhub_journal_append_seconds\{quantile="0.5"\}/ { p50 = $2 * 1000 }
        /^actorhub_journal_append_seconds\{quantile="0.99"\}/ { p99 = $2 * 1000 }
        END { printf "{\"node\":\"%s\",\"journal_objects_written\":%d,\"append_p50_ms\":%.3f,\"append_p99_ms\":%.3f}\n", node, appends, p50, p99 }' ||
        echo "n$i: /metrics unreadable" >&2
done

#!/usr/bin/env bash
# Times paging through every room's whole history (200 messages per page) on the store of an
# earlier `benches/chat.sh 1 …` run: starts one node on that run's cluster.toml, pages with
# `GET /api/rooms/{id}/messages?after=…`, prints one line per room, stops the node.
#
#   benches/chat.sh 1 false --rooms 1 --clients-per-room 20 --rate 25 --duration 40
#   benches/history.sh target/chat-bench/run-<newest>
#
# HISTORY_BENCH_NODE names another `node` binary (an older build, for a before/after comparison).
set -euo pipefail

if [[ $# -ne 1 || ! -f $1/cluster.toml ]]; then
    sed -n '2,9p' "$0"
    exit 2
fi
dir=$1
root=$(cd "$(dirname "$0")/.." && pwd)
node=${HISTORY_BENCH_NODE:-$root/target/release/node}
RUST_LOG=${RUST_LOG:-warn} "$node" run --config "$dir/cluster.toml" --id n1 >"$dir/history-bench.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
url=$(awk -F'"' '/^http_addr/ { print "http://" $2; exit }' "$dir/cluster.toml")
for _ in $(seq 1 150); do
    curl -sf "$url/readyz" >/dev/null && break
    sleep 0.1
done
token=$("$root/target/release/node" token --config "$dir/cluster.toml" --user history-bench)
python3 - "$url" "$token" <<'PY'
import json, sys, time, urllib.request
url, token = sys.argv[1], sys.argv[2]
def get(path):
    request = urllib.request.Request(url + path, headers={"authorization": "Bearer " + token})
    return json.load(urllib.request.urlopen(request, timeout=600))
for room in get("/api/rooms")["rooms"]:
    room = room["id"] if isinstance(room, dict) else room
    after, count, pages, started = 0, 0, 0, time.time()
    while True:
        page = get(f"/api/rooms/{room}/messages?after={after}&limit=200")["messages"]
        if not page:
            break
        pages, count, after = pages + 1, count + len(page), page[-1]["seq"]
    took = time.time() - started
    print(json.dumps({"room": room, "messages": count, "pages": pages, "seconds": round(took, 3),
                      "ms_per_page": round(took / max(pages, 1) * 1000, 2)}))
PY

#!/usr/bin/env bash
# benches/restart-ab.sh OLD_WARREN NEW_WARREN [REPS]: replay time of two
# warren builds, alternating, with 500,000 x 1 KiB persistent messages
# queued (published with confirms by warren-loadgen fill), after kill -9:
# once with the page cache dropped (root), once warm. Prints the broker's
# own "recovered ... in N ms" figure. Needs target/release/warren-loadgen
# (cargo build --release -p warren-loadgen). The port is picked at run time.
set -uo pipefail
cd "$(dirname "$0")/.."
L=${LOADGEN:-target/release/warren-loadgen}
[[ -x $L ]] || { echo "$L missing: cargo build --release -p warren-loadgen" >&2; exit 1; }
PORT=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
[[ $# -ge 2 ]] || { echo "usage: $0 OLD_WARREN NEW_WARREN [REPS]" >&2; exit 2; }
start() { # bin dir out log
    "$1" --bind 127.0.0.1 --port "$PORT" $(http_off "$1") --data-dir "$2" >"$3" 2>"$4" &
    pid=$!
    until grep -q "listening on" "$3" 2>/dev/null; do sleep 0.05; done
}
replay_ms() { grep -o "recovered [0-9]* messages.* in [0-9]* ms" "$1" | sed 's/.* in \([0-9]*\) ms/\1/'; }
for rep in $(seq "${3:-3}"); do
    for pair in "old:$1" "new:$2"; do
        label=${pair%%:*}; bin=${pair#*:}
        d=$(mktemp -d)
        start "$bin" "$d/data" "$d/out1" "$d/log1"
        "$L" fill --uri "amqp://guest:guest@127.0.0.1:$PORT/%2f" --queue restart --count 500000 --size 1024 \
            --timeout 120 >/dev/null 2>&1
        kill -9 "$pid"; wait "$pid" 2>/dev/null
        sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || echo "(page cache not dropped: not root)"
        start "$bin" "$d/data" "$d/out2" "$d/log2"; cold=$(replay_ms "$d/log2")
        kill -9 "$pid"; wait "$pid" 2>/dev/null
        start "$bin" "$d/data" "$d/out3" "$d/log3"; warm=$(replay_ms "$d/log3")
        echo "$label rep$rep: replay cold cache ${cold} ms, warm cache ${warm} ms"
        kill -9 "$pid"; wait "$pid" 2>/dev/null; rm -rf "$d"
    done
done

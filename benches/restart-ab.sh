#!/usr/bin/env bash
# benches/restart-ab.sh OLD_WARREN NEW_WARREN [REPS]: replay time of two
# warren builds, alternating, with 500,000 x 1 KiB persistent messages
# queued (published with confirms by amqpbench), after kill -9: once with the
# page cache dropped (root), once warm. Prints the broker's own
# "recovered ... in N ms" figure. Needs amqpbench (../shared/bench/setup.sh).
set -uo pipefail
A=${AMQPBENCH:-/opt/amqp-bench/bin/amqpbench}
PORT=${PORT:-5692}
[[ $# -ge 2 ]] || { echo "usage: $0 OLD_WARREN NEW_WARREN [REPS]" >&2; exit 2; }
start() { # bin dir out log
    "$1" --bind 127.0.0.1 --port "$PORT" --data-dir "$2" >"$3" 2>"$4" &
    pid=$!
    until grep -q "listening on" "$3" 2>/dev/null; do sleep 0.05; done
}
replay_ms() { grep -o "recovered [0-9]* messages.* in [0-9]* ms" "$1" | sed 's/.* in \([0-9]*\) ms/\1/'; }
for rep in $(seq "${3:-3}"); do
    for pair in "old:$1" "new:$2"; do
        label=${pair%%:*}; bin=${pair#*:}
        d=$(mktemp -d)
        start "$bin" "$d/data" "$d/out1" "$d/log1"
        timeout 120 "$A" run --uri "amqp://guest:guest@127.0.0.1:$PORT/%2f" --size 1024 --queue restart --durable \
            --persistent --confirm 100 --producers 1 --consumers 0 --pmessages 500000 --timeout 100 >/dev/null 2>&1
        kill -9 "$pid"; wait "$pid" 2>/dev/null
        sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || echo "(page cache not dropped: not root)"
        start "$bin" "$d/data" "$d/out2" "$d/log2"; cold=$(replay_ms "$d/log2")
        kill -9 "$pid"; wait "$pid" 2>/dev/null
        start "$bin" "$d/data" "$d/out3" "$d/log3"; warm=$(replay_ms "$d/log3")
        echo "$label rep$rep: replay cold cache ${cold} ms, warm cache ${warm} ms"
        kill -9 "$pid"; wait "$pid" 2>/dev/null; rm -rf "$d"
    done
done

#!/usr/bin/env bash
# benches/s3-ab.sh OLD_WARREN NEW_WARREN [REPS]: scenario S3 (200,000 x 1 KiB
# persistent messages filled with confirms <= 100 in flight, then drained
# with prefetch 100 and acks) against two warren builds, alternating, a
# fresh data directory each time; prints one line per run. Each client run
# is cut off after 60 s, so a build whose drain stalls shows cons_rate=0.
# Needs amqpbench (../shared/bench/setup.sh; AMQPBENCH to override).
set -uo pipefail
A=${AMQPBENCH:-/opt/amqp-bench/bin/amqpbench}
PORT=${PORT:-5691}
[[ $# -ge 2 ]] || { echo "usage: $0 OLD_WARREN NEW_WARREN [REPS]" >&2; exit 2; }
for rep in $(seq "${3:-4}"); do
    for pair in "old:$1" "new:$2"; do
        label=${pair%%:*}; bin=${pair#*:}
        d=$(mktemp -d)
        "$bin" --bind 127.0.0.1 --port "$PORT" --data-dir "$d/data" >"$d/out" 2>"$d/log" &
        pid=$!
        until grep -q "listening on" "$d/out" 2>/dev/null; do sleep 0.05; done
        uri="amqp://guest:guest@127.0.0.1:$PORT/%2f"
        fill=$(timeout 60 "$A" run --uri "$uri" --size 1024 --queue bench-s3 --durable --persistent --confirm 100 \
            --producers 1 --consumers 0 --pmessages 200000 --timeout 50 2>&1 | grep -o "pub_rate=[0-9]*")
        drain=$(timeout 60 "$A" run --uri "$uri" --size 1024 --queue bench-s3 --durable --prefetch 100 \
            --producers 0 --consumers 1 --cmessages 200000 --timeout 50 2>&1 | grep -o "cons_rate=[0-9]*")
        echo "$label rep$rep ${fill:-pub_rate=0} ${drain:-cons_rate=0}"
        kill "$pid"; wait "$pid" 2>/dev/null; rm -rf "$d"
    done
done

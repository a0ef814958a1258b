#!/usr/bin/env bash
# benches/log-bound.sh [GB] [SIZE]: GB gigabytes (default 10) of SIZE-byte
# messages (default 16384) through a replicated quorum queue on three
# nodes, while one message of it stays unacknowledged all along; then
# each node's log against its disk bound, max(2 x live, live + 4
# segments), as `warrenctl status` reports them. Four publishers
# (persistent, confirmed, 100 in flight each) and two consumers (prefetch
# 100, acking) on alpha, which leads the queue. The held message is taken
# first with basic.get and no ack by a client that stays connected; it is
# checked to be still held at the end. Needs target/release/warren,
# warrenctl and warren-loadgen (cargo build --release --bins; cargo build
# --release -p warren-loadgen) and target/test-venv (made by the test
# command) for the holding client.
set -euo pipefail
cd "$(dirname "$0")/.."
GB=${1:-10}
SIZE=${2:-16384}
W=target/release/warren
CTL=target/release/warrenctl
L=target/release/warren-loadgen
PY=target/test-venv/bin/python
source benches/support/warren-cluster.sh
prepare "$W" "$CTL" "$L" "$PY"
segment=$((64 << 20)) # the default segment size the nodes run with
start_cluster
uri="amqp://guest:guest@127.0.0.1:${amqp[0]}/%2f"
"$L" fill --uri "$uri" --queue bound --count 1 --size "$SIZE" --queue-args x-queue-type=quorum >/dev/null
# Holds the first message unacknowledged until told to go (a line on stdin).
mkfifo "$scratch/go"
hold='
import sys, pika
conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", int(sys.argv[1])))
ch = conn.channel()
method, _, body = ch.basic_get("bound", auto_ack=False)
print("held", len(body), flush=True)
sys.stdin.readline()
ch.basic_ack(method.delivery_tag)
conn.close()
print("acked", flush=True)
'
"$PY" -c "$hold" "${amqp[0]}" <"$scratch/go" >"$scratch/held" 2>&1 &
holder=$!
exec 3>"$scratch/go"
until grep -q held "$scratch/held" 2>/dev/null; do
    kill -0 "$holder" 2>/dev/null || { cat "$scratch/held" >&2; exit 1; }
    sleep 0.1
done
per_producer=${PER_PRODUCER:-$((GB * 1000 * 1000 * 1000 / SIZE / 4))}
start=$(date +%s.%N)
"$L" run --uri "$uri" --queue bound --queue-args x-queue-type=quorum --producers 4 --consumers 2 --size "$SIZE" \
    --persistent --durable --confirm 100 --prefetch 100 --purge false --pmessages "$per_producer" \
    --cmessages $((per_producer * 4))
end=$(date +%s.%N)
printf 'moved %d x %d bytes (%.1f GB) in %.0f s\n' $((per_producer * 4)) "$SIZE" \
    "$(echo "$per_producer * 4 * $SIZE / 1000000000" | bc -l)" "$(echo "$end - $start" | bc -l)"
for i in 0 1 2; do
    # Compaction catches up in the background: the last of 60 looks.
    for _ in $(seq 60); do
        read -r disk live < <("$CTL" --data-dir "$scratch/n$i/data" status --formatter json |
            python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["log_disk_bytes"], s["log_live_bytes"])')
        bound=$(( (2 * live > live + 4 * segment) ? 2 * live : live + 4 * segment ))
        ((disk <= bound)) && break
        sleep 1
    done
    held=$("$CTL" --data-dir "$scratch/n$i/data" -q --no-table-headers list_queues name messages_unacknowledged messages |
        awk '$1 == "bound"')
    echo "${names[i]}: log $disk bytes, live $live, bound $bound: $( ((disk <= bound)) && echo within || echo OVER); queue: $held"
done
echo go >&3
wait "$holder" || true
cat "$scratch/held"

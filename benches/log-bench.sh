#!/usr/bin/env bash
# benches/log-bench.sh: the write-ahead log's figures, end to end, against a
# release build of warren on a scratch data directory, driven by the
# workspace's own load generator (tools/loadgen: target/release/warren-loadgen,
# built here with warren and warrenctl; nothing outside the repository).
#
#   1. confirmed publish rate: 1 KiB persistent messages, 1 producer, 1
#      durable queue, 100 unconfirmed in flight, no consumer
#      (`warren-loadgen fill`); with the number of fdatasync calls the broker
#      made (perf stat tracepoint, else strace) and so messages per fdatasync
#   2. broker RSS with BIG (default 2,000,000) x 1 KiB messages queued
#   3. start-up time with RESTART (default 500,000) x 1 KiB messages queued,
#      after a clean stop and after kill -9: from exec until the queue
#      answers a passive declare with the full count (`warren-loadgen wait`)
#   4. disk use after a steady publish/ack run (S1-like, STEADY seconds)
#      next to the live data
#
# Environment: BIG=2000000 RESTART=500000 COUNT=500000 STEADY=20 FSYNC=batch
#   PORT= (default: a free port picked at run time)
set -euo pipefail
cd "$(dirname "$0")/.."
BIG=${BIG:-2000000}; RESTART=${RESTART:-500000}; COUNT=${COUNT:-500000}; STEADY=${STEADY:-20}
FSYNC=${FSYNC:-batch}
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
        && return
    local p
    for p in $(shuf -i 20000-60999 -n 500); do
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
    echo "no free port found" >&2; return 1
}
PORT=${PORT:-$(free_port)}
URI="amqp://guest:guest@127.0.0.1:$PORT/%2f"
cargo build --release -q -p warren-loadgen --bin warren-loadgen
cargo build --release -q -p warren --bin warren --bin warrenctl
BIN=$PWD/target/release/warren
CTL=$PWD/target/release/warrenctl
LOADGEN=$PWD/target/release/warren-loadgen
scratch=$(mktemp -d)
pid=""
cleanup() { [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null; rm -rf "$scratch"; }
trap cleanup EXIT

start() { # start [queue count]: exec, then wait for the listener or for the queue's full count
    local t0; t0=$(date +%s.%N)
    "$BIN" --bind 127.0.0.1 --port "$PORT" --management-port 0 --prometheus-port 0 --data-dir "$scratch/data" --fsync "$FSYNC" >>"$scratch/out" 2>>"$scratch/log" &
    pid=$!
    if [[ -n ${1:-} ]]; then
        "$LOADGEN" wait --uri "$URI" --queue "$1" --expect "$2" --interval-ms 10 --timeout 900 >/dev/null
    else
        until grep -q "listening on 127.0.0.1:$PORT" "$scratch/out" 2>/dev/null; do
            kill -0 "$pid" 2>/dev/null || { echo "warren exited: $(tail -3 "$scratch/log")" >&2; exit 1; }
            sleep 0.01
        done
    fi
    awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.3f", b-a}' >"$scratch/elapsed"
}
stop() { kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }
kill9() { kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }
rss_mb() { awk '/^VmRSS/{printf "%.0f", $2/1024}' "/proc/$pid/status"; }
fill() { # fill <queue> <count>: prints the confirmed publish rate
    "$LOADGEN" fill --uri "$URI" --queue "$1" --count "$2" --size 1024 --confirm 100 --purge --timeout 1200 \
        | tr ' ' '\n' | awk -F= '$1=="pub_msg_s"{print $2}'
}
delete() { "$LOADGEN" delete --uri "$URI" --queue "$1" >/dev/null 2>&1 || true; }
count_syscalls() { # count_syscalls <pid> <seconds>: fdatasync calls over the window
    if perf stat -e syscalls:sys_enter_fdatasync -p "$1" -x, -- sleep "$2" 2>"$scratch/perf" >/dev/null \
        && grep -q fdatasync "$scratch/perf"; then
        cut -d, -f1 "$scratch/perf" | head -1
    else
        timeout "$2" strace -f -c -e trace=fdatasync -p "$1" -o "$scratch/strace" >/dev/null 2>&1 || true
        awk '$NF=="fdatasync"{print $4}' "$scratch/strace" 2>/dev/null
    fi
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(df -T "$scratch" | awk 'NR==2{print $2}') on $(df "$scratch" | awk 'NR==2{print $1}')"

# 1. confirmed publish rate and messages per fdatasync
start
fill bench-rate "$COUNT" >"$scratch/rate" &
filler=$!
sleep 1
syncs=$(count_syscalls "$pid" 3)
wait "$filler"
rate=$(cat "$scratch/rate")
echo "confirmed publish rate: $rate msg/s (1 KiB persistent, 1 producer, 100 in flight, fsync=$FSYNC)"
if [[ -n $syncs && $syncs -gt 0 ]]; then
    awk -v r="$rate" -v s="$syncs" 'BEGIN{printf "fdatasync: %.0f/s, %.1f messages per fdatasync\n", s/3, r/(s/3)}'
fi
delete bench-rate

# 2. RSS with BIG messages queued
fill bench-big "$BIG" >/dev/null
sleep 1
echo "broker RSS with $BIG x 1 KiB queued: $(rss_mb) MB"
delete bench-big

# 3. restart times with RESTART messages queued
fill bench-restart "$RESTART" >/dev/null
stop
start bench-restart "$RESTART"
echo "start-up with $RESTART x 1 KiB queued, after a clean stop: $(cat "$scratch/elapsed") s"
kill9
start bench-restart "$RESTART"
echo "start-up with $RESTART x 1 KiB queued, after kill -9: $(cat "$scratch/elapsed") s"
grep -o 'recovered [0-9]* messages.*' "$scratch/log" | tail -1 || true
delete bench-restart

# 4. disk use after a steady publish/ack run
"$LOADGEN" run --uri "$URI" --queue bench-steady --durable --persistent --confirm 100 --prefetch 100 --size 1024 \
    --producers 1 --consumers 1 --duration "$STEADY" --warmup 1 | tr ' ' '\n' | grep '^\(pub\|cons\)_msg_s=' | tr '\n' ' '
echo
sleep 1
live=$("$CTL" --data-dir "$scratch/data" list_queues -q --no-table-headers name messages | awk '$1=="bench-steady"{print $2}')
echo "after ${STEADY}s of publish+ack: $(du -sm "$scratch/data/log" | cut -f1) MB on disk ($(ls "$scratch/data/log" | wc -l) segments, allocated), live messages: ${live:-?}"
stop

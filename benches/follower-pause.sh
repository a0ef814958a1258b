#!/usr/bin/env bash
# benches/follower-pause.sh [SECONDS] [RATE]: a follower of a replicated
# quorum queue stopped (SIGSTOP) for SECONDS (default 60) while a
# publisher and a consumer go on at RATE msg/s (default 5,000, 1 KiB,
# persistent, confirmed, acked), then resumed (SIGCONT). Three nodes on
# loopback (ports picked at run time), the queue declared on alpha (its
# leader). Prints the publisher's and consumer's summary line, how long
# the follower took after SIGCONT to reach the leader's applied index, and
# each node's log size. Needs target/release/warren, warrenctl and
# warren-loadgen (cargo build --release --bins; cargo build --release -p
# warren-loadgen).
set -euo pipefail
cd "$(dirname "$0")/.."
PAUSE=${1:-60}
RATE=${2:-5000}
W=target/release/warren
CTL=target/release/warrenctl
L=target/release/warren-loadgen
source benches/support/warren-cluster.sh
prepare "$W" "$CTL" "$L"
start_cluster
uri="amqp://guest:guest@127.0.0.1:${amqp[0]}/%2f"
"$L" fill --uri "$uri" --queue paused --count 1 --size 1024 --queue-args x-queue-type=quorum >/dev/null
applied() { "$CTL" --data-dir "$scratch/n0/data" -q --no-table-headers quorum_status paused | awk -v n="$1" '$1 == n {print $6}'; }
leader=$("$CTL" --data-dir "$scratch/n0/data" -q --no-table-headers quorum_status paused | awk '$2 == "leader" {print $1}')
[[ $leader == "${names[0]}" ]] || echo "(alpha does not lead: $leader does)"
follower=2
total=$((PAUSE + 30))
"$L" run --uri "$uri" --queue paused --queue-args x-queue-type=quorum --producers 1 --consumers 1 --size 1024 \
    --persistent --durable --confirm 100 --prefetch 100 --rate "$RATE" --duration "$total" >"$scratch/load" &
load=$!
sleep 10
echo "stopping ${names[follower]} for $PAUSE s under $RATE msg/s"
kill -STOP "${pids[follower]}"
sleep "$PAUSE"
kill -CONT "${pids[follower]}"
resumed=$(date +%s.%N)
while true; do
    target=$(applied "$leader")
    now=$(applied "${names[follower]}")
    if [[ -n $now && -n $target && $now -ge $target ]]; then break; fi
    sleep 0.2
done
caught=$(date +%s.%N)
echo "${names[follower]} reached the leader's applied index $target $(python3 -c "print(round($caught - $resumed, 2))") s after SIGCONT"
wait "$load"
echo "load: $(cat "$scratch/load")"
"$CTL" --data-dir "$scratch/n0/data" -q quorum_status paused | cut -f1-8
for i in 0 1 2; do echo "${names[i]} log: $(du -sh "$scratch/n$i/data/log" | cut -f1)"; done

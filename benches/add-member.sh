#!/usr/bin/env bash
# benches/add-member.sh [BACKLOG] [RATE]: `warrenctl add_member` on a
# replicated quorum queue holding BACKLOG (default 200,000) x 1 KiB
# messages while a publisher goes on at RATE msg/s (default 2,000) with
# confirms. Three nodes on loopback (ports picked at run time); the queue
# is declared on alpha with two members (x-quorum-initial-group-size=2),
# filled by warren-loadgen, then the third node is added. Prints how long
# add_member took (it returns once the new member has caught up and
# votes), the publisher's summary line, each member's applied index
# afterwards, and each node's log size. Needs target/release/warren,
# warrenctl and warren-loadgen (cargo build --release --bins; cargo build
# --release -p warren-loadgen).
set -euo pipefail
cd "$(dirname "$0")/.."
BACKLOG=${1:-200000}
RATE=${2:-2000}
W=target/release/warren
CTL=target/release/warrenctl
L=target/release/warren-loadgen
source benches/support/warren-cluster.sh
prepare "$W" "$CTL" "$L"
start_cluster
uri() { echo "amqp://guest:guest@127.0.0.1:${amqp[$1]}/%2f"; }
args=x-queue-type=quorum,x-quorum-initial-group-size=2
# The metadata group forms once every node has answered: the first
# declare waits for it.
echo "filling: $scratch"
"$L" fill --uri "$(uri 0)" --queue backlog --count "$BACKLOG" --size "${SIZE:-1024}" --queue-args "$args" --timeout 1200
members=$("$CTL" --data-dir "$scratch/n0/data" -q --no-table-headers quorum_status backlog | cut -f1)
newcomer=$(for n in "${names[@]}"; do grep -qx "$n" <<<"$members" || echo "$n"; done)
echo "backlog: $BACKLOG messages on $(echo $members | tr ' ' ','); adding $newcomer while publishing $RATE msg/s"
"$L" run --uri "$(uri 0)" --queue backlog --queue-args "$args" --producers 1 --consumers 0 --size 1024 \
    --persistent --durable --confirm 100 --rate "$RATE" --duration "${PUBLISH_SECS:-60}" >"$scratch/publisher" &
publisher=$!
sleep 2
start=$(date +%s.%N)
"$CTL" --data-dir "$scratch/n0/data" --timeout 1200 add_member backlog "$newcomer"
end=$(date +%s.%N)
echo "add_member took $(python3 -c "print(round($end - $start, 2))") s"
wait "$publisher"
echo "publisher: $(cat "$scratch/publisher")"
"$CTL" --data-dir "$scratch/n0/data" -q quorum_status backlog | cut -f1-6
for i in 0 1 2; do echo "${names[i]} log: $(du -sh "$scratch/n$i/data/log" | cut -f1)"; done

#!/usr/bin/env bash
# benches/cluster-vs-rabbitmq.sh [SCENARIOS] [REPS] [SECONDS]: quorum
# queues on a three-node Warren cluster beside a three-node RabbitMQ
# cluster (rabbit1..3@localhost, joined with join_cluster), in one run:
# warren-loadgen's scenarios (default "S1 S2") alternate between the two,
# REPS times (default 2), SECONDS each (default 20). Clients connect to the
# first node of each, which declares (and so leads) the queues. Every
# port is picked at run time; the RabbitMQ nodes keep their data in
# /tmp/rmq-cluster-N and are stopped (by their pid files) at the end.
# Needs rabbitmq-server (apt-get install rabbitmq-server) and
# ../shared/bench/rmq-node.sh beside the clone, target/release/warren
# and warren-loadgen (cargo build --release --bins; cargo build --release
# -p warren-loadgen).
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIOS=${1:-S1 S2}
REPS=${2:-2}
SECS=${3:-20}
RMQ_NODE=${RMQ_NODE:-../shared/bench/rmq-node.sh}
W=target/release/warren
L=target/release/warren-loadgen
if [[ ! -x $RMQ_NODE ]] || ! command -v rabbitmqctl >/dev/null; then
    echo "SKIPPED: needs rabbitmq-server and $RMQ_NODE (../shared/bench, not in a user's clone)"
    exit 0
fi
source benches/support/warren-cluster.sh
prepare "$W" "$L"
rmq() { # node-number command
    local i=$1
    BENCH_NODE=rabbit$i@localhost BENCH_PORT=${rport[i]} BENCH_DIST_PORT=${rdist[i]} BENCH_DIR=/tmp/rmq-cluster-$i \
        "$RMQ_NODE" "$2"
}
rport=() rdist=()
stop_rabbitmq() { for i in 1 2 3; do [[ -n ${rport[i]:-} ]] && rmq "$i" stop >/dev/null 2>&1; done; }
trap 'stop_rabbitmq; kill -9 "${pids[@]}" 2>/dev/null; [[ -n ${KEEP:-} ]] || rm -rf "$scratch"' EXIT
for i in 1 2 3; do
    rport[i]=$(free_port)
    rdist[i]=$(free_port)
    rmq "$i" wipe >/dev/null 2>&1 || true
    rmq "$i" up >/dev/null
done
for i in 2 3; do
    rabbitmqctl -q -n "rabbit$i@localhost" stop_app
    rabbitmqctl -q -n "rabbit$i@localhost" join_cluster rabbit1@localhost
    rabbitmqctl -q -n "rabbit$i@localhost" start_app
done
echo "RabbitMQ $(rabbitmqctl -q -n rabbit1@localhost version): rabbit1..3@localhost clustered"
start_cluster
for rep in $(seq "$REPS"); do
    for sc in $SCENARIOS; do
        for broker in rabbitmq warren; do
            port=${rport[1]}
            [[ $broker == warren ]] && port=${amqp[0]}
            "$L" run --label "$broker-3-nodes-$sc" --uri "amqp://guest:guest@127.0.0.1:$port/%2f" --scenario "$sc" \
                --queue "quorum-$sc" --queue-args x-queue-type=quorum --duration "$SECS"
        done
    done
done

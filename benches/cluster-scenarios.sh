#!/usr/bin/env bash
# benches/cluster-scenarios.sh [SCENARIOS] [REPS] [SECONDS]: a replicated
# quorum queue on three nodes beside a classic queue on one node, with
# warren-loadgen's scenarios (default "S1 S2"), alternating REPS times
# (default 2), SECONDS each (default 20). The cluster's clients connect to
# alpha, which declares (and so leads) the queues. Prints one loadgen
# line per run, labelled. Ports are picked at run time. Needs
# target/release/warren and warren-loadgen (cargo build --release --bins;
# cargo build --release -p warren-loadgen).
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIOS=${1:-S1 S2}
REPS=${2:-2}
SECS=${3:-20}
W=target/release/warren
L=target/release/warren-loadgen
source benches/support/warren-cluster.sh
prepare "$W" "$L"
start_cluster
single_port=$(free_port)
start_warren "$scratch/single" "$single_port"
for rep in $(seq "$REPS"); do
    for sc in $SCENARIOS; do
        "$L" run --label "single-$sc" --uri "amqp://guest:guest@127.0.0.1:$single_port/%2f" --scenario "$sc" \
            --duration "$SECS"
        "$L" run --label "cluster-$sc" --uri "amqp://guest:guest@127.0.0.1:${amqp[0]}/%2f" --scenario "$sc" \
            --queue "quorum-$sc" --queue-args x-queue-type=quorum --duration "$SECS"
    done
done

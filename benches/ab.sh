#!/usr/bin/env bash
# benches/ab.sh A_WARREN B_WARREN [REPS]: the same warren-loadgen scenarios
# against two broker setups, alternating A and B, a fresh data directory
# and a port picked at run time each time; one line per run, then the
# median of each figure per setup and their ratio B/A. Either side may be
# a different build (old vs new) or the same build with different client
# knobs (A_ARGS, B_ARGS: extra `warren-loadgen run` arguments, e.g.
# B_ARGS="--priorities 10" to compare a priority queue with a plain one).
#
# Environment: SCENARIOS="S1 S3 S4" REPS=3 DURATION=10 BACKLOG=200000
#   A_ARGS= B_ARGS= A_LABEL=A B_LABEL=B
# Needs target/release/warren-loadgen (cargo build --release -p warren-loadgen).
set -euo pipefail
# Builds with the management API get it turned off (older builds lack the flags).
http_off() { if "$1" --help 2>/dev/null | grep -q -- --management-port; then echo --management-port 0 --prometheus-port 0; fi; }
cd "$(dirname "$0")/.."
[[ $# -ge 2 ]] || { echo "usage: $0 A_WARREN B_WARREN [REPS]" >&2; exit 2; }
LOADGEN=${LOADGEN:-target/release/warren-loadgen}
[[ -x $LOADGEN ]] || { echo "$LOADGEN missing: cargo build --release -p warren-loadgen" >&2; exit 1; }
SCENARIOS=${SCENARIOS:-"S1 S3 S4"}; REPS=${3:-${REPS:-3}}
DURATION=${DURATION:-10}; BACKLOG=${BACKLOG:-200000}
A_LABEL=${A_LABEL:-A}; B_LABEL=${B_LABEL:-B}
out=$(mktemp)
pid=""; scratch=""
cleanup() { [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null; [[ -n $scratch ]] && rm -rf "$scratch"; rm -f "$out"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

for rep in $(seq "$REPS"); do
    for sc in $SCENARIOS; do
        for side in A B; do
            if [[ $side == A ]]; then bin=$1; label=$A_LABEL; extra=${A_ARGS:-}; else bin=$2; label=$B_LABEL; extra=${B_ARGS:-}; fi
            scratch=$(mktemp -d); port=$(free_port)
            "$bin" --bind 127.0.0.1 --port "$port" $(http_off "$bin") --data-dir "$scratch/data" >"$scratch/out" 2>"$scratch/log" &
            pid=$!
            until grep -q "listening on" "$scratch/out" 2>/dev/null; do sleep 0.05; done
            # shellcheck disable=SC2086
            line=$("$LOADGEN" run --uri "amqp://guest:guest@127.0.0.1:$port/%2f" --scenario "$sc" \
                --duration "$DURATION" --backlog "$BACKLOG" $extra 2>&1 | tail -1)
            echo "$label $sc rep$rep $line" | tee -a "$out"
            kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
            rm -rf "$scratch"; scratch=""
        done
    done
done

python3 - "$out" "$A_LABEL" "$B_LABEL" <<'PY'
import re, statistics, sys
path, a, b = sys.argv[1:4]
rows = {}
for line in open(path):
    label, sc = line.split()[:2]
    for k, v in re.findall(r"(\w+)=([0-9.]+)", line):
        rows.setdefault((label, sc, k), []).append(float(v))
print(f"\nmedians of each figure; ratio = {b} / {a}")
keys = ["pub_msg_s", "cons_msg_s", "p50_ms", "p99_ms"]
for sc in dict.fromkeys(k[1] for k in rows):
    for k in keys:
        va, vb = rows.get((a, sc, k)), rows.get((b, sc, k))
        if not va or not vb:
            continue
        ma, mb = statistics.median(va), statistics.median(vb)
        r = f"{mb / ma:.2f}" if ma else "-"
        print(f"{sc:<4} {k:<10} {a}={ma:>12,.2f} {b}={mb:>12,.2f} ratio={r}")
PY

#!/usr/bin/env bash
# benches/compare.sh: Warren next to RabbitMQ, same machine, same client, one run.
#
# Starts a release build of warren on a scratch data directory, runs the
# scenarios S1-S5 of ../shared/bench/run.sh (REPEAT times) and the restart
# measurement of ../shared/bench/recovery.sh against it; then, if
# rabbitmq-server is installed, does the same against a separate RabbitMQ node
# (../shared/bench/rmq-node.sh, port 5673); then prints the medians side by
# side with their ratio and the broker CPU per message.
#
# Needs ../shared/bench/setup.sh to have run (amqpbench, rabbitmq-server).
# Environment: REPEAT=3 PORT=5680 SCENARIOS="S1 S2 S3 S4 S5" RESTART_N=500000
#   SKIP_RABBITMQ=0 SKIP_RECOVERY=0 BENCH=../shared/bench
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=$(cd "${BENCH:-../shared/bench}" && pwd)
REPEAT=${REPEAT:-3}; PORT=${PORT:-5680}; RESTART_N=${RESTART_N:-500000}
export SCENARIOS=${SCENARIOS:-"S1 S2 S3 S4 S5"} REPEAT
export OUT_DIR=${OUT_DIR:-/tmp/amqpbench-results}
rev=$(git rev-parse --short HEAD 2>/dev/null || echo dev)
WARREN_LABEL="warren-$rev"; RABBIT_LABEL="rabbitmq-$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null | cut -d- -f1)"
cargo build --release -q --bin warren
scratch=$(mktemp -d)
trap '[[ -f $scratch/pid ]] && kill -9 $(cat "$scratch/pid") 2>/dev/null; rm -rf "$scratch"' EXIT

start_warren="echo \$\$ > $scratch/pid; exec $PWD/target/release/warren --bind 127.0.0.1 --port $PORT --data-dir $scratch/data"
bash -c "$start_warren" >"$scratch/warren.log" 2>&1 &
until grep -q "listening on" "$scratch/warren.log" 2>/dev/null; do sleep 0.05; done
BROKER_PID=$(cat "$scratch/pid") "$BENCH/run.sh" 127.0.0.1 "$PORT" "$WARREN_LABEL"
if [[ ${SKIP_RECOVERY:-0} != 1 ]]; then
    N=$RESTART_N "$BENCH/recovery.sh" 127.0.0.1 "$PORT" "$WARREN_LABEL" "$start_warren" \
        "kill -TERM \$(cat $scratch/pid)" "kill -9 \$(cat $scratch/pid)"
fi
kill -TERM "$(cat "$scratch/pid")" 2>/dev/null || true

if [[ ${SKIP_RABBITMQ:-0} != 1 ]] && command -v rabbitmq-server >/dev/null; then
    "$BENCH/rmq-node.sh" wipe >/dev/null 2>&1 || true
    "$BENCH/rmq-node.sh" up
    BROKER_PID=$("$BENCH/rmq-node.sh" pid) "$BENCH/run.sh" 127.0.0.1 5673 "$RABBIT_LABEL"
    if [[ ${SKIP_RECOVERY:-0} != 1 ]]; then
        N=$RESTART_N "$BENCH/recovery.sh" 127.0.0.1 5673 "$RABBIT_LABEL" \
            "$BENCH/rmq-node.sh start" "$BENCH/rmq-node.sh stop" "$BENCH/rmq-node.sh kill9"
    fi
    "$BENCH/rmq-node.sh" stop >/dev/null 2>&1 || true
fi

python3 - "$OUT_DIR" "$WARREN_LABEL" "$RABBIT_LABEL" <<'PY'
import statistics, sys
out, warren, rabbit = sys.argv[1:4]
rows = {}
for line in open(f"{out}/summary.tsv"):
    f = line.rstrip("\n").split("\t")
    if len(f) < 12 or f[1] not in (warren, rabbit):
        continue
    rows.setdefault((f[1], f[2]), []).append(f[3:])
def med(label, sc, i):
    vals = [float(r[i]) for r in rows.get((label, sc), []) if r[i] not in ("-", "")]
    return statistics.median(vals) if vals else None
def cpu_us(label, sc):
    pub, cons, cpu = med(label, sc, 0), med(label, sc, 1), med(label, sc, 4)
    if not pub or cpu is None:
        return None
    if sc == "S3":  # fill then drain: cpu% is the average over both phases
        return cpu / 100 * (1 / pub + 1 / cons) * 1e6 if cons else None
    return cpu / 100 / max(pub, cons or 0) * 1e6
def fmt(v, unit=""):
    return "-" if v is None else (f"{v:,.0f}{unit}" if v >= 100 else f"{v:.2f}{unit}")
def ratio(a, b):
    return "-" if not a or not b else f"{a / b:.1f}x"
print(f"\nmedians of {max((len(v) for v in rows.values()), default=0)} runs; CPU per message = broker CPU time / messages")
print(f"{'scenario':<8} {'metric':<14} {warren:>18} {rabbit:>18} {'ratio':>7}")
for sc in ("S1", "S2", "S3", "S4", "S5"):
    if (warren, sc) not in rows:
        continue
    metrics = [("pub msg/s", 0), ("cons msg/s", 1), ("p50 ms", 2), ("p99 ms", 3), ("peak RSS MB", 7)]
    for name, i in metrics:
        w, r = med(warren, sc, i), med(rabbit, sc, i)
        print(f"{sc:<8} {name:<14} {fmt(w):>18} {fmt(r):>18} {ratio(w, r) if i < 2 else ratio(r, w) if i in (2, 3, 7) else '':>7}")
    w, r = cpu_us(warren, sc), cpu_us(rabbit, sc)
    print(f"{sc:<8} {'CPU us/msg':<14} {fmt(w):>18} {fmt(r):>18} {ratio(r, w):>7}")
try:
    rec = {}
    for line in open(f"{out}/recovery.tsv"):
        f = line.rstrip("\n").split("\t")
        if len(f) >= 9 and f[1] in (warren, rabbit):
            rec[(f[1], f[2])] = f
    for mode in ("clean", "kill9"):
        w, r = rec.get((warren, mode)), rec.get((rabbit, mode))
        ws = float(w[6]) if w else None
        rs = float(r[6]) if r else None
        print(f"{'restart':<8} {mode + ' s':<14} {fmt(ws):>18} {fmt(rs):>18} {ratio(rs, ws):>7}")
except FileNotFoundError:
    pass
PY

#!/usr/bin/env bash
# benches/regress.sh [REV ...]: the check to run before calling a change to
# the message path done. Builds each named commit (a git worktree, built in
# release mode in target/regress/<commit>, kept for the next run) and the
# working tree, then runs warren-loadgen's scenarios against every build in
# turn, alternating builds within each repetition (in reverse order every
# other repetition), each run on a fresh data directory and a port picked at
# run time, with the same client (the working tree's warren-loadgen) for
# all. Per run it records the consumed msg/s, the broker's CPU time per
# message (utime + stime of the whole process over the load, from /proc,
# and each of the two apart), its syscalls and context switches per message (the
# broker runs under perf stat, so every thread it starts is counted, start
# and stop included; "-" without perf), p50/p99 latency, and for builds that
# report them at shutdown the nanoseconds per message spent holding the
# broker's lock and the log's (the serial part of a message's cost: 1e9 over
# their sum is the rate no number of cores passes). It ends with the median
# of each figure per build and its ratio to the first build.
#
#   benches/regress.sh HEAD                  # the last commit beside the working tree
#   benches/regress.sh aef07c7 2952dd2       # two commits and the working tree
#   SCENARIOS="S1 S4" REPS=5 DURATION=10 benches/regress.sh HEAD~3
#
# With RABBITMQ=1 a RabbitMQ node (Debian's rabbitmq-server, started as
# root; benches/support/rabbitmq-node.sh) is one more column, measured in
# the same alternation with the same client: one node for the whole run
# (each scenario purges its queues first and deletes them after), its CPU
# that of its beam.smp, its syscalls and switches counted by perf stat
# attached over the load only (Warren's include its start and stop).
#
# Environment: SCENARIOS="S1 S2 S4" REPS=3 DURATION=10; TREE=0 leaves the
# working tree out (then at least one REV); RABBITMQ=1; LOADGEN_ARGS, more
# warren-loadgen arguments for every run (LOADGEN_ARGS="--rate 300000"
# holds S4's unthrottled producer to one rate, so that builds are compared
# at the same load: S4 runs at either about 180k or 450k+ msg/s, whatever
# the build, and its CPU per message follows the rate). Raw lines:
# target/regress/last.txt.
# Nothing else may run meanwhile: on a 2-core machine, compare the ratios of
# one run, never figures of different runs.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
SCENARIOS=${SCENARIOS:-"S1 S2 S4"}; REPS=${REPS:-3}; DURATION=${DURATION:-10}
read -r -a loadgen_args <<<"${LOADGEN_ARGS:-}"
mkdir -p target/regress
results=target/regress/last.txt
: >"$results"

labels=(); bins=()
for rev in "$@"; do
    sha=$(git rev-parse --short=9 "$rev^{commit}")
    bin=$root/target/regress/$sha/release/warren
    if [[ ! -x $bin ]]; then
        echo "building $rev ($sha) in target/regress/$sha"
        tree=$(mktemp -d)
        git worktree add -q --detach "$tree" "$sha"
        # Its own target directory: a commit's artifacts must never be
        # mistaken for the working tree's (or another commit's).
        (cd "$tree" && CARGO_TARGET_DIR=$root/target/regress/$sha cargo build -q --release --bin warren)
        git worktree remove --force "$tree"
    fi
    labels+=("$sha"); bins+=("$bin")
done
if [[ ${TREE:-1} != 0 ]]; then
    echo "building the working tree"
    cargo build -q --release --bin warren
    labels+=("tree"); bins+=("$root/target/release/warren")
fi
[[ ${#bins[@]} -ge 1 ]] || { echo "usage: $0 [REV ...] (with TREE=0, at least one REV)" >&2; exit 2; }
cargo build -q --release -p warren-loadgen
loadgen=$root/target/release/warren-loadgen
have_perf=0
perf stat -e raw_syscalls:sys_enter,context-switches -- true >/dev/null 2>&1 && have_perf=1
[[ $have_perf == 1 ]] || echo "perf with the raw_syscalls tracepoint is not usable here: syscall figures are '-'" >&2

pid=""; scratch=""; rmq_dir=""; rmq_pid=""
cleanup() {
    [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null
    [[ -n $scratch ]] && rm -rf "$scratch"
    if [[ -n $rmq_pid ]]; then kill -TERM "$rmq_pid" 2>/dev/null && wait_exit "$rmq_pid" || true; fi
    [[ -n $rmq_dir ]] && stop_our_epmd
    [[ -n $rmq_dir ]] && rm -rf "$rmq_dir"
    return 0
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
if [[ ${RABBITMQ:-0} == 1 ]]; then
    # shellcheck source=benches/support/rabbitmq-node.sh
    source "$root/benches/support/rabbitmq-node.sh"
    why=$(rabbit_unavailable)
    [[ -z $why ]] || { echo "RABBITMQ=1, but $why" >&2; exit 2; }
    rmq_dir=$(mktemp -d /tmp/warren-regress-rmq.XXXXXX)
    RPORT=$(free_port); DPORT=$(free_port); NODE="warren-regress-$$@localhost"
    RURI="amqp://guest:guest@127.0.0.1:$RPORT/%2f"; LOADGEN=$loadgen; RMQ_LOG=$rmq_dir/server.log
    prepare_rabbit; start_rabbit; await_rabbit
    echo "$(rabbit_label): node $NODE on 127.0.0.1:$RPORT"
    labels+=("$(rabbit_label)"); bins+=("rabbitmq")
fi
# The HTTP listeners are turned off where a build has them (older ones lack the flags).
http_off() {
    local help; help=$("$1" --help 2>/dev/null || true)
    grep -q -- --management-port <<<"$help" && echo --management-port 0
    grep -q -- --prometheus-port <<<"$help" && echo --prometheus-port 0
    return 0
}
# User and system ticks of a process, "utime stime".
cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
ticks_per_s=$(getconf CLK_TCK)

for rep in $(seq "$REPS"); do
    for sc in $SCENARIOS; do
        # Every other repetition runs the builds in reverse. A run can pay
        # for the one before it (whose deleted data directory is still being
        # discarded and written back): with the working tree always after
        # aef07c7 it came out at 0.93x in S1 and 0.83x in S2, with it always
        # first at 0.99x and 0.95x (2026-12-07).
        order=()
        for j in "${!bins[@]}"; do
            if (( rep % 2 == 0 )); then order=("$j" "${order[@]}"); else order+=("$j"); fi
        done
        for i in "${order[@]}"; do
            bin=${bins[$i]}; label=${labels[$i]}
            scratch=$(mktemp -d); port=$(free_port)
            if [[ $bin == rabbitmq ]]; then
                # No broker output of its own (the lock figures are read from these).
                : >"$scratch/out"; : >"$scratch/log"
                pid=$rmq_pid; perf_pid=""
                if [[ $have_perf == 1 ]]; then
                    perf stat -x, -e raw_syscalls:sys_enter,context-switches -o "$scratch/perf" -p "$pid" &
                    perf_pid=$!
                fi
                before=$(cpu_ticks "$pid")
                line=$("$loadgen" run --uri "$RURI" --scenario "$sc" --duration "$DURATION" "${loadgen_args[@]}" 2>&1 | tail -1)
                [[ -r /proc/$pid/stat ]] || { echo "$label: the node died under load, see $rmq_dir/log" >&2; exit 1; }
                after=$(cpu_ticks "$pid")
                pid=""
                [[ -n $perf_pid ]] && { kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true; }
            else
                # Under perf stat when it works, so that every thread the broker
                # ever starts is counted (the load dominates the counts).
                profiler=()
                [[ $have_perf == 1 ]] && profiler=(perf stat -x, -e raw_syscalls:sys_enter,context-switches -o "$scratch/perf" --)
                # shellcheck disable=SC2046
                "${profiler[@]}" "$bin" --bind 127.0.0.1 --port "$port" $(http_off "$bin") --data-dir "$scratch/data" \
                    >"$scratch/out" 2>"$scratch/log" &
                launched=$!
                pid=$launched
                if [[ $have_perf == 1 ]]; then
                    for _ in $(seq 200); do pid=$(pgrep -P "$launched" -x warren | head -1) && break; sleep 0.02; done
                fi
                for _ in $(seq 200); do grep -q "listening on" "$scratch/out" 2>/dev/null && break; sleep 0.05; done
                grep -q "listening on" "$scratch/out" || { echo "$label did not start:" >&2; cat "$scratch/log" >&2; exit 1; }
                [[ -r /proc/$pid/stat ]] || { echo "$label: no broker process (pid '$pid', launched $launched) after its start:" >&2; cat "$scratch/log" >&2; exit 1; }
                before=$(cpu_ticks "$pid")
                line=$("$loadgen" run --uri "amqp://guest:guest@127.0.0.1:$port/%2f" --scenario "$sc" \
                    --duration "$DURATION" "${loadgen_args[@]}" 2>&1 | tail -1)
                [[ -r /proc/$pid/stat ]] || { echo "$label: the broker died under load:" >&2; tail -20 "$scratch/log" >&2; exit 1; }
                after=$(cpu_ticks "$pid")
                kill "$pid"; wait "$launched" 2>/dev/null || true; pid=""
            fi
            syscalls=-; switches=-
            if [[ $have_perf == 1 ]]; then
                syscalls=$(awk -F, '$3 == "raw_syscalls:sys_enter" {print $1}' "$scratch/perf")
                switches=$(awk -F, '$3 == "context-switches" {print $1}' "$scratch/perf")
            fi
            # Builds that report their lock holds at shutdown: seconds held.
            locks=$(sed -n 's/.*broker lock: [0-9]* holds, [0-9.]* ns mean, \([0-9.]*\) s held; log lock (message path): [0-9]* holds, [0-9.]* ns mean, \([0-9.]*\) s held.*/\1 \2/p' \
                "$scratch/out" "$scratch/log" 2>/dev/null | tail -1)
            rm -rf "$scratch"; scratch=""
            consumed=$(sed -n 's/.* consumed=\([0-9]*\).*/\1/p' <<<"$line")
            figures=$(python3 - "$before" "$after" "$ticks_per_s" "${consumed:-0}" "${syscalls:--}" "${switches:--}" "${locks:-}" <<'PY'
import sys
(user0, sys0), (user1, sys1) = (map(int, sys.argv[i].split()) for i in (1, 2))
hz, consumed = int(sys.argv[3]), int(sys.argv[4])
def per(v):
    return f"{float(v) / consumed:.3f}" if consumed and v not in ("-", "") else "-"
def us(ticks):
    return f"{ticks / hz * 1e6 / consumed:.3f}" if consumed else "-"
# The kernel's share (sys) is mostly the log's fdatasync path and loopback
# TCP: a change in user code shows in user_us, not drowned in sys noise.
out = (f"broker_us_per_msg={us(user1 - user0 + sys1 - sys0)} user_us_per_msg={us(user1 - user0)}"
       f" sys_us_per_msg={us(sys1 - sys0)} syscalls_per_msg={per(sys.argv[5])} switches_per_msg={per(sys.argv[6])}")
held = sys.argv[7].split()
if consumed and len(held) == 2:
    # Time under the broker's lock and the log's, per message consumed.
    out += f" broker_lock_ns_per_msg={float(held[0]) * 1e9 / consumed:.1f} log_lock_ns_per_msg={float(held[1]) * 1e9 / consumed:.1f}"
print(out)
PY
)
            echo "$label $sc rep$rep $line $figures" | tee -a "$results"
        done
    done
done

python3 - "$results" "${labels[@]}" <<'PY'
import re, statistics, sys
path, labels = sys.argv[1], sys.argv[2:]
rows = {}
for line in open(path):
    label, sc = line.split()[:2]
    for k, v in re.findall(r"(\w+)=([0-9.]+)\b", line):
        rows.setdefault((label, sc, k), []).append(float(v))
keys = ["cons_msg_s", "broker_us_per_msg", "user_us_per_msg", "sys_us_per_msg", "syscalls_per_msg", "switches_per_msg", "p50_ms", "p99_ms",
        "broker_lock_ns_per_msg", "log_lock_ns_per_msg"]
base = labels[0]
print(f"\nmedians over the repetitions; ratio = build / {base} ('-': the build does not report it)")
print("scenario figure                 " + "".join(f"{l:>17}" for l in labels) + "".join(f"{'ratio ' + l:>23}" for l in labels[1:]))
def cell(v):
    return f"{'-':>17}" if v is None else f"{v:>17,.3f}" if v < 100 else f"{v:>17,.0f}"
for sc in dict.fromkeys(k[1] for k in rows):
    for k in keys:
        med = {l: statistics.median(rows[(l, sc, k)]) if rows.get((l, sc, k)) else None for l in labels}
        if all(v is None for v in med.values()):
            continue
        cells = "".join(cell(med[l]) for l in labels)
        b = med[base]
        ratios = "".join(f"{(med[l] / b):>23.2f}" if b and med[l] is not None else f"{'-':>23}" for l in labels[1:])
        print(f"{sc:<8} {k:<23}{cells}{ratios}")
PY

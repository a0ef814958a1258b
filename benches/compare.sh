#!/usr/bin/env bash
# benches/compare.sh: Warren next to RabbitMQ, same machine, same client, one run.
#
# Builds warren and the workspace's own load generator (tools/loadgen,
# target/release/warren-loadgen) in release mode, starts warren on a scratch
# data directory on a free port picked at run time, runs the scenarios
# S1-S5 (REPEAT times) and the restart measurement against it; then, if
# rabbitmq-server is installed, starts a RabbitMQ node of its own (scratch
# RABBITMQ_MNESIA_BASE / LOG_BASE, node name warren-compare-<pid>@localhost,
# AMQP and distribution ports picked at run time, 127.0.0.1 only, no
# plugins) and does the same against it; then prints the medians side by
# side with their ratio and the broker CPU per message. Only processes this
# script started are stopped, by PID (and epmd, if the RabbitMQ node started
# it). Nothing outside the repository is needed but python3 (free ports, the
# table) and, for the comparison, Debian's rabbitmq-server run as root.
#
# Scenarios (all SIZE-byte messages, default exchange, one connection per
# producer and per consumer; see `warren-loadgen run --help`):
#   S1 durable queue, persistent, 1 producer with confirms (<= 100 in
#      flight), 1 consumer acking each message, prefetch 100; DURATION s
#   S2 as S1 with 4 producers and 4 consumers on 4 queues (a classic queue
#      is one Erlang process, so one queue would measure that process)
#   S3 BACKLOG persistent messages filled with confirms and no consumer,
#      then drained by 1 consumer; pub = fill rate, cons = drain rate
#   S4 transient messages, non-durable queue, no confirms, unthrottled
#      producer, auto-ack consumer
#   S5 as S1 with the producer held to RATE msg/s: the latency figure
#   ST a stream (x-queue-type=stream): 1 producer, persistent, confirms
#      (<= 100 in flight), while FANOUT consumers (prefetch 100, acking each)
#      read it from x-stream-offset=first; cons = deliveries/s, all consumers
#   FO the same fan-out done the classic way: a durable fanout exchange
#      bound to FANOUT durable queues, one consumer each
#   (ST and FO are not in the default SCENARIOS: SCENARIOS="ST FO")
# Latency is publish -> delivery (a wall-clock timestamp in each body).
#
# Per scenario line (also appended to $OUT_DIR/summary.tsv):
#   label scenario pub_msg_s cons_msg_s p50_ms p99_ms confirm_p99_ms
#   broker_cpu% client_cpu% other_cpu% broker_peak_rss_mb broker_us_per_msg
# CPU is % of one core over the scenario (from /proc/PID/stat before and
# after; other = the rest of the machine, high means a disturbed run); peak
# RSS is VmHWM, reset before each scenario through /proc/PID/clear_refs;
# broker_us_per_msg = broker CPU time / messages carried (S3: fill + drain).
# Restart lines (also in $OUT_DIR/recovery.tsv): with RESTART_N x SIZE
# persistent messages queued, after a clean stop (SIGTERM) and after
# kill -9, seconds from the start command until a fresh connection's
# passive declare reports all of them:
#   label mode N t_connect_s t_declare_s t_count_s t_first_get_s count status
#
# Environment (defaults): REPEAT=3 SCENARIOS="S1 S2 S3 S4 S5" DURATION=20
#   WARMUP=3 (or 15% of a shorter DURATION) BACKLOG=200000 RATE=1000 SIZE=1024 RESTART_N=500000
#   FANOUT=10 (consumers of ST, queues of FO)
#   SKIP_RABBITMQ=0 SKIP_RECOVERY=0 PORT= (warren's port; default: a free one)
#   QUEUE_ARGS="" extra queue arguments KEY=VALUE (comma or space separated,
#     e.g. x-queue-type=quorum) for the durable queues of S1 S2 S3 S5
#   PRIORITIES="" N: declare every queue with x-max-priority=N and publish
#     with random priorities 0..N (compare with a run without it)
#   OUT_DIR=target/bench-results/compare-<date> (summary.tsv, recovery.tsv,
#     broker logs, raw client output)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
REPEAT=${REPEAT:-3}; SCENARIOS=${SCENARIOS:-"S1 S2 S3 S4 S5"}
DURATION=${DURATION:-20}; WARMUP=${WARMUP:-}; BACKLOG=${BACKLOG:-200000}
RATE=${RATE:-1000}; SIZE=${SIZE:-1024}; RESTART_N=${RESTART_N:-500000}; FANOUT=${FANOUT:-10}
QUEUE_ARGS=$(tr ' ' ',' <<<"${QUEUE_ARGS:-}"); PRIORITIES=${PRIORITIES:-}
STAMP=$(date +%Y%m%d-%H%M%S)
OUT_DIR=${OUT_DIR:-$REPO/target/bench-results/compare-$STAMP}
mkdir -p "$OUT_DIR"; OUT_DIR=$(cd "$OUT_DIR" && pwd)
TICK=$(getconf CLK_TCK)
LOADGEN=$REPO/target/release/warren-loadgen
WARREN=$REPO/target/release/warren

cargo build --release -q -p warren-loadgen --bin warren-loadgen
cargo build --release -q -p warren --bin warren

rev=$(git rev-parse --short HEAD 2>/dev/null || echo dev)
WARREN_LABEL="warren-$rev"

scratch=$(mktemp -d /tmp/warren-compare.XXXXXX)
warren_pid=""; rmq_dir=""; rmq_pid=""
cleanup() {
    [[ -n $warren_pid ]] && kill -9 "$warren_pid" 2>/dev/null
    if [[ -n $rmq_pid ]]; then kill -9 "$rmq_pid" 2>/dev/null; fi
    [[ -n $rmq_dir ]] && stop_our_epmd
    [[ -n $rmq_dir ]] && rm -rf "$rmq_dir"
    rm -rf "$scratch"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
        && return
    local p
    for p in $(shuf -i 20000-60999 -n 500); do
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
    echo "no free port found" >&2; return 1
}
proc_jiffies() { if [[ -r /proc/$1/stat ]]; then sed 's/.*) //' "/proc/$1/stat" | awk '{print $12+$13}'; else echo 0; fi; }
busy_jiffies() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
hwm_mb() { awk '/^VmHWM/{printf "%.0f", $2/1024}' "/proc/$1/status" 2>/dev/null || echo -; }
get() { tr ' ' '\n' <<<"$2" | awk -F= -v k="$1" '$1==k{print $2}'; }

# ---------------------------------------------------------------- warren
PORT=${PORT:-$(free_port)}
start_warren() { # start and wait until it listens
    "$WARREN" --bind 127.0.0.1 --port "$PORT" --management-port 0 --prometheus-port 0 --data-dir "$scratch/warren-data" >>"$OUT_DIR/warren.log" 2>&1 &
    warren_pid=$!
}
await_warren() {
    local i
    for ((i = 0; i < 6000; i++)); do
        listening "$PORT" && return 0
        kill -0 "$warren_pid" 2>/dev/null || { echo "warren exited, see $OUT_DIR/warren.log" >&2; exit 1; }
        sleep 0.05
    done
    echo "warren did not listen on $PORT within 300 s" >&2; exit 1
}
warren_pid_of() { echo "$warren_pid"; }
stop_warren() { kill -TERM "$warren_pid"; wait "$warren_pid" 2>/dev/null || true; warren_pid=""; }
kill9_warren() { kill -9 "$warren_pid"; wait "$warren_pid" 2>/dev/null || true; warren_pid=""; }

# ---------------------------------------------------------------- rabbitmq
RPORT=""; DPORT=""; NODE="warren-compare-$$@localhost"; RMQ_LOG=$OUT_DIR/rabbitmq.log
# shellcheck source=benches/support/rabbitmq-node.sh
source "$REPO/benches/support/rabbitmq-node.sh"
RABBIT_LABEL=$(rabbit_label)
rmq_pid_of() { echo "$rmq_pid"; }

# ---------------------------------------------------------------- measuring
# scenario <label> <uri> <broker pid> <scenario>: one summary line
scenario() {
    local label=$1 uri=$2 pid=$3 sc=$4 args=(--size "$SIZE" --label "$1")
    # ST and FO: one publisher with confirms, FANOUT consumers, as S1 otherwise.
    local fanout=(--durable --persistent --confirm 100 --prefetch 100 --producers 1 --consumers "$FANOUT" --delete
        --duration "$DURATION" --warmup "${WARMUP:-3}")
    case $sc in
        S3) args+=(--scenario S3 --backlog "$BACKLOG") ;;
        S5) args+=(--scenario S5 --rate "$RATE" --duration "$DURATION") ;;
        ST) args+=("${fanout[@]}" --queue bench-st --queue-args x-queue-type=stream --consumer-args x-stream-offset=first) ;;
        FO) args+=("${fanout[@]}" --queue bench-fo --queues "$FANOUT" --exchange bench-fo) ;;
        *) args+=(--scenario "$sc" --duration "$DURATION") ;;
    esac
    [[ -n $WARMUP && $sc != S3 && $sc != ST && $sc != FO ]] && args+=(--warmup "$WARMUP")
    [[ -n $QUEUE_ARGS && $sc != S4 && $sc != ST ]] && args+=(--queue-args "$QUEUE_ARGS")
    [[ -n $PRIORITIES ]] && args+=(--priorities "$PRIORITIES")
    local hwm_reset=1
    echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || hwm_reset=0
    local t0 b0 p0 res rc=0
    t0=$(date +%s%N); b0=$(busy_jiffies); p0=$(proc_jiffies "$pid")
    echo "# $label $sc: warren-loadgen run --uri $uri ${args[*]}" >>"$OUT_DIR/raw.log"
    res=$("$LOADGEN" run --uri "$uri" "${args[@]}" 2>"$OUT_DIR/stderr") || rc=$?
    cat "$OUT_DIR/stderr" >>"$OUT_DIR/raw.log"; echo "$res" >>"$OUT_DIR/raw.log"
    ((rc == 0)) || sed "s/^/# $label $sc: /" "$OUT_DIR/stderr" >&2
    local t1 b1 p1; t1=$(date +%s%N); b1=$(busy_jiffies); p1=$(proc_jiffies "$pid")
    local secs bj client rss line
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1e9}')
    bj=$((p1 - p0)); client=$(get client_cpu_s "$res")
    rss=$(hwm_mb "$pid"); ((hwm_reset)) || rss="$rss(lifetime)"
    ((rc == 0)) || sc="$sc(FAILED)"
    line=$(awk -v l="$label" -v sc="$sc" -v pub="$(get pub_msg_s "$res")" -v cons="$(get cons_msg_s "$res")" \
        -v p50="$(get p50_ms "$res")" -v p99="$(get p99_ms "$res")" -v c99="$(get confirm_p99_ms "$res")" \
        -v bj="$bj" -v all="$((b1 - b0))" -v c="${client:-0}" -v t="$TICK" -v s="$secs" -v rss="$rss" \
        -v sent="$(get sent "$res")" -v got="$(get consumed "$res")" 'BEGIN{
            n = (sent+0 > got+0) ? sent+0 : got+0
            per = "-"; if (n > 0) per = sprintf("%.1f", bj/t*1e6/n)
            other = all/t - bj/t - c; if (other < 0) other = 0
            printf "%s %s %s %s %s %s %s %.0f %.0f %.0f %s %s\n", l, sc, (pub == "" ? "-" : pub),
                (cons == "" ? "-" : cons), (p50 == "" ? "-" : p50), (p99 == "" ? "-" : p99),
                (c99 == "" ? "-" : c99), 100*bj/t/s, 100*c/s, 100*other/s, rss, per }')
    echo "$line"
    printf '%s\t%s\n' "$STAMP" "$(tr ' ' '\t' <<<"$line")" >>"$OUT_DIR/summary.tsv"
}

# restart <label> <uri> <mode> <stop-fn> <start-fn>: fill, stop, start, time until all are back
restart() {
    local label=$1 uri=$2 mode=$3 stop=$4 start=$5 fill res t0
    fill=$("$LOADGEN" fill --uri "$uri" --queue bench-restart --count "$RESTART_N" --size "$SIZE" --purge \
        2>>"$OUT_DIR/raw.log") || { echo "fill failed: $fill" >&2; return 1; }
    echo "# $label restart $mode fill: $fill" >>"$OUT_DIR/raw.log"
    "$stop"
    sleep 1
    t0=$(date +%s%N)
    "$start"
    res=$("$LOADGEN" wait --uri "$uri" --queue bench-restart --expect "$RESTART_N" --since-ns "$t0" \
        --interval-ms 20 --get --timeout 900 2>>"$OUT_DIR/raw.log") || true
    echo "# $label restart $mode wait: $res" >>"$OUT_DIR/raw.log"
    local line="$label $mode $RESTART_N $(get t_connect "$res") $(get t_declare "$res") $(get t_count "$res")"
    line+=" $(get t_first_get "$res") $(get count "$res") $(get wait "$res")"
    echo "$line"
    printf '%s\t%s\n' "$STAMP" "$(tr ' ' '\t' <<<"$line")" >>"$OUT_DIR/recovery.tsv"
}

measure() { # label uri pid-fn stop-fn kill9-fn start-fn await-fn
    local label=$1 uri=$2 pidfn=$3 r sc
    echo "label scenario pub_msg_s cons_msg_s p50_ms p99_ms confirm_p99_ms broker_cpu% client_cpu% other_cpu% broker_peak_rss_mb broker_us_per_msg"
    for ((r = 1; r <= REPEAT; r++)); do
        for sc in $SCENARIOS; do scenario "$label" "$uri" "$($pidfn)" "$sc"; done
    done
    if [[ ${SKIP_RECOVERY:-0} != 1 ]]; then
        echo "label mode N t_connect_s t_declare_s t_count_s t_first_get_s count status"
        restart "$label" "$uri" clean "$4" "$6"; "$7"
        restart "$label" "$uri" kill9 "$5" "$6"; "$7"
        "$LOADGEN" delete --uri "$uri" --queue bench-restart >/dev/null 2>>"$OUT_DIR/raw.log" || true
    fi
}

echo "# $(date -Is) $(nproc) cores; results in $OUT_DIR"
echo "# warren $rev on 127.0.0.1:$PORT, data in $scratch/warren-data"
start_warren; await_warren
WURI="amqp://guest:guest@127.0.0.1:$PORT/%2f"
measure "$WARREN_LABEL" "$WURI" warren_pid_of stop_warren kill9_warren start_warren await_warren
echo "# warren VmHWM (lifetime peak RSS): $(hwm_mb "$warren_pid") MB"
stop_warren

if [[ ${SKIP_RABBITMQ:-0} == 1 ]]; then
    echo "# RabbitMQ skipped (SKIP_RABBITMQ=1)"
elif [[ -n $(rabbit_unavailable) ]]; then
    echo "# RabbitMQ skipped: $(rabbit_unavailable)"
else
    rmq_dir=$(mktemp -d /tmp/warren-compare-rmq.XXXXXX)
    RPORT=$(free_port); DPORT=$(free_port)
    while [[ $DPORT == "$RPORT" || $DPORT == "$PORT" ]]; do DPORT=$(free_port); done
    prepare_rabbit
    echo "# $RABBIT_LABEL node $NODE on 127.0.0.1:$RPORT (distribution port $DPORT), data in $rmq_dir"
    RURI="amqp://guest:guest@127.0.0.1:$RPORT/%2f"
    start_rabbit; await_rabbit
    measure "$RABBIT_LABEL" "$RURI" rmq_pid_of stop_rabbit kill9_rabbit start_rabbit await_rabbit
    echo "# rabbitmq VmHWM (lifetime peak RSS): $(hwm_mb "$rmq_pid") MB"
    cp -r "$rmq_dir/log" "$OUT_DIR/rabbitmq-log" 2>/dev/null || true
    stop_rabbit
fi

python3 - "$OUT_DIR" "$WARREN_LABEL" "$RABBIT_LABEL" "$STAMP" <<'PY'
import statistics, sys
out, warren, rabbit, stamp = sys.argv[1:5]
rows, rec = {}, {}
def lines(name):
    try:
        return [l.rstrip("\n").split("\t") for l in open(f"{out}/{name}") if l.startswith(stamp + "\t")]
    except FileNotFoundError:
        return []
for f in lines("summary.tsv"):
    if len(f) >= 13:
        rows.setdefault((f[1], f[2]), []).append(f[3:])
for f in lines("recovery.tsv"):
    if len(f) >= 10:
        rec.setdefault((f[1], f[2]), []).append(f)
def num(v):
    try:
        return float(v.split("(")[0])
    except ValueError:
        return None
def med(label, sc, i):
    vals = [x for x in (num(r[i]) for r in rows.get((label, sc), [])) if x is not None]
    return statistics.median(vals) if vals else None
def fmt(v):
    return "-" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.2f}")
def ratio(better, worse):
    return "-" if not better or not worse else f"{better / worse:.1f}x"
runs = max((len(v) for v in rows.values()), default=0)
print(f"\nmedians of {runs} run(s); ratio = how many times better Warren is "
      "(rate / rate, else RabbitMQ / Warren)")
print(f"{'scenario':<8} {'metric':<16} {warren:>18} {rabbit:>18} {'ratio':>7}")
metrics = [("pub msg/s", 0, True), ("cons msg/s", 1, True), ("p50 ms", 2, False), ("p99 ms", 3, False),
           ("confirm p99 ms", 4, False), ("peak RSS MB", 8, False), ("CPU us/msg", 9, False)]
for sc in ("S1", "S2", "S3", "S4", "S5", "ST", "FO"):
    if (warren, sc) not in rows:
        continue
    for name, i, higher_better in metrics:
        w, r = med(warren, sc, i), med(rabbit, sc, i)
        if w is None and r is None:
            continue
        print(f"{sc:<8} {name:<16} {fmt(w):>18} {fmt(r):>18} {ratio(w, r) if higher_better else ratio(r, w):>7}")
for mode in ("clean", "kill9"):
    def t(label):
        vals = [num(f[6]) for f in rec.get((label, mode), []) if f[9] == "ok" and num(f[6]) is not None]
        return statistics.median(vals) if vals else None
    if (warren, mode) in rec or (rabbit, mode) in rec:
        w, r = t(warren), t(rabbit)
        print(f"{'restart':<8} {mode + ' s':<16} {fmt(w):>18} {fmt(r):>18} {ratio(r, w):>7}")
PY

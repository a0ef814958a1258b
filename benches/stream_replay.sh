#!/usr/bin/env bash
# benches/stream_replay.sh: reading a long stream from its start.
#
# Builds warren and warren-loadgen (release), starts warren on a free port
# with a scratch data directory, and measures, in one run:
#   1. S1 alone (a durable classic queue, 1 producer with confirms, 1
#      consumer acking, prefetch 100) for S1_SECONDS;
#   2. the fill: N persistent SIZE-byte messages with confirms into a
#      stream (x-queue-type=stream), no consumer;
#   3. the replay: READERS consumers (prefetch 100, acking each) read the
#      whole stream from x-stream-offset=first, while S1 runs again beside
#      them for S1_SECONDS.
# Prints the fill rate, the replay's delivery rate (all readers), the
# broker's resident memory after the fill and its peak during the replay
# (VmHWM, reset through /proc/PID/clear_refs before it), and S1's rates
# alone and during the replay: what a replay costs other queues.
# Only the processes it started are stopped, by PID.
#
# Environment (defaults): N=300000 SIZE=1024 READERS=10 S1_SECONDS=10
#   WARREN=target/release/warren (the broker binary: another build to compare)
#   OUT_DIR=target/bench-results/stream-replay-<date>
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-300000}; SIZE=${SIZE:-1024}; READERS=${READERS:-10}; S1_SECONDS=${S1_SECONDS:-10}
OUT_DIR=${OUT_DIR:-target/bench-results/stream-replay-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT_DIR"
cargo build --release -q -p warren-loadgen --bin warren-loadgen
cargo build --release -q -p warren --bin warren
LOADGEN=target/release/warren-loadgen
WARREN=${WARREN:-target/release/warren}
scratch=$(mktemp -d /tmp/warren-replay.XXXXXX)
pid=""
cleanup() { [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null; rm -rf "$scratch"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$WARREN" --bind 127.0.0.1 --port "$port" --management-port 0 --prometheus-port 0 \
    --data-dir "$scratch/data" >"$OUT_DIR/warren.log" 2>&1 &
pid=$!
for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
uri="amqp://guest:guest@127.0.0.1:$port/%2f"
rss_mb() { awk -v k="$2" '$1==k":"{printf "%.0f", $2/1024}' "/proc/$1/status"; }
get() { tr ' ' '\n' <<<"$2" | awk -F= -v k="$1" '$1==k{print $2}'; }
stream=(--queue replay --queue-args x-queue-type=stream --durable)

alone=$("$LOADGEN" run --uri "$uri" --scenario S1 --size "$SIZE" --duration "$S1_SECONDS" --warmup 1)
fill=$("$LOADGEN" run --uri "$uri" "${stream[@]}" --persistent --confirm 100 --producers 1 --consumers 0 \
    --pmessages "$N" --size "$SIZE")
after_fill=$(rss_mb "$pid" VmRSS)
echo 5 >"/proc/$pid/clear_refs"
"$LOADGEN" run --uri "$uri" "${stream[@]}" --producers 0 --consumers "$READERS" --prefetch 100 \
    --consumer-args x-stream-offset=first --cmessages $((N * READERS)) >"$OUT_DIR/replay.out" &
replay_pid=$!
beside=$("$LOADGEN" run --uri "$uri" --scenario S1 --size "$SIZE" --duration "$S1_SECONDS" --warmup 1)
wait "$replay_pid"
replay=$(cat "$OUT_DIR/replay.out")
peak=$(rss_mb "$pid" VmHWM)
printf '%s\n%s\n%s\n%s\n' "alone: $alone" "fill: $fill" "replay: $replay" "beside: $beside" >"$OUT_DIR/raw.log"
echo "stream of $N x $SIZE B, $READERS readers from first"
echo "fill            $(get pub_msg_s "$fill") msg/s (confirmed)"
echo "replay          $(get cons_msg_s "$replay") deliveries/s over all readers ($(get consumed "$replay") delivered)"
echo "broker RSS      $after_fill MB after the fill, peak $peak MB during the replay"
echo "S1 alone        pub $(get pub_msg_s "$alone") cons $(get cons_msg_s "$alone") msg/s, p99 $(get p99_ms "$alone") ms"
echo "S1 beside it    pub $(get pub_msg_s "$beside") cons $(get cons_msg_s "$beside") msg/s, p99 $(get p99_ms "$beside") ms"

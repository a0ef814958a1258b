# benches/support/rabbitmq-node.sh: a scratch RabbitMQ node for the
# benchmark scripts (sourced by compare.sh and regress.sh).
#
# The caller sets: rmq_dir (a scratch directory), RPORT and DPORT (AMQP and
# distribution ports picked at run time), NODE (node name), RURI (its AMQP
# URI), LOADGEN (warren-loadgen), RMQ_LOG (where rabbitmq-server's output
# goes). The node listens on 127.0.0.1 only, runs no plugins and keeps its
# data and logs in rmq_dir; it is stopped by its PID (rmq_pid), never by
# name. Debian's rabbitmq-server must be started as root (it runs the node
# as user rabbitmq).

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_exit() { # pid: until it is gone (it may not be our child)
    local i
    for ((i = 0; i < 6000; i++)); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    echo "pid $1 still alive after 600 s" >&2; return 1
}
# Why a RabbitMQ node cannot be started here (empty: it can).
rabbit_unavailable() {
    if ! command -v rabbitmq-server >/dev/null; then
        echo "rabbitmq-server is not installed"
    elif [[ $(id -u) != 0 ]]; then
        echo "Debian's rabbitmq-server must be started as root (it runs the node as user rabbitmq)"
    fi
}
rabbit_label() {
    local v; v=$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null | cut -d- -f1)
    echo "rabbitmq${v:+-$v}"
}
# Writes the node's configuration into rmq_dir.
prepare_rabbit() {
    mkdir -p "$rmq_dir/mnesia" "$rmq_dir/log"
    printf '[].\n' >"$rmq_dir/enabled_plugins"
    printf 'listeners.tcp.default = 127.0.0.1:%s\nloopback_users.guest = true\n' "$RPORT" >"$rmq_dir/rabbitmq.conf"
    chown -R rabbitmq:rabbitmq "$rmq_dir"
}
rmq_env() {
    env RABBITMQ_NODENAME="$NODE" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$RPORT" \
        RABBITMQ_DIST_PORT="$DPORT" RABBITMQ_MNESIA_BASE="$rmq_dir/mnesia" RABBITMQ_LOG_BASE="$rmq_dir/log" \
        RABBITMQ_PID_FILE="$rmq_dir/pid" RABBITMQ_ENABLED_PLUGINS_FILE="$rmq_dir/enabled_plugins" \
        RABBITMQ_CONFIG_FILE="$rmq_dir/rabbitmq.conf" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" "$@"
}
beam_pid() { # the beam.smp of our node: from its pid file, else the listener of our port
    local p=""
    [[ -r $rmq_dir/pid ]] && p=$(tr -dc '0-9' <"$rmq_dir/pid")
    if [[ -z $p || ! -r /proc/$p/comm ]] || ! grep -q '^beam' "/proc/$p/comm"; then
        p=$(ss -ltnpH "sport = :$RPORT" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)
    fi
    if [[ -n $p ]] && grep -q '^beam' "/proc/$p/comm" 2>/dev/null \
        && tr '\0' '\n' <"/proc/$p/environ" | grep -qx "RABBITMQ_NODENAME=$NODE"; then echo "$p"; fi
}
start_rabbit() { (cd /tmp && rmq_env rabbitmq-server -detached) >>"$RMQ_LOG" 2>&1; }
await_rabbit() { # until it accepts AMQP connections (the listener opens at the end of the boot)
    local i
    for ((i = 0; i < 2400; i++)); do
        if listening "$RPORT" && "$LOADGEN" delete --uri "$RURI" --queue warren-compare-probe >/dev/null 2>&1; then
            rmq_pid=$(beam_pid); [[ -n $rmq_pid ]] && return 0
        fi
        sleep 0.05
    done
    echo "RabbitMQ did not come up on $RPORT within 120 s, see $rmq_dir/log" >&2; exit 1
}
stop_rabbit() { kill -TERM "$rmq_pid"; wait_exit "$rmq_pid"; rmq_pid=""; }
kill9_rabbit() { kill -9 "$rmq_pid"; wait_exit "$rmq_pid"; rmq_pid=""; }
# Stops the epmd our node started (the node starts it when none runs; it
# outlives the node), found by our node name in its environment: an epmd
# that served other nodes before ours is not ours and is left alone.
stop_our_epmd() {
    local p
    for p in $(pgrep -x epmd || true); do
        tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "RABBITMQ_NODENAME=$NODE" && kill "$p" 2>/dev/null
    done
    return 0
}

# benches/support/warren-cluster.sh: three Warren nodes on loopback for
# the cluster benchmark scripts (sourced by add-member.sh,
# follower-pause.sh and cluster-scenarios.sh).
#
# The caller sets W (the warren binary) and calls prepare with the
# binaries it needs: it checks they are built, makes the scratch directory
# ($scratch, kept with KEEP=1) and an EXIT trap that kills every node
# started here (pids), by PID. start_cluster starts alpha, beta and gamma
# (names[i]), each with an AMQP port (amqp[i]) and a cluster port picked
# at run time, its data directory in $scratch/nI/data and its output and
# log in $scratch/nI/out and $scratch/nI/log.

prepare() { # binaries...
    local b
    for b in "$@"; do [[ -x $b ]] || { echo "$b missing (see the header)" >&2; exit 1; }; done
    scratch=$(mktemp -d)
    pids=()
    trap 'kill -CONT "${pids[@]}" 2>/dev/null; kill -9 "${pids[@]}" 2>/dev/null; [[ -n ${KEEP:-} ]] || rm -rf "$scratch"' EXIT
}

# A port free now, below the kernel's range for outgoing connections: a
# node restarted on its ports would otherwise find one taken meanwhile as
# the local end of another node's connection.
free_port() {
    python3 - <<'PY'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(10000):
    port = random.randrange(10000, low) if low > 10000 else 0
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    print(s.getsockname()[1])
    break
else:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
PY
}

start_warren() { # dir port [more arguments...]: until it listens
    local d=$1 port=$2
    shift 2
    mkdir -p "$d"
    "$W" --bind 127.0.0.1 --port "$port" --management-port 0 --prometheus-port 0 --data-dir "$d/data" "$@" \
        >"$d/out" 2>"$d/log" &
    local pid=$!
    pids+=("$pid")
    until grep -q "^listening on" "$d/out" 2>/dev/null; do
        # A port picked here can be taken meanwhile (another node's
        # outgoing connection): say so rather than wait for good.
        kill -0 "$pid" 2>/dev/null || { echo "warren in $d did not start:" >&2; grep -v '^ ' "$d/log" | tail -3 >&2; exit 1; }
        sleep 0.05
    done
}

start_cluster() {
    names=(alpha@localhost beta@localhost gamma@localhost)
    amqp=()
    local cport=() peers i
    for i in 0 1 2; do amqp[i]=$(free_port); cport[i]=$(free_port); done
    peers=$(for i in 0 1 2; do printf '%s@127.0.0.1:%s,' "${names[i]}" "${cport[i]}"; done)
    for i in 0 1 2; do
        start_warren "$scratch/n$i" "${amqp[i]}" --node-name "${names[i]}" --cluster-port "${cport[i]}" \
            --cluster-peers "${peers%,}" --cluster-cookie-file "$scratch/cookie"
    done
}

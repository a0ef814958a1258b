#!/usr/bin/env bash
# Runs every test Warren has:
#   1. cargo test: codec property tests, broker unit tests, and the
#      integration suites that drive the real `warren` binary with lapin;
#   2. tests/scenarios: the work queue of RabbitMQ's tutorial 2 (the
#      project's own new_task.py / worker.py) across a broker kill -9 (pika);
#   3. tests/console: the web console in headless Chromium (selenium), when
#      Debian's chromium and chromium-driver are installed (.ci/run installs
#      them; skipped with a line saying so otherwise);
#   4. when ../shared is beside this clone (or $WARREN_TUTORIALS is set):
#      the RabbitMQ tutorials 1-7 as pika scenarios against a fresh broker
#      on a free port, with warrenctl as the rabbitmqctl stand-in.
# Steps 2 to 4 run in a Python virtual environment with pika, pytest,
# pytest-timeout and selenium that this script makes on first use
# (target/test-venv).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/test-venv
if ! "$venv/bin/python" -c 'import pika, pytest, pytest_timeout, selenium' 2>/dev/null; then
    echo "making the test Python environment in $venv (pika, pytest, pytest-timeout, selenium)"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check pika pytest pytest-timeout selenium
fi
python=$PWD/$venv/bin/python

cargo test
cargo build --bin warren --bin warrenctl
# The README starts the broker with a bare `cargo run`: it must pick warren.
cargo run -q -- --version >/dev/null

echo "running the work queue across a broker kill -9 (tests/scenarios)"
WARREN_BIN="$PWD/target/debug/warren" WARRENCTL_BIN="$PWD/target/debug/warrenctl" PYTHONDONTWRITEBYTECODE=1 \
    "$python" -m pytest -p no:cacheprovider -q --timeout=180 tests/scenarios

echo "driving the web console in headless Chromium (tests/console; screenshots in target/console-screenshots)"
console=0
WARREN_BIN="$PWD/target/debug/warren" PYTHONDONTWRITEBYTECODE=1 \
    "$python" -m pytest -p no:cacheprovider -q -rs --timeout=180 tests/console || console=$?
# pytest says 5 when the module skipped itself (no Chromium here): it said
# why in a SKIPPED line, and the rest goes on.
[[ $console == 0 || $console == 5 ]] || exit "$console"

# An extra when ../shared is beside this clone: RabbitMQ's tutorials 1-7.
tutorials=${WARREN_TUTORIALS:-../shared/tutorials}
if [[ ! -d $tutorials ]]; then
    echo "SKIPPED: the RabbitMQ tutorial scenarios are not at $tutorials (set WARREN_TUTORIALS); everything else ran" >&2
    exit 0
fi

scratch=$(mktemp -d)
./target/debug/warren --bind 127.0.0.1 --port 0 --management-port 0 --prometheus-port 0 --data-dir "$scratch/data" >"$scratch/stdout" 2>"$scratch/broker.log" &
broker=$!
trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null; rm -rf "$scratch"' EXIT
for _ in $(seq 100); do
    grep -q '^listening on ' "$scratch/stdout" && break
    sleep 0.1
done
port=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$scratch/stdout")
[[ -n $port ]] || { echo "warren did not start:" >&2; cat "$scratch/broker.log" >&2; exit 1; }

echo "running the tutorials against warren on port $port"
AMQP_HOST=127.0.0.1 AMQP_PORT=$port PYTHONDONTWRITEBYTECODE=1 \
TUTORIAL_RABBITMQCTL="$PWD/target/debug/warrenctl --data-dir $scratch/data" \
    "$python" -m pytest -p no:cacheprovider -q --timeout=120 "$tutorials" || {
    echo "tutorials failed; broker log: $scratch/broker.log" >&2
    tail -50 "$scratch/broker.log" >&2
    exit 1
}

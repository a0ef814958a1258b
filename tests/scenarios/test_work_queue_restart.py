"""The work-queue tutorial across a broker crash: new_task.py publishes
persistent tasks to the durable task_queue, the broker is killed with
SIGKILL, restarted on the same data directory, and worker.py still gets
every task; a task a worker held unacked when the broker died comes back
flagged redelivered.

The producer and worker are the project's own (work_queue/new_task.py and
worker.py, beside this file). Environment: WARREN_BIN (the warren binary),
WARRENCTL_BIN.
"""
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pika

WARREN = os.environ["WARREN_BIN"]
WARRENCTL = os.environ["WARRENCTL_BIN"]
SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "work_queue")


class Broker:
    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.proc = None
        self.port = None

    def start(self):
        log = open(os.path.join(os.path.dirname(self.data_dir), "broker.log"), "a")
        self.proc = subprocess.Popen(
            [WARREN, "--bind", "127.0.0.1", "--port", "0", "--management-port", "0", "--prometheus-port", "0", "--data-dir", self.data_dir],
            stdout=subprocess.PIPE, stderr=log, text=True,
        )
        line = self.proc.stdout.readline()
        assert line.startswith("listening on "), f"warren did not start: {line!r}"
        self.port = int(line.rsplit(":", 1)[1])
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def kill9(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def env(self, **extra):
        env = dict(os.environ, AMQP_HOST="127.0.0.1", AMQP_PORT=str(self.port), TASK_QUEUE="task_queue")
        env.update(extra)
        return env

    def counts(self):
        out = subprocess.run(
            [WARRENCTL, "--data-dir", self.data_dir, "list_queues", "-q", "--no-table-headers",
             "name", "messages_ready", "messages_unacknowledged"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
        for line in out.splitlines():
            name, ready, unacked = line.split("\t")
            if name == "task_queue":
                return int(ready), int(unacked)
        return None


def new_task(broker, message):
    out = subprocess.run([sys.executable, os.path.join(SCRIPTS, "new_task.py"), message],
                         env=broker.env(), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert f"[x] Sent {message}" in out.stdout


def start_worker(broker, name, events):
    proc = subprocess.Popen([sys.executable, "-u", os.path.join(SCRIPTS, "worker.py")],
                            env=broker.env(WORKER_NAME=name), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)

    def read():
        for line in proc.stdout:
            if line.startswith("EVENT "):
                events.append(line.rstrip("\n").split(" ", 5))
    threading.Thread(target=read, daemon=True).start()
    return proc


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_tasks_survive_a_broker_kill_between_new_task_and_worker():
    with tempfile.TemporaryDirectory() as scratch:
        broker = Broker(os.path.join(scratch, "data"))
        broker.start()
        try:
            tasks = [f"task-{i}." for i in range(1, 6)]
            for t in tasks:
                new_task(broker, t)
            assert broker.counts() == (5, 0)
            broker.kill9()
            broker.start()
            assert broker.counts() == (5, 0), "persistent tasks must survive kill -9"
            events = []
            worker = start_worker(broker, "w1", events)
            try:
                wait_until(lambda: sum(1 for e in events if e[1] == "done") == 5, 60, "5 tasks done")
                recv = [e for e in events if e[1] == "recv"]
                assert [e[5] for e in recv] == tasks, "publish order is kept across the restart"
                assert all(e[3] == "0" for e in recv), "never-delivered tasks are not flagged redelivered"
                assert all(e[4] == "2" for e in recv), "delivery_mode 2 survives the restart"
                wait_until(lambda: broker.counts() == (0, 0), 10, "queue drained")
            finally:
                worker.kill()
        finally:
            broker.stop()


def test_a_task_held_by_a_worker_comes_back_redelivered_after_a_broker_kill():
    with tempfile.TemporaryDirectory() as scratch:
        broker = Broker(os.path.join(scratch, "data"))
        broker.start()
        try:
            events = []
            worker = start_worker(broker, "w1", events)
            wait_until(lambda: any(e[1] == "ready" for e in events), 20, "worker ready")
            new_task(broker, "slow.........")  # 9 s: still unacked when the broker dies
            new_task(broker, "after")
            wait_until(lambda: any(e[1] == "recv" for e in events), 20, "slow task received")
            assert broker.counts() == (1, 1)
            broker.kill9()
            worker.kill()
            worker.wait(timeout=10)
            broker.start()
            assert broker.counts() == (2, 0), "the unacked task and the queued one are both back"
            events2 = []
            worker2 = start_worker(broker, "w2", events2)
            try:
                first = wait_until(lambda: next((e for e in events2 if e[1] == "recv"), None), 30, "redelivery")
                assert first[5] == "slow.........", "the interrupted task keeps its place at the head"
                assert first[3] == "1", "a task delivered before the crash comes back redelivered"
            finally:
                worker2.kill()
        finally:
            broker.stop()

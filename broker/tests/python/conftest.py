"""Starts a real sluice broker per test on a free loopback port."""

import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, extra=()):
        self.dir = tempfile.mkdtemp(prefix="sluice-py-")
        self.port = free_port()
        self.extra = list(extra)
        self.proc = None
        self.start()

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        self.spawn()
        self.wait_listening()

    def spawn(self):
        binary = os.environ["SLUICE_BIN"]
        args = [binary, "serve",
                "--set", f"listeners=PLAINTEXT://127.0.0.1:{self.port}",
                "--set", f"log.dirs={self.dir}"]
        for item in self.extra:
            args += ["--set", item]
        self.stderr = open(os.path.join(self.dir, "broker.log"), "ab")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.stderr)

    def wait_listening(self, timeout=60):
        # The broker prints one line once it is ready (or exits, closing
        # stdout); wait for it with a deadline.
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        if "listening on" not in line:
            self.kill()
            raise RuntimeError(f"broker did not start within {timeout} s: {line!r}")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def close(self):
        """Kills the broker and removes its directory."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def broker():
    b = Broker()
    yield b
    b.close()


class Cluster:
    """Brokers 1..n (three by default), the first `voters` of them (all by
    default) controller voters and the rest brokers only, with timeouts
    short enough for a test; every process is killed at teardown."""

    def __init__(self, n=3, extra=(), voters=None):
        voters_n = n if voters is None else voters
        ports = set()
        while len(ports) < 2 * n:
            ports.add(free_port())
        ports = sorted(ports)
        voters = ",".join(f"{i + 1}@127.0.0.1:{ports[n + i]}" for i in range(voters_n))
        self.brokers = []
        for i in range(n):
            settings = [
                f"node.id={i + 1}",
                f"listeners=PLAINTEXT://127.0.0.1:{ports[i]},CONTROLLER://127.0.0.1:{ports[n + i]}",
                f"controller.quorum.voters={voters}",
                "controller.quorum.election.timeout.ms=300",
                "broker.heartbeat.interval.ms=100",
                "broker.session.timeout.ms=1000",
                "replica.lag.time.max.ms=1000",
                "process.roles=" + ("broker,controller" if i < voters_n else "broker"),
                *extra,
            ]
            self.brokers.append(Broker.__new__(Broker))
            b = self.brokers[-1]
            b.dir = tempfile.mkdtemp(prefix="sluice-py-cluster-")
            b.port = ports[i]
            b.extra = settings
            b.proc = None
        # Each waits for a quorum before it says it listens: start them all,
        # then wait for each.
        for b in self.brokers:
            b.spawn()
        for b in self.brokers:
            b.wait_listening()

    @property
    def bootstrap(self):
        return ",".join(b.bootstrap for b in self.brokers)

    def kill(self):
        for b in self.brokers:
            b.close()

    def signal(self, node, sig):
        self.brokers[node - 1].proc.send_signal(sig)


@pytest.fixture
def cluster():
    c = Cluster()
    yield c
    c.kill()

"""Starts a real sluice broker per test on a free loopback port."""

import os
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
        binary = os.environ["SLUICE_BIN"]
        args = [binary, "serve",
                "--set", f"listeners=PLAINTEXT://127.0.0.1:{self.port}",
                "--set", f"log.dirs={self.dir}"]
        for item in self.extra:
            args += ["--set", item]
        self.stderr = open(os.path.join(self.dir, "broker.log"), "ab")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.stderr)
        deadline = time.monotonic() + 30
        line = self.proc.stdout.readline().decode()
        if "listening on" not in line or time.monotonic() > deadline:
            raise RuntimeError(f"broker did not start: {line!r}")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def broker():
    b = Broker()
    yield b
    b.kill()
    shutil.rmtree(b.dir, ignore_errors=True)

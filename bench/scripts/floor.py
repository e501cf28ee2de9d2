#!/usr/bin/env python3
"""The floor under a broker's produce and consume costs on this machine.

Produce: a receiver takes bytes from a sender over loopback TCP in 64 KiB
reads, and either drops them or appends them to a file with pwrite: what
any broker that writes through the page cache must at least pay, before
it parses, checks or answers anything. Consume: a sender sends a file
that is in the page cache, in 1 MiB pieces, with sendfile or with read
and send, to a receiver that drops it. Prints the broker side's
CPU-seconds (user + system, from getrusage) per GiB for each mode.

    python3 bench/scripts/floor.py --dir /tmp --gib 2 --rounds 3
"""

import argparse
import os
import resource
import socket
import sys

CHUNK = 64 * 1024


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def send(port: int, total: int) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    buf = b"x" * CHUNK
    sent = 0
    while sent < total:
        sent += s.send(buf)
    s.close()


def drain(port: int) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    buf = bytearray(1 << 20)
    while s.recv_into(buf):
        pass


def with_peer(peer, measure):
    """Runs `peer(port)` in a forked child that connects to a loopback
    listener, and `measure(conn)` on the accepted connection here; returns
    what `measure` returns once the child has exited."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    child = os.fork()
    if child == 0:
        try:
            peer(port)
        finally:
            os._exit(0)
    conn, _ = listener.accept()
    try:
        result = measure(conn)
    finally:
        conn.close()
        os.waitpid(child, 0)
        listener.close()
    return result


def receive_once(path: str | None, total: int) -> float:
    """Receives `total` bytes, dropped or appended to `path`; CPU per GiB."""

    def measure(conn: socket.socket) -> float:
        fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644) if path else -1
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        pos = 0
        start = cpu_s()
        while True:
            n = conn.recv_into(buf)
            if n == 0:
                break
            if fd >= 0:
                os.pwrite(fd, view[:n], pos)
            pos += n
        spent = cpu_s() - start
        if fd >= 0:
            os.close(fd)
            os.unlink(path)
        return spent / (pos / (1 << 30))

    return with_peer(lambda port: send(port, total), measure)


def serve_file_once(path: str, total: int, use_sendfile: bool) -> float:
    """Sends `path` (already cached) over loopback; the sender's CPU per GiB."""

    def measure(conn: socket.socket) -> float:
        fd = os.open(path, os.O_RDONLY)
        piece = 1 << 20
        view = memoryview(bytearray(piece))
        pos = 0
        start = cpu_s()
        while pos < total:
            n = min(piece, total - pos)
            if use_sendfile:
                sent = os.sendfile(conn.fileno(), fd, pos, n)
            else:
                got = os.preadv(fd, [view[:n]], pos)
                conn.sendall(view[:got])
                sent = got
            pos += sent
        spent = cpu_s() - start
        os.close(fd)
        return spent / (pos / (1 << 30))

    return with_peer(drain, measure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp", help="where the written file goes")
    parser.add_argument("--gib", type=float, default=2.0, help="GiB per run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    total = int(args.gib * (1 << 30))
    path = os.path.join(args.dir, f"floor-{os.getpid()}.bin")
    for r in range(1, args.rounds + 1):
        dropped = receive_once(None, total)
        written = receive_once(path, total)
        print(
            f"round {r}: produce: receive only {dropped:.2f} CPU-s/GiB, "
            f"receive + pwrite {written:.2f} CPU-s/GiB"
        )
        sys.stdout.flush()
    # A cached file to serve: written once, read once to be sure.
    with open(path, "wb") as f:
        block = b"y" * (1 << 20)
        for _ in range(total // len(block)):
            f.write(block)
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
    try:
        for r in range(1, args.rounds + 1):
            copied = serve_file_once(path, total, use_sendfile=False)
            spliced = serve_file_once(path, total, use_sendfile=True)
            print(
                f"round {r}: consume: pread + send {copied:.2f} CPU-s/GiB, "
                f"sendfile {spliced:.2f} CPU-s/GiB"
            )
            sys.stdout.flush()
    finally:
        os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The floor under a broker's produce and consume costs on this machine.

Produce: a receiver takes bytes from a sender over loopback TCP in 64 KiB
reads, and either drops them or appends them to a file with pwrite: what
any broker that writes through the page cache must at least pay, before
it parses, checks or answers anything. Consume: a sender sends a file
that is in the page cache, in 1 MiB pieces, with sendfile or with read
and send, to a receiver that drops it. Prints the broker side's
CPU-seconds (user + system, from getrusage) per GiB for each mode.

Replicate (`--replicas N`): the receiver also sends each piece on to N - 1
followers, separate processes that receive it and append it to files of
their own, as a leader and its followers must at least do at replication
factor N (no fetch requests, no acknowledgements, nothing parsed). Prints
the CPU-seconds per GiB of the leader and the followers together at N and
at 1, measured in the same round, and their ratio: the least that
replication multiplies a broker's produce cost by on this machine. Each
writer keeps only its last `--window-mib` (64) MiB in the page cache, as
`sluice dev-cluster`'s brokers do, so the figures include writing back.

    python3 bench/scripts/floor.py --dir /tmp --gib 2 --rounds 3
    python3 bench/scripts/floor.py --dir /tmp --gib 1 --rounds 5 --replicas 3
"""

import argparse
import ctypes
import os
import resource
import socket
import sys

CHUNK = 64 * 1024
# Writes back and drops what lies further behind a writer's end than its
# window, in steps this large (as `sluice.page.cache.window.bytes` does).
WINDOW_STEP = 8 << 20
SYNC_FILE_RANGE_WRITE = 2
LIBC = ctypes.CDLL(None, use_errno=True)


class Appender:
    """Appends to a new file at `path`; with a window, keeps only its last
    `window` bytes in the page cache, writing back and dropping the rest."""

    def __init__(self, path: str, window: int):
        self.path = path
        self.fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
        self.window = window
        self.pos = 0
        self.synced = 0
        self.dropped = 0

    def append(self, data) -> None:
        os.pwrite(self.fd, data, self.pos)
        self.pos += len(data)
        if self.window and self.pos - self.synced >= WINDOW_STEP:
            LIBC.sync_file_range(self.fd, ctypes.c_int64(self.synced),
                                 ctypes.c_int64(self.pos - self.synced), SYNC_FILE_RANGE_WRITE)
            self.synced = self.pos
            behind = self.synced - self.window
            if behind - self.dropped >= WINDOW_STEP:
                os.posix_fadvise(self.fd, self.dropped, behind - self.dropped,
                                 os.POSIX_FADV_DONTNEED)
                self.dropped = behind

    def close(self) -> None:
        os.close(self.fd)
        os.unlink(self.path)


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


def relay(conn: socket.socket, out: Appender, followers: list) -> float:
    """Receives from `conn` until it closes, appending each piece to `out`
    and sending it on to each of `followers`; the CPU-seconds it took."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    start = cpu_s()
    while True:
        n = conn.recv_into(buf)
        if n == 0:
            break
        out.append(view[:n])
        for f in followers:
            f.sendall(view[:n])
    return cpu_s() - start


def follow(port: int, path: str, window: int, report: int) -> None:
    """A follower: receives from the leader at `port`, appends to `path`,
    and writes its CPU-seconds to the pipe `report` when the leader is done."""
    s = socket.create_connection(("127.0.0.1", port))
    out = Appender(path, window)
    spent = relay(s, out, [])
    out.close()
    os.write(report, f"{spent}\n".encode())


def replicate_once(directory: str, total: int, replicas: int, window: int) -> float:
    """Receives `total` bytes from a sender, appends them to a file and
    sends each piece on to `replicas - 1` followers that append it to their
    own; the CPU-seconds per GiB of the leader and followers together."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(replicas)
    port = listener.getsockname()[1]
    children = []
    followers = []
    reports = []
    try:
        for i in range(replicas - 1):
            read_end, write_end = os.pipe()
            child = os.fork()
            if child == 0:
                try:
                    os.close(read_end)
                    listener.close()
                    path = os.path.join(directory, f"floor-{os.getpid()}-{i}.bin")
                    follow(port, path, window, write_end)
                finally:
                    os._exit(0)
            os.close(write_end)
            children.append(child)
            reports.append(read_end)
            followers.append(listener.accept()[0])
        sender = os.fork()
        if sender == 0:
            try:
                listener.close()
                send(port, total)
            finally:
                os._exit(0)
        children.append(sender)
        conn, _ = listener.accept()
        out = Appender(os.path.join(directory, f"floor-{os.getpid()}.bin"), window)
        spent = relay(conn, out, followers)
        conn.close()
        pos = out.pos
        out.close()
        for f in followers:
            f.close()
        for r in reports:
            with os.fdopen(r) as pipe:
                spent += float(pipe.read().strip() or 0)
        reports = []
        return spent / (pos / (1 << 30))
    finally:
        for r in reports:
            os.close(r)
        for f in followers:
            f.close()
        for child in children:
            os.waitpid(child, 0)
        listener.close()


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
    parser.add_argument("--replicas", type=int, default=0,
                        help="measure replication to this many replicas against one, and only that")
    parser.add_argument("--window-mib", type=int, default=64,
                        help="with --replicas: each writer keeps this much of its file in the page "
                        "cache (0: all of it, left to the kernel)")
    args = parser.parse_args()
    total = int(args.gib * (1 << 30))
    if args.replicas > 1:
        ratios = []
        for r in range(1, args.rounds + 1):
            window = args.window_mib << 20
            one = replicate_once(args.dir, total, 1, window)
            many = replicate_once(args.dir, total, args.replicas, window)
            ratios.append(many / one)
            print(
                f"round {r}: receive + pwrite at 1 replica {one:.2f} CPU-s/GiB, "
                f"at {args.replicas} replicas {many:.2f} CPU-s/GiB, ratio {many / one:.2f}"
            )
            sys.stdout.flush()
        ratios.sort()
        print(f"median ratio {ratios[len(ratios) // 2]:.2f}")
        return 0
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

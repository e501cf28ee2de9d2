#!/usr/bin/env python3
"""Peak broker RSS under clients that ask for everything and read nothing.

Starts a sluice broker (the release binary by default) on a free loopback
port and a temporary data directory, fills one partition (1 GiB by
default) through confluent-kafka, then opens 8 connections that each send
16 pipelined Fetch requests with max_bytes = partition_max_bytes = 2^31-1
and never read a byte of the answers. While they sit there (20 s), the
broker's resident memory is sampled from /proc/<pid>/status; its peak
(VmHWM, reset with /proc/<pid>/clear_refs after the fill so the producing
phase does not count) is the figure. Then the connections close, and the
script reports how long the broker took to exit on SIGTERM (queued reads
of closed connections that still run delay it).

Fetch requests are encoded with kafka-python's protocol classes (v4:
isolation level, record batches v2). Only loopback is used.

    python3 bench/scripts/slow_readers.py --broker target/release/sluice
    python3 bench/scripts/slow_readers.py --broker ../wt-before/target/release/sluice --json
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka.protocol.old.fetch import FetchRequest_v4

TOPIC = "slow-readers"
INT32_MAX = 2**31 - 1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kib(pid, field):
    """A `VmRSS`/`VmHWM` line of /proc/<pid>/status, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def start_broker(binary, data_dir, port, settings, log_path):
    args = [binary, "serve",
            "--set", f"listeners=PLAINTEXT://127.0.0.1:{port}",
            "--set", f"log.dirs={data_dir}",
            "--set", "node.id=1"]
    for item in settings:
        args += ["--set", item]
    log = open(log_path, "ab")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log)
    ready = threading.Event()

    def watch():
        for line in proc.stdout:
            if b"listening on" in line:
                ready.set()
        # Keeps draining stdout until the broker exits.

    threading.Thread(target=watch, daemon=True).start()
    if not ready.wait(60):
        proc.kill()
        raise RuntimeError(f"the broker did not start; see {log_path}")
    return proc


def fill(bootstrap, total_bytes, value_bytes):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(TOPIC, num_partitions=1,
                                  replication_factor=1)])[TOPIC].result(timeout=60)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "1",
                         "linger.ms": 20, "batch.size": 1000000,
                         "queue.buffering.max.kbytes": 262144})
    value = b"x" * value_bytes
    count = total_bytes // value_bytes
    failed = []

    def on_delivery(err, _msg):
        if err is not None:
            failed.append(err)

    started = time.monotonic()
    for i in range(count):
        while True:
            try:
                producer.produce(TOPIC, value=value, partition=0, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        if i % 1000 == 0:
            producer.poll(0)
    if producer.flush(300) != 0 or failed:
        raise RuntimeError(f"fill failed: {failed[:3]}")
    return count, time.monotonic() - started


def fetch_frame(correlation, offset, min_bytes, max_wait_ms):
    request = FetchRequest_v4(
        replica_id=-1, max_wait_ms=max_wait_ms, min_bytes=min_bytes, max_bytes=INT32_MAX,
        isolation_level=0, topics=[(TOPIC, [(0, offset, INT32_MAX)])])
    request.with_header(correlation_id=correlation, client_id="slow-reader")
    return request.encode(header=True, framed=True)


def slow_readers(port, connections, pipelined, records, min_bytes, max_wait_ms):
    sockets = []
    for c in range(connections):
        s = socket.create_connection(("127.0.0.1", port))
        frames = []
        for j in range(pipelined):
            n = c * pipelined + j
            # Spread over the partition: every fetch reads different bytes.
            offset = n * records // (connections * pipelined)
            frames.append(fetch_frame(n, offset, min_bytes, max_wait_ms))
        s.sendall(b"".join(frames))
        sockets.append(s)
    return sockets


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_binary = os.path.join(here, "..", "..", "target", "release", "sluice")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default=default_binary, help="the sluice binary")
    parser.add_argument("--fill-bytes", type=int, default=1 << 30)
    parser.add_argument("--value-bytes", type=int, default=64 << 10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--pipelined", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="how long the slow readers sit on their fetches")
    parser.add_argument("--min-bytes", type=int, default=1,
                        help="the fetches' min_bytes (2^31-1 makes them long-polls)")
    parser.add_argument("--max-wait-ms", type=int, default=500,
                        help="the fetches' max_wait_ms")
    parser.add_argument("--rss-cap-mib", type=int, default=6144,
                        help="kill the broker if its RSS passes this (protects the machine)")
    parser.add_argument("--stop-timeout", type=float, default=120,
                        help="how long to wait for the broker to exit on SIGTERM")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra broker settings")
    parser.add_argument("--dir", help="data directory parent (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="sluice-slow-readers-", dir=args.dir)
    port = free_port()
    proc = None
    try:
        proc = start_broker(os.path.abspath(args.broker), os.path.join(work, "data"), port,
                            args.set, os.path.join(work, "broker.log"))
        pid = proc.pid
        bootstrap = f"127.0.0.1:{port}"
        rss_start = status_kib(pid, "VmRSS")
        records, fill_s = fill(bootstrap, args.fill_bytes, args.value_bytes)
        hwm_fill = status_kib(pid, "VmHWM")
        rss_idle = status_kib(pid, "VmRSS")
        # Peak RSS from here on (Linux: "5" resets VmHWM to the current RSS).
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")

        sockets = slow_readers(port, args.connections, args.pipelined, records,
                               args.min_bytes, args.max_wait_ms)
        samples = []
        started = time.monotonic()
        deadline = started + args.seconds
        capped_after = None
        while time.monotonic() < deadline:
            samples.append(status_kib(pid, "VmRSS"))
            if samples[-1] > args.rss_cap_mib * 1024:
                # Protects the machine: the figure is then "above the cap".
                capped_after = time.monotonic() - started
                hwm_slow = status_kib(pid, "VmHWM")
                proc.kill()
                proc.wait()
                break
            time.sleep(0.1)
        else:
            hwm_slow = status_kib(pid, "VmHWM")
        if capped_after is not None:
            result = {
                "broker": os.path.abspath(args.broker),
                "fill_bytes": records * args.value_bytes,
                "connections": args.connections,
                "pipelined": args.pipelined,
                "min_bytes": args.min_bytes,
                "max_wait_ms": args.max_wait_ms,
                "rss_before_readers_mib": rss_idle // 1024,
                "peak_rss_slow_readers_mib": hwm_slow // 1024,
                "killed_above_rss_cap_mib": args.rss_cap_mib,
                "killed_after_seconds": round(capped_after, 1),
            }
            print(json.dumps(result) if args.json else
                  "\n".join(f"{k:28} {v}" for k, v in result.items()))
            return 1
        for s in sockets:
            s.close()
        # The broker still answers a fresh client.
        served = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=60)
        assert TOPIC in served.topics
        rss_after = status_kib(pid, "VmRSS")
        stop_started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=args.stop_timeout)
            stop_s = round(time.monotonic() - stop_started, 1)
        except subprocess.TimeoutExpired:
            code = None
            stop_s = f"over {args.stop_timeout} (killed)"

        result = {
            "broker": os.path.abspath(args.broker),
            "fill_bytes": records * args.value_bytes,
            "fill_seconds": round(fill_s, 1),
            "connections": args.connections,
            "pipelined": args.pipelined,
            "min_bytes": args.min_bytes,
            "max_wait_ms": args.max_wait_ms,
            "seconds": args.seconds,
            "rss_start_mib": rss_start // 1024,
            "peak_rss_during_fill_mib": hwm_fill // 1024,
            "rss_before_readers_mib": rss_idle // 1024,
            "peak_rss_slow_readers_mib": hwm_slow // 1024,
            "max_sampled_rss_mib": max(samples) // 1024,
            "rss_after_close_mib": rss_after // 1024,
            "stop_seconds": stop_s,
            "exit_code": code,
        }
        if args.json:
            print(json.dumps(result))
        else:
            for key, value in result.items():
                print(f"{key:28} {value}")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

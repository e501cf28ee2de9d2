#!/usr/bin/env python3
"""What a buffered write costs as a writer takes more and more page cache.

Writes --gib GiB into one file in 64 KiB pwrites and prints, for every
256 MiB, the writer's CPU-seconds per GiB (getrusage, so sleeps are not
counted) with the Dirty and Writeback figures of /proc/meminfo. With
--window-mib N it does what Sluice's page-cache window does: it starts
writeback of each 4 MiB written (sync_file_range WRITE) and drops from the
cache what lies more than N MiB behind the end, once written back
(sync_file_range WAIT + fadvise DONTNEED; the waits are the writer's, but
sleeping costs no CPU-seconds). The file is removed at the end.

    python3 bench/scripts/fresh_pages.py --dir /path/on/the/disk --gib 6
    python3 bench/scripts/fresh_pages.py --dir /path/on/the/disk --gib 6 --window-mib 512
"""

import argparse
import ctypes
import os
import resource
import time

STEP = 256 << 20
CHUNK = 4 << 20
WRITE = 2
WAIT_BEFORE, WAIT_AFTER = 1, 4

libc = ctypes.CDLL(None, use_errno=True)
libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def meminfo_mib(*keys):
    found = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            if k in keys:
                found[k] = int(v.split()[0]) // 1024
    return [found[k] for k in keys]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--gib", type=float, default=6)
    ap.add_argument("--window-mib", type=int)
    args = ap.parse_args()
    path = os.path.join(args.dir, f"fresh-pages-{os.getpid()}")
    total = int(args.gib * (1 << 30))
    buf = os.urandom(64 << 10)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        pos, started, dropped = 0, 0, 0
        last_cpu, t0 = cpu_s(), time.monotonic()
        while pos < total:
            os.pwrite(fd, buf, pos)
            pos += len(buf)
            if args.window_mib is not None:
                if pos - started >= CHUNK:
                    libc.sync_file_range(fd, started, pos - started, WRITE)
                    started = pos
                edge = pos - (args.window_mib << 20)
                if edge - dropped >= CHUNK:
                    libc.sync_file_range(fd, dropped, edge - dropped, WAIT_BEFORE | WRITE | WAIT_AFTER)
                    os.posix_fadvise(fd, dropped, edge - dropped, os.POSIX_FADV_DONTNEED)
                    dropped = edge
            if pos % STEP == 0:
                now = cpu_s()
                dirty, writeback = meminfo_mib("Dirty", "Writeback")
                print(
                    f"{pos >> 20:6d} MiB  {(now - last_cpu) * (1 << 30) / STEP:5.2f} CPU-s/GiB"
                    f"  {time.monotonic() - t0:5.1f} s  Dirty {dirty} MiB  Writeback {writeback} MiB",
                    flush=True,
                )
                last_cpu = now
    finally:
        os.close(fd)
        os.unlink(path)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Issue 9's two benchmark targets, measured in rounds.

Each round runs, each against a fresh `sluice dev-cluster --brokers 3`
started after a pause (memory freed by the previous run is handed back to
the host of a virtual machine within seconds, and a run that starts
meanwhile pays for it; docs/BENCHMARKS.md):

1. RF=3, acks=all, as fast as it goes;
2. RF=1, acks=1, as fast as it goes;
3. RF=3, acks=all, paced at half of run 1's throughput.

and prints, per round, the ratio of 1 to 2 (target: at least 0.5) and the
p99 acknowledgement latency of 3 (target: at most 10 ms), then the median
of each over the rounds. The machine's state moves both figures by a
third from one hour to the next, so one round says little.

It also prints what the CPU figures show, as the issue asks: the brokers'
and the client's CPU seconds per GiB produced in runs 1 and 2 (summed over
the brokers' processes, which `sluice-bench` reads through `--broker-pid`)
and how many cores they kept busy between them. Three brokers and the client
share the machine's cores, so the ratio of throughputs follows the ratio of
the CPU the two runs spend per GiB.

    cargo build --release -p sluice-broker -p sluice-bench
    python3 bench/scripts/replication_targets.py --rounds 3

Each run is `sluice-bench wire --bootstrap-server B --json --no-engine
--record-size 1024 --batch-size 65536 --linger-ms 5 --partitions 3
--replication-factor 3|1 --acks all|1 --total-bytes 1GiB [--throughput N]`.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time


def start_cluster(sluice, workdir):
    """Starts a dev-cluster; returns (process, bootstrap servers)."""
    out = open(os.path.join(workdir, "dev-cluster.out"), "w+")
    err = open(os.path.join(workdir, "dev-cluster.err"), "w")
    proc = subprocess.Popen(
        [sluice, "dev-cluster", "--brokers", "3", "--dir", workdir],
        stdout=out,
        stderr=err,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dev-cluster exited with {proc.returncode}; see {workdir}")
        out.seek(0)
        for line in out:
            if line.startswith("bootstrap.servers="):
                return proc, line.strip().split("=", 1)[1]
        time.sleep(0.1)
    stop_cluster(proc)
    raise RuntimeError(f"dev-cluster not ready within 60 s; see {workdir}")


def stop_cluster(proc):
    """SIGTERM stops the dev-cluster and its brokers; SIGKILL to all of
    them if that takes over 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def children(pid):
    """The pids of the direct children of `pid`: the dev-cluster's brokers."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # The command name may hold spaces; the fields after it do not.
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def run(args, rf, acks, throughput=None):
    """One benchmark run against a fresh cluster; returns its produce
    figures, the brokers' and the client's CPU seconds, and how busy the
    machine's cores were."""
    time.sleep(args.pause)
    workdir = tempfile.mkdtemp(prefix="sluice-targets-", dir=args.dir)
    proc = None
    try:
        proc, bootstrap = start_cluster(os.path.join(args.bin_dir, "sluice"), workdir)
        cmd = [
            os.path.join(args.bin_dir, "sluice-bench"), "wire",
            "--dir", workdir, "--bootstrap-server", bootstrap, "--json", "--no-engine",
            "--record-size", "1024", "--batch-size", "65536", "--linger-ms", "5",
            "--partitions", "3", "--replication-factor", str(rf), "--acks", acks,
            "--total-bytes", args.total_bytes,
        ]
        if throughput is not None:
            cmd += ["--throughput", str(throughput)]
        for pid in children(proc.pid):
            cmd += ["--broker-pid", str(pid)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"sluice-bench failed ({done.returncode}): {done.stderr[-2000:]}")
        produce = json.loads(done.stdout.strip().splitlines()[-1])["produce"]
        gib = produce["mb_s"] * 1e6 * produce["seconds"] / 2**30
        brokers, client = produce["broker_cpu_s"], produce["client_cpu_s"]
        return {
            "mb_s": produce["mb_s"],
            "p99_ms": produce["ack_p99_us"] / 1000,
            # While producing: the brokers' and the client's CPU seconds
            # per GiB, and how many of the machine's cores they kept busy.
            "brokers_cpu_s_per_gib": brokers / gib,
            "client_cpu_s_per_gib": client / gib,
            "cores": (brokers + client) / produce["seconds"],
        }
    finally:
        if proc is not None:
            stop_cluster(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-dir", default="target/release",
                    help="where the sluice and sluice-bench binaries are")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pause", type=float, default=40, help="seconds before each run")
    ap.add_argument("--total-bytes", default="1GiB")
    ap.add_argument("--dir", default=None, help="parent of the clusters' directories")
    ap.add_argument("--json", action="store_true", help="one JSON object at the end")
    args = ap.parse_args()

    rounds = []
    for n in range(1, args.rounds + 1):
        rf3 = run(args, 3, "all")
        rf1 = run(args, 1, "1")
        half = max(1, round(rf3["mb_s"] / 2))
        paced = run(args, 3, "all", throughput=half)
        row = {
            "round": n,
            "rf3_mb_s": round(rf3["mb_s"], 1),
            "rf1_mb_s": round(rf1["mb_s"], 1),
            "ratio": round(rf3["mb_s"] / rf1["mb_s"], 3),
            "half_mb_s": half,
            "half_p99_ms": round(paced["p99_ms"], 2),
            # What the CPU figures show: the brokers' CPU per GiB at RF=3
            # over that at RF=1, and the cores each maximum run kept busy.
            "rf3_brokers_cpu_s_per_gib": round(rf3["brokers_cpu_s_per_gib"], 2),
            "rf1_brokers_cpu_s_per_gib": round(rf1["brokers_cpu_s_per_gib"], 2),
            "rf3_client_cpu_s_per_gib": round(rf3["client_cpu_s_per_gib"], 2),
            "rf1_client_cpu_s_per_gib": round(rf1["client_cpu_s_per_gib"], 2),
            "rf3_cores": round(rf3["cores"], 2),
            "rf1_cores": round(rf1["cores"], 2),
        }
        rounds.append(row)
        if not args.json:
            print(
                f"round {n}: RF=3 acks=all {row['rf3_mb_s']} MB/s, RF=1 acks=1 {row['rf1_mb_s']} MB/s, "
                f"ratio {row['ratio']} (target >= 0.5); at {half} MB/s p99 {row['half_p99_ms']} ms "
                f"(target <= 10)",
                flush=True,
            )
            print(
                f"  CPU-s per GiB, brokers/client: RF=3 {row['rf3_brokers_cpu_s_per_gib']}/"
                f"{row['rf3_client_cpu_s_per_gib']} on {row['rf3_cores']} cores, RF=1 "
                f"{row['rf1_brokers_cpu_s_per_gib']}/{row['rf1_client_cpu_s_per_gib']} on "
                f"{row['rf1_cores']} cores",
                flush=True,
            )
    summary = {
        "median_ratio": statistics.median(r["ratio"] for r in rounds),
        "median_half_p99_ms": statistics.median(r["half_p99_ms"] for r in rounds),
        "median_brokers_cpu_ratio": statistics.median(
            r["rf3_brokers_cpu_s_per_gib"] / r["rf1_brokers_cpu_s_per_gib"] for r in rounds
        ),
    }
    if args.json:
        print(json.dumps({"rounds": rounds, **summary}))
    else:
        print(
            f"median ratio {summary['median_ratio']:.3f}, median p99 at half "
            f"{summary['median_half_p99_ms']:.2f} ms; the brokers spend "
            f"{summary['median_brokers_cpu_ratio']:.2f}x the CPU per GiB at RF=3 (median)"
        )


def on_sigterm(_signum, _frame):
    # Unwinds through run()'s `finally`, which stops the cluster.
    raise SystemExit(143)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        main()
    except RuntimeError as e:
        print(f"replication_targets: {e}", file=sys.stderr)
        sys.exit(1)

"""Benchmark: reading a capture file, packets per second (not a test).

    python -m bench.bench_read [--packets 2000000] [--runs 3] [--file F] [--json]

Generates a synthetic darknet capture with `bench.synth` (unless --file is given) and
times, each the median of --runs on a warm cache:

- `tcpdump -n -r F -w /dev/null`                     (C, the reference)
- python-libpcap `LibPcap(F, "r", "").read()` loop doing nothing
- sensor.edges._pcap `next_batch(4096)` loop doing nothing
- sensor.edges._pcap `next_batch(4096)` with the sensor's darknet BPF filter
- sensor.edges.pcap `open_file(F).batches()` (the wrapper: Frame named tuples)

Figures from this go in docs/dependencies.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sensor.core.bpf import darknet_filter
from sensor.edges import _pcap
from sensor.edges.pcap import open_file

DARKNET = ["198.51.100.0/24", "2001:db8:dead::/48"]


def count_file(path: str) -> int:
    n = 0
    with _pcap.open_offline(path) as h:
        while (b := h.next_batch(65536)) is not None:
            n += len(b)
    return n


def run_tcpdump(path: str) -> int:
    subprocess.run(["tcpdump", "-n", "-r", path, "-w", "/dev/null"], check=True,
                   capture_output=True)
    return -1  # counted separately


def run_pylibpcap(path: str) -> int:
    from pylibpcap.pcap import LibPcap

    n = 0
    cap = LibPcap(path, "r", "")
    for _ in cap.read():
        n += 1
    cap.close()
    return n


def run_ours(path: str, bpf: str | None = None) -> int:
    n = 0
    with _pcap.open_offline(path) as h:
        if bpf:
            h.setfilter(bpf)
        while (b := h.next_batch(4096)) is not None:
            n += len(b)
    return n


def run_wrapper(path: str) -> int:
    n = 0
    with open_file(path) as src:
        for b in src.batches(4096):
            n += len(b)
    return n


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (tcpdump): robust on a busy host."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], int], runs: int) -> tuple[float, float, int]:
    """Median wall seconds, median CPU seconds, packets."""
    walls, cpus, n = [], [], 0
    for _ in range(runs):
        t, c = time.perf_counter(), cpu_seconds()
        n = fn()
        walls.append(time.perf_counter() - t)
        cpus.append(cpu_seconds() - c)
    return statistics.median(walls), statistics.median(cpus), n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--file", help="use this capture instead of generating one")
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.file
        if path is None:
            path = str(Path(tmp) / "bench.pcap")
            print(f"generating {args.packets} packets with bench.synth ...", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "bench.synth", "--out", path, "--truth",
                            str(Path(tmp) / "truth.json"), "--packets", str(args.packets),
                            "--quiet"], check=True)
        total = count_file(path)
        bpf = darknet_filter(DARKNET)
        cases: list[tuple[str, Callable[[], int]]] = [
            ("tcpdump -n -r F -w /dev/null", lambda: run_tcpdump(path)),
            ("python-libpcap LibPcap.read() loop", lambda: run_pylibpcap(path)),
            ("sensor.edges._pcap next_batch(4096) loop", lambda: run_ours(path)),
            ("sensor.edges._pcap next_batch + darknet BPF", lambda: run_ours(path, bpf)),
            ("sensor.edges.pcap open_file().batches() (Frame)", lambda: run_wrapper(path)),
        ]
        for _, fn in cases:  # warm the page cache and imports
            fn()
        results: list[dict[str, Any]] = []
        for name, fn in cases:
            secs, cpu, n = timed(fn, args.runs)
            n = total if n < 0 else n
            results.append({"method": name, "matched": n, "seconds": round(secs, 4),
                            "packets_per_s": round(total / secs),
                            "packets_per_cpu_s": round(total / cpu) if cpu > 0 else None})
    if args.json:
        print(json.dumps({"file_packets": total, "runs": args.runs, "results": results}))
    else:
        print(f"{total} packets, median of {args.runs} runs, warm cache")
        print(f"{'method':45} {'pkts/s wall':>12} {'pkts/CPU-s':>12} {'matched':>10}")
        for r in results:
            per_cpu = r["packets_per_cpu_s"]
            cpu_txt = f"{per_cpu / 1e6:>10.2f} M" if isinstance(per_cpu, int) else f"{'-':>12}"
            print(f"{r['method']:45} {r['packets_per_s'] / 1e6:>10.2f} M {cpu_txt} "
                  f"{r['matched']:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

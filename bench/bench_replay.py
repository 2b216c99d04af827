"""Benchmark: `teiten replay` end to end next to `tcpdump -r FILE -w /dev/null` (not a test).

    python -m bench.bench_replay [--packets 200000] [--runs 3] [--file F] [--json]

Both read the same generated capture in the same run, warm cache, median of --runs;
the figure that matters is the ratio replay / tcpdump in packets per second.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--file", help="an existing capture instead of a generated one")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pcap = Path(args.file) if args.file else Path(tmp) / "bench.pcap"
        if not args.file:
            print(f"generating {args.packets:,} packets ...", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "bench.synth", "--out", str(pcap), "--truth",
                            str(Path(tmp) / "truth.json"), "--packets", str(args.packets),
                            "--quiet"], check=True, cwd=ROOT)
        frames = int(subprocess.run(
            ["tcpdump", "-n", "-r", str(pcap), "--count"], capture_output=True, text=True,
            check=True).stdout.split()[0])
        tcpdump = timed(["tcpdump", "-n", "-r", str(pcap), "-w", "/dev/null"], args.runs)
        replay = timed([sys.executable, "-m", "sensor.cli", "replay", str(pcap), "--out",
                        str(Path(tmp) / "out")], args.runs)
        startup = timed([sys.executable, "-m", "sensor.cli", "--version"], args.runs)
    result = {
        "frames": frames,
        "tcpdump_pps": round(frames / tcpdump),
        "replay_pps": round(frames / replay),
        "replay_pps_excluding_startup": round(frames / max(replay - startup, 1e-9)),
        "ratio": round(tcpdump / replay, 4),
        "python_startup_s": round(startup, 3),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{'method':<34} {'packets/s':>12} {'ratio to tcpdump':>17}")
        print(f"{'tcpdump -r F -w /dev/null':<34} {result['tcpdump_pps']:>12,} {1.0:>17.3f}")
        print(f"{'teiten replay F --out DIR':<34} {result['replay_pps']:>12,} "
              f"{result['ratio']:>17.4f}")
        print(f"({frames:,} frames; median of {args.runs}; python start-up "
              f"{result['python_startup_s']} s included in replay)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

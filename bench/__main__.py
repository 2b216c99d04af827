"""`make bench`: run every benchmark in turn and print its table (benchmarks, not tests).

    python -m bench [NAME ...]     # default: all of them

Each benchmark is also runnable on its own (`python -m bench.bench_replay --help`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> arguments; defaults sized for this 2-core machine (a few minutes in all).
BENCHMARKS: dict[str, list[str]] = {
    # issue 7's table (tcpdump, C dispatch, replay, live lossless rate, RSS) -> bench/results.md
    "bench_throughput": ["--packets", "1000000", "--runs", "5"],
    "bench_read": ["--packets", "1000000", "--runs", "3"],
    "bench_replay": ["--packets", "200000", "--runs", "3"],
    "bench_pack": ["--packets", "300000", "--rounds", "30"],
    "bench_memory": [],
    "bench_envelope": ["--quick"],
    "bench_e2e": [],
    "bench_regions": [],
    # one day of the 20-sensor fleet (about 2 minutes); the whole quarter, issue 6's figure,
    # is `python -m bench.bench_report --level 3 --work DIR` (about 30 minutes, 26 GB)
    "bench_report": ["--hours", "24", "--level", "3"],
}


def main(argv: list[str]) -> int:
    names = argv or [n for n in BENCHMARKS if (ROOT / "bench" / f"{n}.py").exists()]
    failed = []
    for name in names:
        print(f"\n== {name} ==", flush=True)
        rc = subprocess.run([sys.executable, "-m", f"bench.{name}", *BENCHMARKS.get(name, [])],
                            cwd=ROOT).returncode
        if rc:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Memory of one hour's aggregation state at the source cap (issue 2: under 128 MiB).

Scenarios (records built directly, so only aggregation state is measured):
- `cap`: 262,144 sources (the default cap), each sending 4 SYNs to 4 ports on 4 addresses
  of a /16, plus a few heavy scanners sweeping the whole /16;
- `flood`: 2,000,000 packets from random spoofed sources to random ports and addresses,
  far past the cap (the state must stop growing once the cap is reached).

Reports the process RSS growth (an upper bound on the state: it includes the allocator's
free lists) and, with --trace, tracemalloc's count of the Python heap the state holds.
Run: `python -m bench.bench_memory [--json]`.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import sys
import time
import tracemalloc
from typing import Any

from sensor.core.aggregate import HourAggregator
from sensor.core.limits import Limits
from sensor.core.records import PacketRecord

H = 1_800_000_000 - 1_800_000_000 % 3600
BLOCK16 = 0xC6330000  # 198.51.0.0/16
MiB = 1 << 20


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cap_records(limits: Limits):  # type: ignore[no-untyped-def]
    rng = random.Random(1)
    ts = H * 1_000_000
    for i in range(limits.max_sources):
        src = 0x0B000000 + i * 7
        for k in range(4):
            yield PacketRecord(ts + i, 4, src, BLOCK16 + rng.getrandbits(16), 6, 64, 40, 1,
                               sport=40000, dport=rng.choice((23, 22, 80, 443, 8080, 2323)) + k,
                               tcp_flags=0x02, tcp_seq=rng.getrandbits(32))
    for s in range(8):  # heavy scanners sweeping the /16
        for d in range(65536):
            yield PacketRecord(ts + d, 4, 0x0C000000 + s, BLOCK16 + d, 6, 255, 40, 54321,
                               sport=40000, dport=23, tcp_flags=0x02, tcp_seq=d)


def flood_records(n: int):  # type: ignore[no-untyped-def]
    rng = random.Random(2)
    ts = H * 1_000_000
    for i in range(n):
        yield PacketRecord(ts + i, 4, rng.getrandbits(32), BLOCK16 + rng.getrandbits(16), 6,
                           rng.getrandbits(8), 40, rng.getrandbits(16), sport=1,
                           dport=rng.getrandbits(16), tcp_flags=0x02, tcp_seq=rng.getrandbits(32))


def measure(name: str, records, limits: Limits, trace: bool) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    gc.collect()
    rss0 = rss_mib()
    if trace:  # exact Python-heap accounting, at several times the run time
        tracemalloc.start()
    agg = HourAggregator(H, limits=limits)
    start = time.perf_counter()
    n = 0
    checkpoints = []
    for rec in records:
        agg.add(rec)
        n += 1
        if n % 500_000 == 0:
            used = tracemalloc.get_traced_memory()[0] / MiB if trace else rss_mib() - rss0
            checkpoints.append(round(used, 1))
            print(f"  {name}: {n:,} packets, state {checkpoints[-1]} MiB", file=sys.stderr)
    elapsed = time.perf_counter() - start
    current, peak = tracemalloc.get_traced_memory() if trace else (0, 0)
    tracemalloc.stop()
    summary = agg.finish(sensor_id="bench")
    return {
        "scenario": name,
        "packets": n,
        "sources_rows": len(summary.sources),
        "sources_overflow": summary.sources_overflow,
        "state_mib": round(current / MiB, 1) if trace else None,
        "peak_mib": round(peak / MiB, 1) if trace else None,
        "rss_growth_mib": round(rss_mib() - rss0, 1),
        "state_mib_every_500k": checkpoints,
        "add_per_s": round(n / elapsed),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--flood-packets", type=int, default=2_000_000)
    parser.add_argument("--trace", action="store_true", help="also measure with tracemalloc")
    args = parser.parse_args()
    limits = Limits()
    results = [
        measure("cap", cap_records(limits), limits, args.trace),
        measure("flood", flood_records(args.flood_packets), limits, args.trace),
    ]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'scenario':<8} {'packets':>10} {'rows':>8} {'overflow':>9} {'state MiB':>10} "
              f"{'peak MiB':>9} {'RSS+ MiB':>9} {'add/s':>9}")
        for r in results:
            state, peak = ("-" if v is None else v for v in (r["state_mib"], r["peak_mib"]))
            print(f"{r['scenario']:<8} {r['packets']:>10,} {r['sources_rows']:>8,} "
                  f"{r['sources_overflow']:>9,} {state:>10} {peak:>9} "
                  f"{r['rss_growth_mib']:>9} {r['add_per_s']:>9,}")
        print("bound: 128 MiB per hour of state (issue 2); RSS+ is the process's growth, "
              "an upper bound on the state")
    return 0


if __name__ == "__main__":
    sys.exit(main())

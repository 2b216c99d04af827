"""Region lookups per second over a table the size of the real RIR data.

The five RIRs' delegated files hold about 200,000 counted IPv4 ranges and 100,000 IPv6
ranges; this builds tables of that size from random non-overlapping ranges (labels drawn
from 200 countries) and times three ways of asking:

- `lookup(bytes)`: one address at a time (bisect over a list of ints), as a caller that
  has one address would;
- `lookup_many(list[bytes])`: what the rollup uses for one summary's source list (IPv4
  batched through numpy's searchsorted, IPv6 by bisect);
- `lookup_v4_batch(uint32 array)`: the batch core alone.

    .venv/bin/python -m bench.bench_regions [--lookups 2000000] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import numpy as np

from central.regions import Delegation, RegionTable


def make_table(v4: int, v6: int, seed: int = 1) -> RegionTable:
    rnd = random.Random(seed)
    ccs = [f"{chr(65 + i // 26)}{chr(65 + i % 26)}" for i in range(200)]
    regs = ["afrinic", "apnic", "arin", "lacnic", "ripencc"]
    recs: list[Delegation] = []
    starts = sorted(rnd.sample(range(1 << 24, 224 << 24, 256), v4))
    for s, nxt in zip(starts, [*starts[1:], 224 << 24], strict=True):
        size = rnd.randint(256, max(256, min(nxt - s, 1 << 20)))
        recs.append(Delegation(4, s, s + size - 1, rnd.choice(ccs), rnd.choice(regs)))
    for s in sorted(rnd.sample(range(0x2001 << 16, 0x2C10 << 16), v6)):
        base = s << 96
        recs.append(Delegation(6, base, base + (1 << 96) - 1, rnd.choice(ccs), rnd.choice(regs)))
    return RegionTable.build(recs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lookups", type=int, default=2_000_000)
    ap.add_argument("--v4-ranges", type=int, default=200_000)
    ap.add_argument("--v6-ranges", type=int, default=100_000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    t0 = time.perf_counter()
    table = make_table(a.v4_ranges, a.v6_ranges)
    build_s = time.perf_counter() - t0
    rnd = np.random.default_rng(2)
    ints = rnd.integers(1 << 24, 224 << 24, size=a.lookups, dtype=np.uint32)
    addrs = [int(x).to_bytes(4, "big") for x in ints.tolist()]

    lookup = table.lookup
    t0 = time.perf_counter()
    hits = 0
    for addr in addrs:
        if lookup(addr) is not None:
            hits += 1
    single_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    chunk = 20_000  # one busy /24 hour's source list at a time, as the rollup does
    for i in range(0, len(addrs), chunk):
        table.lookup_many(addrs[i : i + chunk])
    many_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    labs = table.lookup_v4_batch(ints)
    batch_s = time.perf_counter() - t0
    assert int((labs >= 0).sum()) == hits

    t0 = time.perf_counter()
    slash24_build = table._build_slash24()  # what lookup_v4_many builds on first use
    table._slash24 = slash24_build
    slash24_build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, len(ints), chunk):  # the rollup's path: a /24 table
        part = table.lookup_v4_many(ints[i : i + chunk])
        assert (part == labs[i : i + chunk]).all()
    slash24_s = time.perf_counter() - t0

    v6 = [((0x2001 << 112) + int(x) * (1 << 90)).to_bytes(16, "big") for x in ints[:200_000]]
    t0 = time.perf_counter()
    for addr in v6:
        lookup(addr)
    v6_s = time.perf_counter() - t0

    res = {
        "ipv4_ranges": table.stats.ipv4_ranges,
        "ipv6_ranges": table.stats.ipv6_ranges,
        "build_s": round(build_s, 2),
        "lookups": a.lookups,
        "hit_share": round(hits / a.lookups, 3),
        "single_ipv4_per_s": round(a.lookups / single_s),
        "lookup_many_ipv4_per_s": round(a.lookups / many_s),
        "batch_ipv4_per_s": round(a.lookups / batch_s),
        "slash24_build_s": round(slash24_build_s, 2),
        "slash24_ipv4_per_s": round(a.lookups / slash24_s),
        "single_ipv6_per_s": round(len(v6) / v6_s),
    }
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in res.items():
            print(f"{k:24} {v:>14,}" if isinstance(v, int) else f"{k:24} {v:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

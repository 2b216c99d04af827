"""A quarter of 20 busy /24 sensors: store, roll up and report.

The issue's scale: 20 sensors, hourly summaries for a quarter (90 days: 43,200 summaries),
100,000 packets and 20,000 sources per sensor-hour.  Two measurements:

1. **The real path, per sensor-hour** (`--sample` summaries, default 20): a `Summary` with
   20,000 source rows and 2,000 port rows is sealed with a test key, then received the
   real way (`uplink.receiver.Ingest.handle`: verify the signature, decompress, decode,
   `Store.store_summary` with its fsync-ed transaction), then rolled up (decode again,
   regions of all 20,000 sources by batch lookup, aggregates written).  The time per
   sensor-hour times 43,200 is what the quarter costs at the central site; it is spread over
   the quarter (20 envelopes an hour), not paid at report time.
2. **The report over a full quarter**: the aggregate tables are filled directly at the size
   the rollup leaves for that quarter (43,200 hour rows; 3,000 ports per sensor-day;
   150 regions per sensor-day; `--sources` distinct sources fleet-wide, 3 million by
   default; the previous quarter's totals too), then `compute_report` + `write_report`
   run exactly as `teiten central report` does.  This is the number to hold under 60 s.

    .venv/bin/python -m bench.bench_report [--sample 20] [--sources 3000000] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.bench_regions import make_table
from central.regions import RegionTable
from central.report import compute_report, write_report
from central.report_cli import rollup
from central.rollup import quarter_bounds
from central.store import Store
from sensor.summary import PortRow, SourceRow, Summary, encode_summary
from uplink.envelope import seal
from uplink.keys import Keyring, public_key_text
from uplink.receiver import Ingest
from uplink.session import topic

QUARTER = "2025Q1"
SENSORS = 20
PORTS_PER_HOUR = 2000


def busy_summary(sid: str, hour: int, rnd: random.Random, pool: Any) -> Summary:
    """100,000 packets from 20,000 sources to 2,000 ports: a busy /24 hour."""
    us = hour * 1_000_000
    addrs = pool[rnd.randrange(0, len(pool) - 20_000):][:20_000]
    sources = []
    for a in addrs.tolist():
        first = us + rnd.randrange(3_600_000_000)
        sources.append(SourceRow(int(a).to_bytes(4, "big"), 5, 300, first,
                                 min(first + rnd.randrange(600_000_000), us + 3_599_999_999),
                                 2, 3, 50, rnd.choice((0, 0, 0, 1, 2, 4))))
    ports = [PortRow(6, p, 40, 2400, 4 if p > 30000 else 0, 8)
             for p in sorted(rnd.sample(range(1, 65536), PORTS_PER_HOUR - 1))]
    ports.append(PortRow(6, 23, 100_000 - 40 * (PORTS_PER_HOUR - 1), 1_000_000, 0, 900))
    return Summary(
        sensor_id=sid, hour_start=hour, bucket_seconds=3600, darknet=("192.0.2.0/24",),
        packets=100_000, bytes=6_000_000, fragments=0, sources_distinct=20_000,
        sources_distinct_estimated=False, sources_overflow=0, destinations_overflow=0,
        ports=tuple(ports), icmp_codes=(), sources=tuple(sources), destinations=(),
        tcp_flags=(), ttl=(), sizes=(), fingerprints={"mirai": 20_000, "zmap": 20_000},
        backscatter={"tcp_synack": 1000}, malformed={}, health={"partial": False},
    )


def real_path(n: int, table: RegionTable, work: Path) -> dict[str, Any]:
    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bench").digest())
    keys = work / "sensors.toml"
    keys.write_text("".join(f'[sensors.s-{i:02d}]\npublic_key = '
                            f'"{public_key_text(key.public_key())}"\n' for i in range(SENSORS)))
    rnd = random.Random(1)
    pool = np.random.default_rng(1).integers(1 << 24, 224 << 24, 3_000_000, dtype=np.uint32)
    start, _ = quarter_bounds(QUARTER)
    envs = []
    t0 = time.perf_counter()
    for i in range(n):
        sid, hour = f"s-{i % SENSORS:02d}", start + 3600 * (i // SENSORS)
        raw = encode_summary(busy_summary(sid, hour, rnd, pool))
        envs.append((sid, seal(raw, sensor_id=sid, sequence=(1 << 32) + i, hour_start=hour,
                               created_us=(hour + 3600) * 1_000_000, key=key), len(raw)))
    make_s = time.perf_counter() - t0
    with Store(work / "real.db") as store:
        store.save_regions(list(table.rows()), ["bench"], [])
        ingest = Ingest(store, keys, max_summary_bytes=1 << 26, keyring=Keyring.from_toml(keys))
        t0 = time.perf_counter()
        for sid, env, _ in envs:
            reply = ingest.handle(topic(sid, "summary"), env)
            assert reply is not None and reply.status == "stored"
        ingest_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rolled = rollup(store)
        rollup_s = time.perf_counter() - t0
    per_hour = (ingest_s + rollup_s) / n
    return {
        "sample_sensor_hours": n,
        "summary_bytes": envs[0][2],
        "envelope_bytes": len(envs[0][1]),
        "make_and_seal_s_per_hour": round(make_s / n, 3),
        "ingest_s_per_hour": round(ingest_s / n, 3),
        "rollup_s_per_hour": round(rollup_s / rolled, 3),
        "central_s_per_hour": round(per_hour, 3),
        "quarter_ingest_and_rollup_h": round(per_hour * SENSORS * 2160 / 3600, 2),
        "fleet_load_share": round(per_hour * SENSORS / 3600, 4),
    }


def fill_quarter(store: Store, sources: int) -> dict[str, int]:
    """Aggregate tables of a full quarter (and the previous one's totals), directly."""
    db = store._db  # bench only: fill tables at full size without a day of rollups
    rng = np.random.default_rng(3)
    start, end = quarter_bounds(QUARTER)
    pstart, _ = quarter_bounds("2024Q4")
    sensors = [f"s-{i:02d}" for i in range(SENSORS)]
    ccs = [f"{chr(65 + i // 26)}{chr(65 + i % 26)}" for i in range(150)]
    counts = {}
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO rollup_hours VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        ((s, h, start + 3600 * h, 3600, 0, 100_000, 1000, 20_000, 0, 0, 0, 0, 0)
         for s in sensors for h in range((end - start) // 3600)))
    days = range(start // 86400, end // 86400)
    ports = np.arange(1, 65536)
    n = 0
    for d in days:
        for s in sensors:
            ps = rng.choice(ports, 3000, replace=False)
            pk = rng.zipf(1.3, 3000).clip(1, 100_000) * 10
            db.executemany("INSERT INTO daily_port VALUES (6,?,?,?,?,0)",
                           zip(ps.tolist(), [d] * 3000, [s] * 3000, pk.tolist(), strict=True))
            n += 3000
    counts["daily_port"] = n
    for q, qs in ((QUARTER, start), ("2024Q4", pstart)):
        for s in sensors:
            ps = rng.choice(ports, 20_000, replace=False)
            pk = rng.zipf(1.3, 20_000).clip(1, 10**7) * 100
            db.executemany("INSERT INTO quarter_port VALUES (?,?,6,?,?,0)",
                           ((q, s, p, v) for p, v in zip(ps.tolist(), pk.tolist(),
                                                         strict=True)))
        for d in range(qs // 86400, qs // 86400 + 90):
            for s in sensors:
                db.executemany("INSERT INTO daily_region VALUES (?,?,?,'apnic',?)",
                               ((d, s, cc, int(v)) for cc, v in
                                zip(ccs, rng.zipf(1.5, len(ccs)) * 100, strict=True)))
    counts["quarter_port"] = 2 * SENSORS * 20_000
    counts["daily_region"] = 2 * 90 * SENSORS * len(ccs)
    db.executemany("INSERT INTO daily_counter VALUES (?,?,?,?)",
                   ((d, s, name, v) for d in days for s in sensors
                    for name, v in (("packets", 2_400_000), ("backscatter", 24_000),
                                    ("backscatter:tcp_synack", 24_000), ("fp:mirai", 480_000),
                                    ("fp:zmap", 480_000), ("fp:masscan", 10_000))))
    addrs = rng.choice(np.arange(1 << 24, 224 << 24, 37, dtype=np.uint32), sources,
                       replace=False)
    firsts = rng.integers(start * 10**6, end * 10**6, sources)
    lives = (rng.exponential(30, sources) * 3600 * 10**6).astype(np.int64)
    lasts = np.minimum(firsts + lives, end * 10**6 - 1)
    fps = rng.choice([0, 0, 0, 1, 2, 4], sources)
    db.executemany("INSERT INTO source_life VALUES (?,?,?,?,?,?)",
                   ((QUARTER, int(a).to_bytes(4, "big"), int(f), int(last), 10, int(fp))
                    for a, f, last, fp in zip(addrs.tolist(), firsts.tolist(), lasts.tolist(),
                                              fps.tolist(), strict=True)))
    counts["source_life"] = sources
    db.execute("COMMIT")
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", type=int, default=20, help="sensor-hours through the real path")
    ap.add_argument("--sources", type=int, default=3_000_000,
                    help="distinct sources in the quarter, fleet-wide")
    ap.add_argument("--dir", help="work folder (default: a temporary one)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    work = Path(a.dir or tempfile.mkdtemp(prefix="teiten-bench-report-"))
    work.mkdir(parents=True, exist_ok=True)
    table = make_table(200_000, 100_000)
    res: dict[str, Any] = {"real_path": real_path(a.sample, table, work)}
    with Store(work / "quarter.db") as store:
        t0 = time.perf_counter()
        res["filled"] = fill_quarter(store, a.sources)
        res["fill_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    with Store(work / "quarter.db") as store:
        data = compute_report(store, QUARTER)
    t1 = time.perf_counter()
    write_report(data, work / "report", "en")
    t2 = time.perf_counter()
    res["report_compute_s"] = round(t1 - t0, 2)
    res["report_render_s"] = round(t2 - t1, 2)
    res["report_total_s"] = round(t2 - t0, 2)
    res["db_bytes"] = (work / "quarter.db").stat().st_size
    res["work"] = str(work)
    print(json.dumps(res, indent=2) if a.json else "\n".join(
        f"{k:28} {v}" for k, v in _flat(res)))
    return 0


def _flat(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append((prefix + k, v))
    return out


if __name__ == "__main__":
    sys.exit(main())

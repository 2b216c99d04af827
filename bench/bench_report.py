"""A quarter of 20 busy /24 sensors through the real central path: store, roll up, report.

The issue's scale: 20 sensors, hourly summaries for a quarter (90 days: 43,200 summaries),
100,000 packets and 20,000 sources per sensor-hour.  Phases, each timed on its own:

1. **make** (not part of the figure): sealed envelopes as the sensors would send them, built
   with the sensor's own encoder (`encode_summary`) and sealer (`seal_payload`: zstd at the
   sensor's level 9 unless `--level` says otherwise, Ed25519), written once to
   `WORK/envelopes-*.bin` and reused by later runs.  Sources are drawn from a pool of
   `--pool` addresses (3 million by default), so the same scanners come back across hours
   and sensors as they do in a real telescope; ports are 2,000 a sensor-hour, port 23 the
   busiest.
2. **store**: every envelope through the receiver's `Ingest.handle`, exactly as an MQTT
   message is handled (topic check, envelope parse, Ed25519 verify, capped decompression,
   the summary check, `Store.store_summary` in its own fsync-ed transaction).
3. **rollup**: `central report`'s rollup (`roll_up_pending`), with a 200,000-range IPv4 and
   100,000-range IPv6 region table.
4. **report**: `compute_report` + `write_report` (md, html, PNG figures) for the quarter.

The figure the issue asks for is store + rollup + report.  `--hours 24` runs one day of
the fleet in a minute, for a quick look.

    .venv/bin/python -m bench.bench_report [--hours 2160] [--sensors 20] [--work DIR] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.bench_regions import make_table
from central.keyring import load_keyring
from central.receiver import Ingest
from central.report import compute_report, write_report
from central.rollup import quarter_bounds
from central.rollup_job import roll_up_pending
from central.store import Store
from wire.envelope import ZSTD_LEVEL, compress_summary, parse_envelope, seal_payload
from wire.keys import public_key_text
from wire.summary import PortRow, SourceRow, Summary, encode_summary
from wire.topics import topic

QUARTER = "2025Q1"
PORTS_PER_HOUR = 2000
_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bench").digest())


def busy_summary(sid: str, hour: int, rng: np.random.Generator, pool: Any,
                 sources: int = 20_000, packets: int = 100_000) -> Summary:
    """`packets` packets from `sources` sources to 2,000 ports: a busy /24 hour."""
    us = hour * 1_000_000
    addrs = rng.choice(pool, sources, replace=False)
    first = us + rng.integers(0, 3_600_000_000, sources)
    last = np.minimum(first + rng.integers(0, 600_000_000, sources), us + 3_599_999_999)
    per = np.full(sources, packets // sources)
    per[: packets - int(per.sum())] += 1
    fps = rng.choice(np.array([0, 0, 0, 1, 2, 4]), sources)
    rows = list(map(
        SourceRow, [int(a).to_bytes(4, "big") for a in addrs.tolist()], per.tolist(),
        (per * 60).tolist(), first.tolist(), last.tolist(), [2] * sources, [3] * sources,
        [50] * sources, fps.tolist(),
    ))
    ports = [PortRow(6, p, 40, 2400, 4 if p > 30000 else 0, 8)
             for p in sorted(rng.choice(np.arange(1024, 65536), PORTS_PER_HOUR - 1,
                                        replace=False).tolist())]
    ports.append(PortRow(6, 23, packets - 40 * (PORTS_PER_HOUR - 1), 1_000_000, 0, 900))
    mirai, zmap = (int((fps & b).astype(bool) @ per) for b in (1, 2))
    return Summary(
        sensor_id=sid, hour_start=hour, bucket_seconds=3600, darknet=("192.0.2.0/24",),
        packets=packets, bytes=packets * 60, fragments=0, sources_distinct=sources,
        sources_distinct_estimated=False, sources_overflow=0, destinations_overflow=0,
        ports=tuple(ports), icmp_codes=(), sources=tuple(rows), destinations=(),
        tcp_flags=(), ttl=(), sizes=(), fingerprints={"mirai": mirai, "zmap": zmap},
        backscatter={"tcp_synack": 1000}, malformed={},
        health={"partial": False, "capture_dropped": 0, "clock_synchronized": True},
    )


def _sid(i: int) -> str:
    return f"s-{i:02d}"


def _make_chunk(job: tuple[int, int, int, int, int, int, int]) -> bytes:
    """Envelopes of hours [h0, h1) for every sensor, length-prefixed."""
    h0, h1, sensors, pool_size, sources, packets, level = job
    pool = np.random.default_rng(1).integers(1 << 24, 224 << 24, pool_size, dtype=np.uint32)
    start, _ = quarter_bounds(QUARTER)
    out = bytearray()
    for h in range(h0, h1):
        rng = np.random.default_rng(1000 + h)
        for i in range(sensors):
            hour = start + 3600 * h
            raw = encode_summary(busy_summary(_sid(i), hour, rng, pool, sources, packets))
            env = seal_payload(compress_summary(raw, level=level), sensor_id=_sid(i),
                               sequence=(1 << 32) + h, hour_start=hour,
                               created_us=(hour + 3600) * 1_000_000, key=_KEY)
            out += struct.pack("<I", len(env)) + env
    return bytes(out)


def make_envelopes(path: Path, hours: int, sensors: int, pool: int, sources: int,
                   packets: int, level: int, jobs: int) -> float:
    if path.exists():
        return 0.0
    t0 = time.perf_counter()
    step = 6
    work = [(h, min(h + step, hours), sensors, pool, sources, packets, level)
            for h in range(0, hours, step)]
    tmp = path.with_suffix(".part")
    with tmp.open("wb") as f, multiprocessing.Pool(jobs) as p:
        for n, chunk in enumerate(p.imap(_make_chunk, work), 1):
            f.write(chunk)
            _progress(f"make: {min(n * step, hours)}/{hours} hours")
    tmp.rename(path)
    print(file=sys.stderr)
    return time.perf_counter() - t0


def read_envelopes(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while head := f.read(4):
            (n,) = struct.unpack("<I", head)
            yield f.read(n)


def _progress(text: str) -> None:
    if sys.stderr.isatty():
        print(f"\r{text}", end="", file=sys.stderr, flush=True)


def run(work: Path, hours: int, sensors: int, pool: int, sources: int, packets: int,
        level: int, jobs: int) -> dict[str, Any]:
    envs = work / f"envelopes-{hours}h-{sensors}s-{pool}p-{sources}x{packets}-z{level}.bin"
    make_s = make_envelopes(envs, hours, sensors, pool, sources, packets, level, jobs)
    keys = work / "sensors.toml"
    keys.write_text("".join(f'[sensors.{_sid(i)}]\npublic_key = '
                            f'"{public_key_text(_KEY.public_key())}"\n' for i in range(sensors)))
    db = work / "central.db"
    for p in (db, db.with_suffix(".db-wal"), db.with_suffix(".db-shm")):
        p.unlink(missing_ok=True)
    table = make_table(200_000, 100_000)
    total = hours * sensors
    res: dict[str, Any] = {
        "sensors": sensors, "hours": hours, "summaries": total,
        "sources_per_summary": sources, "packets_per_summary": packets,
        "source_pool": pool, "zstd_level": level, "envelopes_bytes": envs.stat().st_size,
    }
    if make_s:
        res["make_s"] = round(make_s, 1)
    with Store(db) as store:
        store.save_regions(list(table.rows()), ["bench"], [])
        ingest = Ingest(store, keys, max_summary_bytes=1 << 26, keyring=load_keyring(keys))
        t0 = time.perf_counter()
        for n, env in enumerate(read_envelopes(envs), 1):
            reply = ingest.handle(topic(parse_envelope(env).sensor_id, "summary"), env)
            assert reply is not None and reply.status == "stored", reply
            if n % 200 == 0:
                _progress(f"store: {n}/{total} summaries, {time.perf_counter() - t0:.0f} s")
        store_s = time.perf_counter() - t0
        print(file=sys.stderr)
        t0 = time.perf_counter()
        rolled = roll_up_pending(store, table, progress=lambda d: _progress(
            f"rollup: {d}/{total} summaries, {time.perf_counter() - t0:.0f} s"))
        rollup_s = time.perf_counter() - t0
        print(file=sys.stderr)
        assert rolled == total
        res["source_life_rows"] = store.count_addresses()
    t0 = time.perf_counter()
    with Store(db) as store:
        data = compute_report(store, QUARTER)
    files = write_report(data, work / "report", "en")
    report_s = time.perf_counter() - t0
    res.update(
        store_s=round(store_s, 1), rollup_s=round(rollup_s, 1), report_s=round(report_s, 1),
        store_ms_per_summary=round(1000 * store_s / total, 2),
        rollup_ms_per_summary=round(1000 * rollup_s / total, 2),
        stored_and_reported_s=round(store_s + rollup_s + report_s, 1),
        db_bytes=db.stat().st_size, report_files=len(files), work=str(work),
    )
    if hours < 2160:
        per = (store_s + rollup_s) / total
        res["quarter_estimate_s"] = round(per * 20 * 2160 + report_s, 1)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=int, default=2160, help="hours of the quarter (2160: all)")
    ap.add_argument("--sensors", type=int, default=20)
    ap.add_argument("--pool", type=int, default=3_000_000, help="distinct source addresses")
    ap.add_argument("--sources", type=int, default=20_000, help="sources per sensor-hour")
    ap.add_argument("--packets", type=int, default=100_000, help="packets per sensor-hour")
    ap.add_argument("--level", type=int, default=ZSTD_LEVEL,
                    help=f"zstd level of the made envelopes (the sensor's: {ZSTD_LEVEL}; "
                         "3 makes them 5x faster and 7%% bigger)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="processes making envelopes")
    ap.add_argument("--work", help="work folder, kept (default: a temporary one)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    work = Path(a.work or tempfile.mkdtemp(prefix="teiten-bench-report-"))
    work.mkdir(parents=True, exist_ok=True)
    res = run(work, a.hours, a.sensors, a.pool, a.sources, a.packets, a.level, a.jobs)
    print(json.dumps(res, indent=2) if a.json else "\n".join(
        f"{k:28} {v}" for k, v in res.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

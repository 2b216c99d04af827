"""The rollup's new aggregates (schema 4) are the same from the fast and the reference path:
sources per port and day, fleet-wide distinct sources per region and day (KMV sets), and
labelled sightings; and the KMV count is exact below K and close above it."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import numpy as np

from central.labels import LabelEntry, LabelSet
from central.regions import Delegation, RegionTable
from central.rollup import KMV_K, kmv, kmv_count, source_hashes
from central.rollup_job import roll_up_pending
from central.store import Store
from wire.summary import PortRow, SourceRow, Summary, encode_summary

HOUR = 1_735_689_600
REGIONS = RegionTable.build([
    Delegation(4, 0x01000000, 0x01FFFFFF, "JP", "apnic"),
    Delegation(4, 0x02000000, 0x02FFFFFF, "NL", "ripencc"),
    Delegation(6, 0x2001_0200 << 96, (0x2001_0200 << 96) + (1 << 96) - 1, "JP", "apnic"),
])
LABELS = LabelSet({
    "a": [LabelEntry(4, 0x01000000, 0x010000FF, 1), LabelEntry(4, 0x02000005, 0x02000005, 2)],
    "b": [LabelEntry(6, 0x2001_0200 << 96, (0x2001_0200 << 96) + 255, 3)],
})


def summary(rnd: random.Random, sid: str, hour: int) -> Summary:
    us = hour * 1_000_000
    addrs: set[bytes] = set()
    while len(addrs) < 40:
        kind = rnd.random()
        if kind < 0.6:
            addrs.add(bytes([rnd.choice([1, 2, 3]), 0, 0, rnd.randrange(256)]))
        else:
            addrs.add(((0x2001_0200 << 96) + rnd.randrange(512)).to_bytes(16, "big"))
    sources = tuple(SourceRow(a, 1 + rnd.randrange(50), 60, us + 5, us + 900, 1, 1, 50, 0)
                    for a in sorted(addrs, key=lambda a: (len(a), a)))
    ports = tuple(PortRow(6, p, 10 + p, 600, 0, 1 + rnd.randrange(9), rnd.random() < 0.2)
                  for p in sorted(rnd.sample(range(1, 100), 8)))
    return Summary(
        sensor_id=sid, hour_start=hour, bucket_seconds=3600, darknet=("192.0.2.0/24",),
        packets=sum(p.packets for p in ports), bytes=1, fragments=0, sources_distinct=40,
        sources_distinct_estimated=False, sources_overflow=0, destinations_overflow=0,
        ports=ports, icmp_codes=(), sources=sources, destinations=(), tcp_flags=(), ttl=(),
        sizes=(), fingerprints={}, backscatter={}, malformed={}, health={})


def dump(path: Path) -> dict[str, list[tuple[object, ...]]]:
    db = sqlite3.connect(path)
    out = {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall())
           for t in ("daily_port_src", "daily_region_src", "label_daily")}
    db.close()
    return out


def test_fast_and_reference_rollups_write_the_same_new_tables(tmp_path: Path) -> None:
    rnd = random.Random(3)
    summaries = [summary(rnd, sid, HOUR + 3600 * h) for h in range(30)
                 for sid in ("tokyo-01", "osaka-02")]
    for name, reference in (("fast.db", False), ("ref.db", True)):
        with Store(tmp_path / name) as store:
            for lab in ("a", "b"):
                store.save_label(lab, [], "labels.csv")
            for i, s in enumerate(summaries):
                store.store_summary(sensor_id=s.sensor_id, sequence=i, hour_start=s.hour_start,
                                    created_us=0, envelope=b"x", summary=encode_summary(s))
            assert roll_up_pending(store, REGIONS, batch=7, reference=reference,
                                   labels=LABELS, max_sources=100) == len(summaries)
    fast, ref = dump(tmp_path / "fast.db"), dump(tmp_path / "ref.db")
    assert fast["daily_region_src"] and fast["label_daily"] and fast["daily_port_src"]
    assert fast == ref
    # the distinct counts are exact: the true sets, fleet-wide, per day and region
    truth: dict[tuple[int, str], set[bytes]] = {}
    for s in summaries:
        for r in s.sources:
            hit = REGIONS.lookup(r.address)
            cc = hit[0] if hit else "ZZ"
            truth.setdefault((s.hour_start // 86400, cc), set()).add(r.address)
    got = {(d, cc): (n, est) for d, cc, _reg, n, est, _ in fast["daily_region_src"]}
    assert got == {k: (len(v), 0) for k, v in truth.items()}
    labelled = {(lab, bytes(src)) for lab, _d, src, *_ in fast["label_daily"]}
    want = {("a", r.address) for s in summaries for r in s.sources
            if len(r.address) == 4 and (r.address[:3] == b"\1\0\0"
                                        or r.address == b"\2\0\0\5")}
    want |= {("b", r.address) for s in summaries for r in s.sources
             if len(r.address) == 16 and r.address[-2] == 0}
    assert labelled == want


def test_kmv_is_exact_below_k_and_close_above() -> None:
    rnd = np.random.default_rng(7)
    for n in (0, 1, 100, KMV_K - 1, 5 * KMV_K, 50 * KMV_K):
        addrs = np.unique(rnd.integers(0, 2**32, size=n, dtype=np.uint64))
        slots = np.zeros((len(addrs), 16), dtype=np.uint8)
        slots[:, :4] = addrs.astype(">u4").view(np.uint8).reshape(-1, 4)
        hs = source_hashes(slots, np.full(len(addrs), 4, dtype=np.uint8))
        # split in two halves and merge, as two sensors' sets are merged
        half = len(hs) // 2
        merged = kmv(np.concatenate([kmv(hs[:half]), kmv(hs[half:])]))
        count, est = kmv_count(merged)
        if len(addrs) < KMV_K:
            assert (count, est) == (len(addrs), False)
        else:
            assert est and abs(count - len(addrs)) / len(addrs) < 5 / np.sqrt(KMV_K)

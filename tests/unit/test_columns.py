"""The central fast path equals the reference (central/columns.py, central/_rollup.c,
central/rollup.py's ColumnBatch): same verdicts and messages on any bytes, same columns,
same aggregates in the store."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import msgpack
import pytest

from central._rollup import LifeTable, parse_rows
from central.columns import columns_from_summary, decode_columns
from central.regions import Delegation, RegionTable
from central.rollup_job import roll_up_pending
from central.store import Store
from wire.summary import (
    DestinationRow,
    PortRow,
    SourceRow,
    Summary,
    SummaryFormatError,
    decode_summary,
    encode_summary,
)

VECTORS = Path(__file__).parent.parent / "vectors" / "summary-v1"
HOUR = 1_735_689_600
REGIONS = RegionTable.build([
    Delegation(4, 0x01000000, 0x01FFFFFF, "JP", "apnic"),
    Delegation(4, 0x02000000, 0x020000FF, "NL", "ripencc"),
    Delegation(4, 0x02000100, 0x02000FFF, "US", "arin"),
    Delegation(6, 0x2001_0200 << 96, (0x2001_0200 << 96) + (1 << 96) - 1, "JP", "apnic"),
])


def random_summary(rnd: random.Random, sid: str = "tokyo-01", hour: int = HOUR,
                   n_sources: int = 50) -> Summary:
    us = hour * 1_000_000
    sources = []
    for _ in range(n_sources):
        if rnd.random() < 0.1:
            addr = bytes.fromhex("20010200") + rnd.randbytes(12)
        else:
            addr = rnd.choice((0x01000000, 0x02000000)).__add__(rnd.randrange(4096)).to_bytes(
                4, "big")
        first = us + rnd.randrange(3_600_000_000)
        last = min(first + rnd.randrange(10**9), us + 3_599_999_999)
        sources.append(SourceRow(addr, rnd.randrange(1, 500), rnd.randrange(40, 9000), first,
                                 last, rnd.randrange(4), rnd.randrange(4), rnd.randrange(256),
                                 rnd.randrange(8), rnd.randrange(4)))
    uniq = {r.address: r for r in sources}
    ports = [PortRow(rnd.choice((6, 17, 1)), rnd.randrange(65536), rnd.randrange(1, 10**6),
                     rnd.randrange(10**8), rnd.randrange(100), rnd.randrange(50),
                     rnd.random() < 0.5) for _ in range(30)]
    ports.append(PortRow(17, None, 3, 180, 0, 1))
    pk = {(p.proto, p.port): p for p in ports}
    return Summary(
        sensor_id=sid, hour_start=hour, bucket_seconds=3600, darknet=("192.0.2.0/24",),
        packets=10**6, bytes=6 * 10**7, fragments=3, sources_distinct=len(uniq),
        sources_distinct_estimated=False, sources_overflow=rnd.randrange(3),
        destinations_overflow=0, ports=tuple(pk.values()), icmp_codes=(),
        sources=tuple(uniq.values()),
        destinations=(DestinationRow(bytes([192, 0, 2, 7]), 5),
                      DestinationRow(bytes.fromhex("20010db800000001"), 2)),
        tcp_flags=((2, 9),), ttl=((64, 9),), sizes=((40, 9),),
        fingerprints={"mirai": 4}, backscatter={"tcp_synack": 2}, malformed={},
        health={"capture_dropped": rnd.randrange(3)},
    )


def verdict(data: bytes) -> tuple[str, object]:
    try:
        ref = decode_summary(data)
    except SummaryFormatError as exc:
        ref_out: tuple[str, object] = ("error", str(exc))
    else:
        ref_out = ("ok", columns_from_summary(ref))
    try:
        fast = decode_columns(data)
    except SummaryFormatError as exc:
        assert ref_out == ("error", str(exc))
        return ref_out
    assert ref_out == ("ok", fast)
    return ref_out


def test_columns_equal_the_reference_on_valid_summaries() -> None:
    rnd = random.Random(7)
    samples = [encode_summary(random_summary(rnd)) for _ in range(20)]
    samples += [p.read_bytes() for p in sorted(VECTORS.glob("*.summary"))]
    for data in samples:
        assert verdict(data)[0] == "ok"


def test_same_verdict_and_message_on_mutated_bytes() -> None:
    rnd = random.Random(11)
    base = encode_summary(random_summary(rnd, n_sources=8))
    errors = 0
    for i in range(3000):
        b = bytearray(base)
        for _ in range(1 + i % 3):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        errors += verdict(bytes(b))[0] == "error"
    for cut in range(0, len(base), 7):
        verdict(base[:cut])
    assert errors > 100  # the mutations did reach the error paths


def mutate_doc(change: object) -> bytes:
    doc = msgpack.unpackb(encode_summary(random_summary(random.Random(3), n_sources=4)))
    assert callable(change)
    change(doc)
    return msgpack.packb(doc, use_bin_type=True)


@pytest.mark.parametrize("change", [
    lambda d: d["sources"][0].__setitem__(1, -1),            # negative packets
    lambda d: d["sources"][0].__setitem__(1, True),          # bool is not an int
    lambda d: d["sources"][0].__setitem__(1, 1.0),           # float
    lambda d: d["sources"][0].__setitem__(1, 2**63),         # past int64
    lambda d: d["sources"][0].__setitem__(7, 256),           # ttl past a byte
    lambda d: d["sources"][0].__setitem__(0, b"abc"),        # 3-byte address
    lambda d: d["sources"][0].__setitem__(0, "1.2.3.4"),     # str address
    lambda d: d["sources"][0].__setitem__(3, d["sources"][0][4] + 1),  # first after last
    lambda d: d["sources"][0].__setitem__(3, 5),             # before the hour
    lambda d: d["sources"][0].append(99),                    # extra column: accepted
    lambda d: d["sources"][0].pop(),                         # missing column
    lambda d: d["sources"].append("row"),
    lambda d: d.__setitem__("sources", {}),
    lambda d: d["ports"][0].__setitem__(1, 65536),
    lambda d: d["ports"][0].__setitem__(1, None),            # no port: accepted
    lambda d: d["ports"][0].__setitem__(6, 1),               # int for a bool
    lambda d: d["destinations"][0].__setitem__(0, bytes(16)),
    lambda d: d.pop("ports"),
    lambda d: d.__setitem__("packets", -5),
    lambda d: d.__setitem__("v", 2),
    lambda d: d.__setitem__("len", 7),
    lambda d: d.__setitem__(b"bytes-key", 1),
])
def test_same_verdict_on_structured_changes(change: object) -> None:
    verdict(mutate_doc(change))


def test_trailing_bytes_and_signed_encodings() -> None:
    data = encode_summary(random_summary(random.Random(5), n_sources=3))
    assert verdict(data + b"\x00")[0] == "error"
    # a non-negative value in a signed int encoding is a valid int for msgpack-python
    row = msgpack.packb([[b"\x01\x02\x03\x04", 5]], use_bin_type=True)
    signed = row.replace(b"\x05", b"\xd0\x05")
    assert parse_rows(signed, "Au", 10) == (1, (b"\x01\x02\x03\x04" + bytes(12), b"\x04"),
                                             (5).to_bytes(8, "little"))
    assert parse_rows(row.replace(b"\x05", b"\xff"), "Au", 10) is None  # -1
    assert parse_rows(row, "Au", 0) is None  # over max_rows


def test_life_table_merges_and_sorts() -> None:
    t = LifeTable()
    a, b = bytes([1, 0, 0, 1]).ljust(16, b"\0"), bytes([2, 0, 0, 1]).ljust(16, b"\0")

    def col(*v: int) -> bytes:
        return b"".join(x.to_bytes(8, "little", signed=True) for x in v)

    t.add(b + a, bytes([4, 4]), col(5, 9), col(6, 20), col(1, 2), col(1, 0))
    t.add(a, bytes([4]), col(3), col(4), col(10), col(2))
    assert len(t) == 2
    addr, lens, first, last, packets, fp = t.export()
    assert addr == a + b and lens == bytes([4, 4])
    assert first == col(3, 5) and last == col(20, 6) and packets == col(12, 1)
    assert fp == col(2, 1)
    with pytest.raises(ValueError):
        t.add(a, bytes([4, 4]), col(1), col(1), col(1), col(1))
    t.clear()
    assert len(t) == 0


def dump(path: Path) -> dict[str, list[tuple[object, ...]]]:
    db = sqlite3.connect(path)
    out = {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall())
           for t in ("daily_port", "daily_port_cols", "quarter_port", "daily_region",
                     "daily_counter",
                     "source_life")}
    out["rollup_hours"] = sorted(r[:4] + r[5:] for r in db.execute("SELECT * FROM rollup_hours"))
    db.close()
    return out


@pytest.mark.parametrize(("max_sources", "max_port_bytes"), [
    (300, 1 << 30),     # flushed by the source bound
    (10**6, 24 * 60),   # flushed by the port bound
    (10**6, 1 << 30),   # one write at the end
])
def test_fast_rollup_writes_what_the_reference_writes(
    tmp_path: Path, max_sources: int, max_port_bytes: int
) -> None:
    rnd = random.Random(13)
    # two quarters, three sensors, sources shared between sensors and hours
    hours = [HOUR + 3600 * h for h in range(6)] + [HOUR - 3600 * 2, HOUR - 3600]
    summaries = [random_summary(rnd, sid, h, 80) for h in hours
                 for sid in ("tokyo-01", "osaka-02", "nagoya-3")]
    for name, reference in (("fast.db", False), ("ref.db", True)):
        with Store(tmp_path / name) as store:
            for i, s in enumerate(summaries):
                data = encode_summary(s)
                store.store_summary(sensor_id=s.sensor_id, sequence=i, hour_start=s.hour_start,
                                    created_us=0, envelope=b"x", summary=data)
            # pages of 5: exercises the page cursor, and the flushes the bounds make
            assert roll_up_pending(store, REGIONS, batch=5, reference=reference,
                                   max_sources=max_sources,
                                   max_port_bytes=max_port_bytes) == len(summaries)
            assert store.count_pending_rollup() == 0
    fast, ref = dump(tmp_path / "fast.db"), dump(tmp_path / "ref.db")
    assert fast["source_life"] and fast["daily_region"]
    assert fast == ref


def test_slash24_lookups_equal_the_binary_search() -> None:
    import numpy as np

    rnd = random.Random(17)
    recs = []
    start = 1 << 24
    while start < (224 << 24) and len(recs) < 3000:  # sizes from 1 to 64 Ki, any alignment
        start += rnd.choice((0, 0, 1, 7, 256, 4096, 1 << 20))
        size = rnd.choice((1, 3, 100, 256, 300, 512, 65536))
        recs.append(Delegation(4, start, start + size - 1, rnd.choice("ABCDE") + "X",
                               rnd.choice(("apnic", "arin"))))
        start += size
    table = RegionTable.build(recs)
    edges = [x for r in recs for x in (r.start - 1, r.start, r.end, r.end + 1)]
    rng = np.random.default_rng(5)
    probe = np.concatenate([np.array(edges, dtype=np.int64) % (1 << 32),
                            rng.integers(0, 1 << 32, 200_000)]).astype(np.uint32)
    assert (table.lookup_v4_many(probe) == table.lookup_v4_batch(probe)).all()
    empty = RegionTable.build([])
    assert (empty.lookup_v4_many(probe[:10]) == -1).all()


def test_port_daily_adds_legacy_rows_and_column_sets(tmp_path: Path) -> None:
    s = random_summary(random.Random(21), n_sources=5)
    p = max(s.ports, key=lambda r: r.packets)
    day = HOUR // 86400
    with Store(tmp_path / "c.db") as store:
        store.store_summary(sensor_id=s.sensor_id, sequence=1, hour_start=s.hour_start,
                            created_us=0, envelope=b"x", summary=encode_summary(s))
        assert roll_up_pending(store, REGIONS) == 1
        key = (p.proto, -1 if p.port is None else p.port)
        got = store.port_daily([key, (6, 1)], day, day + 1)
        assert got == {key: {day: (p.packets, p.backscatter)}, (6, 1): {}}
        # a row as schema 2 wrote them, for the same port and day: both count
        store._db.execute("INSERT INTO daily_port VALUES (?,?,?,?,?,?)",
                          (*key, day, s.sensor_id, 5, 1))
        assert store.port_daily([key], day, day + 1) == {
            key: {day: (p.packets + 5, p.backscatter + 1)}}
        assert store.port_daily([key], day, day + 1, ["other"]) == {key: {}}


def test_the_compiled_parsers_survive_arbitrary_bytes() -> None:
    from central._rollup import map_spans

    rnd = random.Random(23)
    valid = encode_summary(random_summary(rnd, n_sources=20))
    spans = map_spans(valid)
    assert spans is not None
    tables = [valid[a:b] for k, a, b in spans if k in ("sources", "ports", "destinations")]
    for i in range(20_000):
        if i % 2:
            data = rnd.randbytes(rnd.randrange(64))
        else:  # a valid table or summary, cut and flipped
            src = rnd.choice([valid, *tables])
            cut = bytearray(src[: rnd.randrange(len(src) + 1)])
            for _ in range(rnd.randrange(4)):
                if cut:
                    cut[rnd.randrange(len(cut))] = rnd.randrange(256)
            data = bytes(cut)
        found = map_spans(data)
        if found is not None:
            assert all(0 <= a <= b <= len(data) for _, a, b in found)
        for spec in ("Auufluubbb", "bpuuuu?", "Du"):
            parsed = parse_rows(data, spec, 1 << 20, keep=bool(i % 3), lo_us=0, hi_us=1 << 62)
            if parsed is not None:
                assert isinstance(parsed[0], int) and parsed[0] >= 0

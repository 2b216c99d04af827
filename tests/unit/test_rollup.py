"""Rollup, quarters, migrations, backup and fleet status (central/rollup.py, migrations.py,
store.py, backup.py, fleet.py)."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from central import migrations
from central.backup import backup_database
from central.fleet import (
    OperationsConfigError,
    fleet_status,
    parse_duration,
    parse_operations,
)
from central.regions import Delegation, RegionTable
from central.rollup import (
    QuarterError,
    RollupBatch,
    health_facts,
    parse_quarter,
    previous_quarter,
    quarter_bounds,
    quarter_of,
    rollup_summary,
)
from central.rollup_job import roll_up_pending
from central.store import SCHEMA_VERSION, Store, StoreError
from sensor.cli import main as teiten
from wire.summary import PortRow, SourceRow, Summary, encode_summary

HOUR = 1_735_689_600  # 2025-01-01T00:00Z
V4_JP = bytes([1, 0, 16, 1])
V4_NONE = bytes([9, 9, 9, 9])
V6_JP = bytes.fromhex("20010200") + bytes(12)
REGIONS = RegionTable.build([
    Delegation(4, int.from_bytes(bytes([1, 0, 16, 0]), "big"),
               int.from_bytes(bytes([1, 0, 31, 255]), "big"), "JP", "apnic"),
    Delegation(6, int.from_bytes(V6_JP, "big"), int.from_bytes(V6_JP, "big") + (1 << 93) - 1,
               "JP", "apnic"),
])


def summary(sid: str = "tokyo-01", hour: int = HOUR, *, sources: tuple[SourceRow, ...] = (),
            overflow: int = 0, health: dict[str, Any] | None = None) -> Summary:
    return Summary(
        sensor_id=sid, hour_start=hour, bucket_seconds=3600, darknet=("192.0.2.0/24",),
        packets=110, bytes=6600, fragments=1, sources_distinct=len(sources),
        sources_distinct_estimated=False, sources_overflow=overflow, destinations_overflow=0,
        ports=(PortRow(6, 23, 100, 6000, 0, 3), PortRow(6, 40000, 9, 540, 8, 1),
               PortRow(17, None, 1, 60, 0, 1)),
        icmp_codes=(), sources=sources, destinations=(), tcp_flags=(), ttl=(), sizes=(),
        fingerprints={"mirai": 40}, backscatter={"tcp_synack": 8}, malformed={"short": 2},
        health=health or {},
    )


def src(addr: bytes, first: int, last: int, packets: int = 10, fp: int = 0) -> SourceRow:
    return SourceRow(addr, packets, packets * 60, first, last, 1, 1, 64, fp)


def test_quarters() -> None:
    assert quarter_bounds("2025Q1") == (1_735_689_600, 1_743_465_600)
    assert quarter_bounds("2024q4") == (1_727_740_800, 1_735_689_600)
    assert previous_quarter("2025Q1") == "2024Q4" and previous_quarter("2025Q3") == "2025Q2"
    assert quarter_of(1_743_465_599) == "2025Q1" and quarter_of(1_743_465_600) == "2025Q2"
    assert parse_quarter("2025Q2") == (2025, 2)
    for bad in ("2025Q0", "2025-1", "25Q1", "2025Q12"):
        with pytest.raises(QuarterError):
            parse_quarter(bad)


def test_health_facts() -> None:
    assert health_facts({}) == (0, 0, 0, 0)
    assert health_facts({"partial": True, "capture": {"dropped": 5, "ifdropped": 2},
                         "capture_dropped": 1, "clock": {"synchronized": False},
                         "spool_evicted": 3}) == (1, 8, 1, 3)
    assert health_facts({"capture": "x", "clock": None, "spool_evicted": -1}) == (0, 0, 0, 0)
    # what sensor/edges/daemon.py writes
    assert health_facts({"capture_dropped": 4, "capture_if_dropped": 1,
                         "clock_synchronized": False}) == (0, 5, 1, 0)
    assert health_facts({"clock_synchronized": True, "clock_steps": [[1, 2]]})[2] == 1
    assert health_facts({"clock_synchronized": True, "capture_dropped": 0}) == (0, 0, 0, 0)


def test_rollup_summary_and_batch_merge_sources_fleet_wide() -> None:
    us = HOUR * 1_000_000
    a = rollup_summary(summary("tokyo-01", sources=(
        src(V4_JP, us + 5, us + 10, 10, 1), src(V4_NONE, us + 1, us + 2, 7),
        src(V6_JP, us + 3, us + 3, 1))), 1 << 32, REGIONS)
    b = rollup_summary(summary("osaka-02", HOUR + 3600, overflow=4, sources=(
        src(V4_JP, us + 3600 * 10**6 + 1, us + 3600 * 10**6 + 9, 5, 2),)), 7, REGIONS)
    assert sorted(a.regions) == [("JP", "apnic", 11), ("ZZ", "", 7)]
    assert ("ZZ", "overflow", 4) in b.regions
    assert dict(a.counters)["fp:mirai"] == 40 and dict(a.counters)["backscatter:tcp_synack"] == 8
    assert (17, -1, 1, 0) in a.ports
    batch = RollupBatch()
    batch.add(a)
    batch.add(b)
    assert len(batch) == 2
    day = HOUR // 86400
    assert batch.ports[(6, 23, day, "tokyo-01")] == [100, 0]
    assert batch.quarter_ports[("2025Q1", "osaka-02", 6, 40000)] == [9, 8]
    # one source seen by two sensors: first of one, last of the other, fingerprints ORed
    assert batch.sources[("2025Q1", V4_JP)] == [us + 5, us + 3600 * 10**6 + 9, 15, 3]


def test_store_rollup_end_to_end(tmp_path: Path) -> None:
    us = HOUR * 1_000_000
    with Store(tmp_path / "c.db") as store:
        for i, sid in enumerate(("a-1", "b-2")):
            t = us + 3600 * 10**6 * i  # inside the summary's own hour
            s = summary(sid, HOUR + 3600 * i, sources=(src(V4_JP, t, t),))
            store.store_summary(sensor_id=sid, sequence=1, hour_start=s.hour_start,
                                created_us=us, envelope=b"env" + sid.encode(),
                                summary=encode_summary(s))
        assert store.count_pending_rollup() == 2
        assert roll_up_pending(store, REGIONS, batch=1) == 2
        assert roll_up_pending(store, REGIONS) == 0
        assert store.port_totals("2025Q1") == [(6, 23, 200, 0), (6, 40000, 18, 16),
                                               (17, -1, 2, 0)]
        assert store.port_totals("2025Q1", ["a-1"])[0] == (6, 23, 100, 0)
        assert store.counter_totals(HOUR // 86400, HOUR // 86400 + 1)["packets"] == 220
        counts = store.lifetime_counts("2025Q1", quarter_bounds("2025Q1")[1] * 10**6,
                                       [3600 * 10**6 - 1, 3600 * 10**6 + 1])
        assert counts == [(0, 1, [(1, 0), (1, 1)])]


def test_a_version_1_file_is_migrated_forward(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    from central.store import _SCHEMA

    db = sqlite3.connect(path)
    db.executescript(_SCHEMA + "INSERT INTO schema_version VALUES (1);")
    db.execute("INSERT INTO summaries (sensor_id, seq_key, hour_start, created_us, received_us, "
               "sha256, envelope) VALUES ('a-1', 0, 0, 0, 0, x'00', x'01')")
    db.commit()
    db.close()
    with Store(path) as store:
        assert store.schema_version() == SCHEMA_VERSION == migrations.LATEST >= 2
        assert store.count_summaries() == 1
        # Its envelope does not decode: the rollup skips it (it stays pending), no crash.
        assert store.count_pending_rollup() == 1
        assert roll_up_pending(store, REGIONS) == 0
    with Store(path) as store:  # opening again changes nothing
        assert store.schema_version() == SCHEMA_VERSION
    assert [m.version for m in migrations.pending(1)] == list(range(2, SCHEMA_VERSION + 1))
    assert migrations.pending(SCHEMA_VERSION) == []


def test_a_newer_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = 999")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="upgrade teiten"):
        Store(path)


def test_online_backup_while_the_receiver_writes(tmp_path: Path) -> None:
    path = tmp_path / "live.db"
    stop = threading.Event()
    written = []

    def writer() -> None:
        with Store(path) as store:
            i = 0
            while not stop.is_set() or i < 50:
                store.store_summary(sensor_id="a-1", sequence=i, hour_start=0, created_us=0,
                                    envelope=bytes(2000) + i.to_bytes(4, "big"), summary=None)
                written.append(i)
                i += 1

    Store(path).close()
    t = threading.Thread(target=writer)
    t.start()
    try:
        while len(written) < 20:
            threading.Event().wait(0.01)
        dest = backup_database(path, tmp_path / "copy.db")
    finally:
        stop.set()
        t.join()
    with Store(dest) as copy:
        n = copy.count_summaries()
        assert n >= 20 and copy.schema_version() == SCHEMA_VERSION
        assert [s.sequence for s in copy.summaries()] == list(range(n))
    assert not (tmp_path / "copy.db.partial").exists()
    with pytest.raises(StoreError, match="exists"):
        backup_database(path, dest)
    assert teiten(["central", "backup", "--db", str(path), "--out", str(dest), "--force"]) == 0


def test_operations_config() -> None:
    assert parse_duration("2h") == 7200 and parse_duration(90) == 90
    assert parse_duration("15m") == 900 and parse_duration("7d") == 7 * 86400
    for bad in ("2x", "", "-1h", 0):
        with pytest.raises(OperationsConfigError):
            parse_duration(bad)
    ops = parse_operations({"fleet": {"silent_after": "3h"}, "retention": {"source_days": 400}})
    assert (ops.silent_after_s, ops.source_retention_days) == (10800, 400)
    assert parse_operations({}).source_retention_days is None
    with pytest.raises(OperationsConfigError, match="unknown key"):
        parse_operations({"retention": {"days": 3}})
    with pytest.raises(OperationsConfigError, match="source_days"):
        parse_operations({"retention": {"source_days": 0}})


def test_fleet_status_flags_silent_sensors(tmp_path: Path, capsys: Any) -> None:
    now = 1_800_000_000 * 1_000_000
    with Store(tmp_path / "f.db") as store:
        for seq in (1, 2, 5):
            store.store_summary(sensor_id="tokyo-01", sequence=seq, hour_start=3600 * seq,
                                created_us=0, envelope=bytes([seq]), summary=None,
                                received_us=now - 600 * 10**6)
        store.store_summary(sensor_id="osaka-02", sequence=1, hour_start=0, created_us=0,
                            envelope=b"x", summary=None, received_us=now - 5 * 3600 * 10**6)
        store.store_status("osaka-02", b'{"state": "offline"}', "offline",
                           received_us=now - 3600 * 10**6)
        store.store_health("tokyo-01", json.dumps(
            {"spool_entries": 3, "spool_bytes": 4096, "clock": {"synchronized": False}}).encode(),
            received_us=now - 60 * 10**6)
        facts = store.fleet_facts()
    rows = fleet_status({"tokyo-01": False, "osaka-02": False, "kobe-03": False,
                         "nara-04": True}, facts, now_us=now, silent_after_s=7200)
    by = {r.sensor: r for r in rows}
    assert [r.sensor for r in rows] == ["kobe-03", "nara-04", "osaka-02", "tokyo-01"]
    assert by["tokyo-01"].spool_entries == 3 and by["tokyo-01"].spool_bytes == 4096
    assert by["tokyo-01"].clock_synchronized is False
    assert by["tokyo-01"].gaps == ((3, 4),) and by["tokyo-01"].missing_sequences == 2
    assert not by["tokyo-01"].silent and by["tokyo-01"].silent_for_s == 600
    assert by["osaka-02"].silent and by["osaka-02"].last_status == "offline"
    assert by["kobe-03"].silent and by["kobe-03"].silent_for_s is None  # enrolled, never sent
    assert not by["nara-04"].silent  # revoked: listed, not flagged
    # the command: exit 1 when a sensor is silent, JSON lists them
    rc = teiten(["central", "sensors", "--db", str(tmp_path / "f.db"), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["silent"] == []  # no keyring given: nothing is enrolled
    rc = teiten(["central", "sensors", "--db", str(tmp_path / "f.db"), "--silent-after", "1m"])
    out = capsys.readouterr().out
    assert rc == 0 and "osaka-02" in out and "tokyo-01" in out


def test_an_hour_received_twice_counts_once_in_coverage(tmp_path: Path) -> None:
    """A restart inside an hour gives two partial summaries of it: coverage is one hour."""
    us = HOUR * 1_000_000
    with Store(tmp_path / "c.db") as store:
        for seq in (1, 2):
            s = summary("a-1", HOUR, sources=(src(V4_JP, us + seq, us + seq),))
            store.store_summary(sensor_id="a-1", sequence=seq, hour_start=HOUR, created_us=us,
                                envelope=b"env%d" % seq, summary=encode_summary(s))
        assert roll_up_pending(store, REGIONS) == 2
        hours = store.sensor_hours(HOUR, HOUR + 3600)["a-1"]
        assert (hours["summaries"], hours["seconds"], hours["repeated_hours"]) == (2, 3600, 1)

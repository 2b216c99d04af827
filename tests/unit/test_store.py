"""The central store on a real SQLite file: exactly once, duplicates, reuse, rejections."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from central.store import REJECTED_COPY_BYTES, Store


def put(store: Store, seq: int, data: bytes, sensor: str = "tokyo-01") -> str:
    return store.store_summary(
        sensor_id=sensor,
        sequence=seq,
        hour_start=3600 * seq,
        created_us=1,
        envelope=data,
        summary=b"s",
        topic=f"teiten/v1/{sensor}/summary",
    )


def test_wal_and_full_sync(tmp_path: Path) -> None:
    with Store(tmp_path / "c.db") as s:
        assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_store_once_duplicate_counted(tmp_path: Path) -> None:
    with Store(tmp_path / "c.db") as s:
        assert put(s, 1, b"env1") == "stored"
        assert put(s, 1, b"env1") == "duplicate"
        assert put(s, 1, b"env1") == "duplicate"
        assert s.count_summaries() == 1
        assert s.duplicates() == 2
        assert s.envelope("tokyo-01", 1) == b"env1"


def test_same_key_different_bytes_is_sequence_reuse(tmp_path: Path) -> None:
    with Store(tmp_path / "c.db") as s:
        put(s, 1, b"env1")
        assert put(s, 1, b"other") == "sequence_reuse"
        assert s.envelope("tokyo-01", 1) == b"env1"
        (r,) = s.rejected()
        assert r["reason"] == "sequence_reuse" and r["sequence"] == 1


def test_persistent_across_reopen_and_u64_sequences(tmp_path: Path) -> None:
    big = (7 << 32) | 0xFFFFFFFF
    with Store(tmp_path / "c.db") as s:
        put(s, big, b"x")
        put(s, 0, b"y")
    with Store(tmp_path / "c.db") as s:
        assert [x.sequence for x in s.summaries()] == [0, big]
        assert put(s, big, b"x") == "duplicate"


def test_out_of_order_arrival_ordered_with_gaps(tmp_path: Path) -> None:
    with Store(tmp_path / "c.db") as s:
        for q in (5, 1, 3, 2, 9):
            put(s, q, bytes([q]))
        assert [x.sequence for x in s.summaries("tokyo-01")] == [1, 2, 3, 5, 9]
        assert s.gaps("tokyo-01") == [(4, 4), (6, 8)]
        ov = s.overview()
        assert ov["sensors"]["tokyo-01"]["summaries"] == 5


def test_rejected_copy_is_bounded(tmp_path: Path) -> None:
    with Store(tmp_path / "c.db") as s:
        s.reject(reason="bad_signature", data=b"z" * 100_000, sensor_id="x", detail="d")
        (r,) = s.rejected()
        assert r["size"] == 100_000
        n = s._db.execute("SELECT length(data) FROM rejected").fetchone()[0]
        assert n == REJECTED_COPY_BYTES


def test_failed_commit_leaves_nothing(tmp_path: Path, mocker: object) -> None:
    with Store(tmp_path / "c.db") as s:
        boom = sqlite3.OperationalError("disk I/O error")
        mocker.patch.object(s, "_commit", side_effect=boom)  # type: ignore[attr-defined]
        with pytest.raises(sqlite3.OperationalError):
            put(s, 1, b"env1")
    with Store(tmp_path / "c.db") as s:
        assert s.count_summaries() == 0


def test_status_and_health(tmp_path: Path) -> None:
    with Store(tmp_path / "c.db") as s:
        s.store_status("a", b'{"state":"online"}', "online")
        s.store_status("a", b'{"state":"offline"}', "offline")
        s.store_health("a", b"{}")
        assert s.latest_status()["a"]["state"] == "offline"
        assert s.health_count("a") == 1

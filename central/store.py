"""The central store: one SQLite file, every summary exactly once.

Strategy: SQLite in WAL mode with `synchronous=FULL`, so a committed transaction survives a
power cut, and one transaction per received message.  `summaries` is keyed by
(sensor_id, sequence): the same key with the same bytes is a duplicate (counted on the row,
not stored again), the same key with different bytes is a sequence reuse (rejected and
recorded).  Rejections go to `rejected` with the reason and at most `REJECTED_COPY_BYTES`
of the message.  Status and health messages are appended to their own tables.

Only this module talks to SQLite.  It knows nothing about MQTT: the receiver calls
`store_summary`/`reject`/... and acknowledges only after the call returns, which is after the
commit.  `_commit` is the single commit boundary (tests inject a crash there).

Sequences are kept as given, so readers order by sequence and see gaps (`gaps()`), even when
re-sends make envelopes arrive out of order.  Sequences are unsigned 64-bit; SQLite integers
are signed, so they are stored offset by 2**63 in `seq_key` and returned unshifted.
"""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

SCHEMA_VERSION: Final = 1
REJECTED_COPY_BYTES: Final = 4096
_SEQ_OFFSET: Final = 2**63

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS summaries (
    sensor_id     TEXT    NOT NULL,
    seq_key       INTEGER NOT NULL,          -- sequence - 2**63 (u64 in a signed column)
    hour_start    INTEGER NOT NULL,
    created_us    INTEGER NOT NULL,
    received_us   INTEGER NOT NULL,
    sha256        BLOB    NOT NULL,          -- of the envelope bytes
    envelope      BLOB    NOT NULL,          -- exactly as received (signature included)
    summary       BLOB,                      -- decompressed summary bytes
    duplicates    INTEGER NOT NULL DEFAULT 0,
    last_duplicate_us INTEGER,
    PRIMARY KEY (sensor_id, seq_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS summaries_hour ON summaries (hour_start, sensor_id);
CREATE TABLE IF NOT EXISTS rejected (
    id            INTEGER PRIMARY KEY,
    received_us   INTEGER NOT NULL,
    topic         TEXT,
    sensor_id     TEXT,                      -- as claimed; not trusted
    seq_key       INTEGER,
    reason        TEXT    NOT NULL,
    detail        TEXT,
    size          INTEGER NOT NULL,
    sha256        BLOB    NOT NULL,
    data          BLOB    NOT NULL           -- first REJECTED_COPY_BYTES bytes
);
CREATE TABLE IF NOT EXISTS status (
    id            INTEGER PRIMARY KEY,
    sensor_id     TEXT    NOT NULL,
    received_us   INTEGER NOT NULL,
    state         TEXT,
    payload       BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS health (
    id            INTEGER PRIMARY KEY,
    sensor_id     TEXT    NOT NULL,
    received_us   INTEGER NOT NULL,
    payload       BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS status_sensor ON status (sensor_id, received_us);
CREATE INDEX IF NOT EXISTS health_sensor ON health (sensor_id, received_us);
"""

Outcome = Literal["stored", "duplicate", "sequence_reuse"]


class StoreError(Exception):
    """The database cannot be opened or used; the message says what to do."""


@dataclass(frozen=True, slots=True)
class StoredSummary:
    sensor_id: str
    sequence: int
    hour_start: int
    created_us: int
    received_us: int
    sha256: str
    size: int
    duplicates: int


def _now_us() -> int:
    return time.time_ns() // 1000


class Store:
    """An open central database.  Not thread-safe: one receiver thread owns it."""

    def __init__(self, path: str | Path, *, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open database {self.path}: {exc}; check the path and permissions"
            ) from exc

    # ------------------------------------------------------------ plumbing
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        # CREATE ... IF NOT EXISTS is idempotent; executescript manages its own transaction
        self._db.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
        with self._tx():
            row = self._db.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                self._db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {row[0]}, this teiten knows "
                    f"{SCHEMA_VERSION}: upgrade teiten"
                )

    @contextmanager
    def _tx(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._commit()
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _commit(self) -> None:
        """The one commit boundary: after this returns, the data is durable."""
        self._db.execute("COMMIT")

    # ------------------------------------------------------------ writes
    def store_summary(
        self,
        *,
        sensor_id: str,
        sequence: int,
        hour_start: int,
        created_us: int,
        envelope: bytes,
        summary: bytes | None,
        topic: str | None = None,
        received_us: int | None = None,
    ) -> Outcome:
        """Store a verified envelope once; returns what happened, after the commit."""
        rx = received_us if received_us is not None else _now_us()
        digest = hashlib.sha256(envelope).digest()
        key = sequence - _SEQ_OFFSET
        with self._tx():
            row = self._db.execute(
                "SELECT sha256 FROM summaries WHERE sensor_id = ? AND seq_key = ?",
                (sensor_id, key),
            ).fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO summaries (sensor_id, seq_key, hour_start, created_us, "
                    "received_us, sha256, envelope, summary) VALUES (?,?,?,?,?,?,?,?)",
                    (sensor_id, key, hour_start, created_us, rx, digest, envelope, summary),
                )
                return "stored"
            if bytes(row[0]) == digest:
                self._db.execute(
                    "UPDATE summaries SET duplicates = duplicates + 1, last_duplicate_us = ? "
                    "WHERE sensor_id = ? AND seq_key = ?",
                    (rx, sensor_id, key),
                )
                return "duplicate"
            self._insert_rejected(
                rx,
                topic,
                sensor_id,
                sequence,
                "sequence_reuse",
                f"sequence {sequence} already stored with sha256 {bytes(row[0]).hex()[:16]}...",
                envelope,
            )
            return "sequence_reuse"

    def reject(
        self,
        *,
        reason: str,
        data: bytes,
        topic: str | None = None,
        sensor_id: str | None = None,
        sequence: int | None = None,
        detail: str | None = None,
        received_us: int | None = None,
    ) -> None:
        rx = received_us if received_us is not None else _now_us()
        with self._tx():
            self._insert_rejected(rx, topic, sensor_id, sequence, reason, detail, data)

    def _insert_rejected(
        self,
        rx: int,
        topic: str | None,
        sensor_id: str | None,
        sequence: int | None,
        reason: str,
        detail: str | None,
        data: bytes,
    ) -> None:
        self._db.execute(
            "INSERT INTO rejected (received_us, topic, sensor_id, seq_key, reason, detail, "
            "size, sha256, data) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                rx,
                topic,
                sensor_id,
                None if sequence is None else sequence - _SEQ_OFFSET,
                reason,
                None if detail is None else detail[:1000],
                len(data),
                hashlib.sha256(data).digest(),
                data[:REJECTED_COPY_BYTES],
            ),
        )

    def store_status(
        self, sensor_id: str, payload: bytes, state: str | None, received_us: int | None = None
    ) -> None:
        rx = received_us if received_us is not None else _now_us()
        with self._tx():
            self._db.execute(
                "INSERT INTO status (sensor_id, received_us, state, payload) VALUES (?,?,?,?)",
                (sensor_id, rx, state, payload[:REJECTED_COPY_BYTES]),
            )

    def store_health(self, sensor_id: str, payload: bytes, received_us: int | None = None) -> None:
        rx = received_us if received_us is not None else _now_us()
        with self._tx():
            self._db.execute(
                "INSERT INTO health (sensor_id, received_us, payload) VALUES (?,?,?)",
                (sensor_id, rx, payload[: 16 * REJECTED_COPY_BYTES]),
            )

    # ------------------------------------------------------------ reads
    def summaries(self, sensor_id: str | None = None) -> list[StoredSummary]:
        q = (
            "SELECT sensor_id, seq_key, hour_start, created_us, received_us, sha256, "
            "length(envelope), duplicates FROM summaries"
        )
        args: tuple[Any, ...] = ()
        if sensor_id is not None:
            q += " WHERE sensor_id = ?"
            args = (sensor_id,)
        q += " ORDER BY sensor_id, seq_key"
        return [
            StoredSummary(r[0], r[1] + _SEQ_OFFSET, r[2], r[3], r[4], bytes(r[5]).hex(), r[6], r[7])
            for r in self._db.execute(q, args)
        ]

    def envelope(self, sensor_id: str, sequence: int) -> bytes | None:
        row = self._db.execute(
            "SELECT envelope FROM summaries WHERE sensor_id = ? AND seq_key = ?",
            (sensor_id, sequence - _SEQ_OFFSET),
        ).fetchone()
        return None if row is None else bytes(row[0])

    def count_summaries(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM summaries").fetchone()[0])

    def duplicates(self) -> int:
        return int(
            self._db.execute("SELECT coalesce(sum(duplicates), 0) FROM summaries").fetchone()[0]
        )

    def rejected(self) -> list[dict[str, Any]]:
        return [
            {
                "received_us": r[0],
                "topic": r[1],
                "sensor_id": r[2],
                "sequence": None if r[3] is None else r[3] + _SEQ_OFFSET,
                "reason": r[4],
                "detail": r[5],
                "size": r[6],
                "sha256": bytes(r[7]).hex(),
            }
            for r in self._db.execute(
                "SELECT received_us, topic, sensor_id, seq_key, reason, detail, size, sha256 "
                "FROM rejected ORDER BY id"
            )
        ]

    def latest_status(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for sid, rx, state, payload in self._db.execute(
            "SELECT sensor_id, received_us, state, payload FROM status ORDER BY id"
        ):
            out[sid] = {"received_us": rx, "state": state, "payload": bytes(payload)}
        return out

    def health_count(self, sensor_id: str | None = None) -> int:
        if sensor_id is None:
            return int(self._db.execute("SELECT count(*) FROM health").fetchone()[0])
        return int(
            self._db.execute(
                "SELECT count(*) FROM health WHERE sensor_id = ?", (sensor_id,)
            ).fetchone()[0]
        )

    def gaps(self, sensor_id: str) -> list[tuple[int, int]]:
        """Missing sequence ranges (inclusive) within each epoch (high 32 bits) of a sensor."""
        seqs = [s.sequence for s in self.summaries(sensor_id)]
        out: list[tuple[int, int]] = []
        for a, b in itertools.pairwise(seqs):
            if a >> 32 == b >> 32 and b > a + 1:
                out.append((a + 1, b - 1))
        return out

    def overview(self) -> dict[str, Any]:
        """Per-sensor counts, gaps, latest status; what `teiten central db` prints."""
        sensors: dict[str, Any] = {}
        for sid, n, lo, hi, dup, first_h, last_h in self._db.execute(
            "SELECT sensor_id, count(*), min(seq_key), max(seq_key), sum(duplicates), "
            "min(hour_start), max(hour_start) FROM summaries GROUP BY sensor_id ORDER BY sensor_id"
        ):
            sensors[sid] = {
                "summaries": n,
                "first_sequence": lo + _SEQ_OFFSET,
                "last_sequence": hi + _SEQ_OFFSET,
                "duplicates_received": dup,
                "first_hour": first_h,
                "last_hour": last_h,
                "gaps": self.gaps(sid),
            }
        for sid, st in self.latest_status().items():
            sensors.setdefault(sid, {})["status"] = st["state"]
        for sid, n in self._db.execute("SELECT sensor_id, count(*) FROM health GROUP BY sensor_id"):
            sensors.setdefault(sid, {})["health_messages"] = n
        reasons = dict(
            self._db.execute(
                "SELECT reason, count(*) FROM rejected GROUP BY reason ORDER BY reason"
            )
        )
        return {
            "database": str(self.path),
            "schema_version": SCHEMA_VERSION,
            "summaries": self.count_summaries(),
            "duplicates_received": self.duplicates(),
            "rejected": reasons,
            "sensors": sensors,
        }

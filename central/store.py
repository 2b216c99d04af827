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
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np

from central import migrations
from central.rollup import (
    kmv,
    kmv_count,
    merge_port_days,
    pack_port_day,
    port_key,
    port_of_key,
    unpack_port_day,
)

if TYPE_CHECKING:
    from central.rollup import RollupBatch

SCHEMA_VERSION: Final = migrations.LATEST
CACHE_KIB: Final = 256 * 1024  # page cache per connection (memory, not disk)
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
        self._batch = False
        try:
            self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            # A rollup writes millions of source rows into two B-trees (the key and the
            # last-seen index); with SQLite's 2 MiB default cache most of those writes miss.
            self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
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
                # a new file starts at version 1 (_SCHEMA) and takes every migration below
                self._db.execute("INSERT INTO schema_version VALUES (1)")
                current = 1
            else:
                current = int(row[0])
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {current}, this teiten knows "
                    f"{SCHEMA_VERSION}: upgrade teiten"
                )
        for m in migrations.pending(current):
            # one transaction per migration, version bump included: a crash leaves a whole
            # version behind (executescript commits nothing of ours half-way)
            try:
                self._db.executescript(
                    "BEGIN IMMEDIATE;" + m.sql
                    + f";UPDATE schema_version SET version = {int(m.version)};COMMIT;"
                )
            except sqlite3.Error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def schema_version(self) -> int:
        return int(self._db.execute("SELECT version FROM schema_version").fetchone()[0])

    @contextmanager
    def batch(self) -> Iterator[Store]:
        """One transaction around many writes (the offline import's group commit).

        Inside, each write is a savepoint (a failed one leaves nothing of itself) and
        nothing is durable until `commit_batch` or the end of the block; an exception
        rolls the whole open batch back.
        """
        if self._batch:
            raise StoreError("batch() does not nest")
        self._db.execute("BEGIN IMMEDIATE")
        self._batch = True
        try:
            yield self
            self._commit()
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        finally:
            self._batch = False

    def commit_batch(self) -> None:
        """Make the open batch durable and start the next one."""
        if not self._batch:
            raise StoreError("commit_batch() outside batch()")
        self._commit()
        self._db.execute("BEGIN IMMEDIATE")

    @contextmanager
    def _tx(self) -> Iterator[None]:
        if self._batch:
            self._db.execute("SAVEPOINT w")
            try:
                yield
                self._db.execute("RELEASE w")
            except BaseException:
                self._db.execute("ROLLBACK TO w")
                self._db.execute("RELEASE w")
                raise
            return
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
            "not_rolled_up": self.count_pending_rollup(),
            "duplicates_received": self.duplicates(),
            "rejected": reasons,
            "sensors": sensors,
        }

    # ------------------------------------------------------------ rollup (central/rollup.py)
    def pending_rollup(
        self, limit: int = 500, after: tuple[int, str, int] | None = None
    ) -> list[tuple[str, int, int, bytes | None, bytes]]:
        """Stored summaries not yet rolled up, in (hour, sensor, sequence) order:
        (sensor_id, sequence, hour_start, summary bytes or None, envelope).

        The receiver keeps only the envelope (the summary is its payload); rows stored by
        older versions also hold the summary bytes.  `after` is the last row's
        (hour_start, sensor_id, sequence) of the previous page, for a rollup that reads
        many pages before it writes.
        """
        cond: str = ""
        args: tuple[Any, ...] = ()
        if after is not None:
            cond = " AND (s.hour_start, s.sensor_id, s.seq_key) > (?, ?, ?)"
            args = (after[0], after[1], after[2] - _SEQ_OFFSET)
        return [
            (sid, key + _SEQ_OFFSET, hour, None if blob is None else bytes(blob), bytes(env))
            for sid, key, hour, blob, env in self._db.execute(
                "SELECT s.sensor_id, s.seq_key, s.hour_start, s.summary, s.envelope "
                "FROM summaries s LEFT JOIN rollup_hours r "
                "ON r.sensor_id = s.sensor_id AND r.seq_key = s.seq_key "
                "WHERE r.seq_key IS NULL AND (s.summary IS NOT NULL OR length(s.envelope) > 0)"
                f"{cond} ORDER BY s.hour_start, s.sensor_id, s.seq_key LIMIT ?",
                (*args, limit),
            )
        ]

    def count_pending_rollup(self) -> int:
        return int(
            self._db.execute(
                "SELECT count(*) FROM summaries s LEFT JOIN rollup_hours r "
                "ON r.sensor_id = s.sensor_id AND r.seq_key = s.seq_key "
                "WHERE r.seq_key IS NULL AND (s.summary IS NOT NULL OR length(s.envelope) > 0)"
            ).fetchone()[0]
        )

    def write_rollup(self, batch: RollupBatch, rolled_us: int | None = None) -> None:
        """Add a batch of rolled-up summaries to the aggregates, in one transaction."""
        now = rolled_us if rolled_us is not None else _now_us()
        db = self._db
        with self._tx():
            db.executemany(
                "INSERT INTO rollup_hours VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (sid, seq - _SEQ_OFFSET, hour, bucket, now, *row)
                    for sid, seq, hour, bucket, row in batch.hours
                ],
            )
            for (day, sid), cols in batch.port_day_columns().items():
                old = db.execute(
                    "SELECT ports, data FROM daily_port_cols WHERE day = ? AND sensor_id = ?",
                    (day, sid),
                ).fetchone()
                if old is not None:
                    cols = merge_port_days(unpack_port_day(old[0], bytes(old[1])), cols)
                db.execute(
                    "INSERT OR REPLACE INTO daily_port_cols VALUES (?,?,?,?)",
                    (day, sid, len(cols[0]), pack_port_day(cols)),
                )
            db.executemany(
                "INSERT INTO quarter_port VALUES (?,?,?,?,?,?) ON CONFLICT DO UPDATE SET "
                "packets = packets + excluded.packets, "
                "backscatter = backscatter + excluded.backscatter",
                [(*k, v[0], v[1]) for k, v in batch.quarter_ports.items()],
            )
            db.executemany(
                "INSERT INTO daily_region VALUES (?,?,?,?,?) ON CONFLICT DO UPDATE SET "
                "packets = packets + excluded.packets",
                [(*k, v) for k, v in batch.regions.items()],
            )
            db.executemany(
                "INSERT INTO daily_counter VALUES (?,?,?,?) ON CONFLICT DO UPDATE SET "
                "value = value + excluded.value",
                [(*k, v) for k, v in batch.counters.items()],
            )
            db.executemany(
                "INSERT INTO source_life VALUES (?,?,?,?,?,?) ON CONFLICT DO UPDATE SET "
                "first_us = min(first_us, excluded.first_us), "
                "last_us = max(last_us, excluded.last_us), "
                "packets = packets + excluded.packets, "
                "fingerprints = fingerprints | excluded.fingerprints",
                itertools.chain(
                    ((q, a, *v) for (q, a), v in batch.sources.items()), batch.source_rows
                ),
            )
            for (day, sid), cols in batch.port_src_columns().items():
                old = db.execute(
                    "SELECT ports, data FROM daily_port_src WHERE day = ? AND sensor_id = ?",
                    (day, sid),
                ).fetchone()
                if old is not None:
                    cols = merge_port_days(unpack_port_day(old[0], bytes(old[1])), cols)
                db.execute(
                    "INSERT OR REPLACE INTO daily_port_src VALUES (?,?,?,?)",
                    (day, sid, len(cols[0]), pack_port_day(cols)),
                )
            for (day, cc, reg), hs in batch.region_source_sets().items():
                old = db.execute(
                    "SELECT hashes FROM daily_region_src WHERE day = ? AND cc = ? AND "
                    "registry = ?", (day, cc, reg)).fetchone()
                if old is not None:
                    hs = kmv(np.concatenate([np.frombuffer(bytes(old[0]), dtype="<u8"), hs]))
                n, est = kmv_count(hs)
                db.execute(
                    "INSERT OR REPLACE INTO daily_region_src VALUES (?,?,?,?,?,?)",
                    (day, cc, reg, n, int(est), hs.astype("<u8").tobytes()),
                )
            self._add_label_rows(batch.label_rows)

    def _add_label_rows(self, rows: dict[tuple[str, int, bytes], list[int]]) -> None:
        if not rows:
            return
        # a label removed while a rollup ran with it: its sightings go with it
        known = {r[0] for r in self._db.execute("SELECT name FROM labels")}
        self._db.executemany(
            "INSERT INTO label_daily VALUES (?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET "
            "packets = packets + excluded.packets, first_us = min(first_us, excluded.first_us),"
            " last_us = max(last_us, excluded.last_us), "
            "identified_us = min(identified_us, excluded.identified_us)",
            [(lab, day, addr, *v) for (lab, day, addr), v in rows.items() if lab in known],
        )

    # ------------------------------------------------------------ labels (central/labels.py)
    def save_label(self, name: str, entries: list[Any], source_file: str) -> None:
        """Replace label `name` with `entries` (`LabelEntry`); its sightings are cleared
        (the caller backfills them from the stored envelopes: `central.labelling`)."""
        width = {4: 4, 6: 16}
        with self._tx():
            self._db.execute("DELETE FROM label_daily WHERE label = ?", (name,))
            self._db.execute("DELETE FROM label_members WHERE label = ?", (name,))
            self._db.execute("DELETE FROM labels WHERE name = ?", (name,))
            self._db.execute("INSERT INTO labels VALUES (?,?,?,?)",
                             (name, _now_us(), source_file, len(entries)))
            self._db.executemany(
                "INSERT INTO label_members VALUES (?,?,?,?,?) ON CONFLICT DO UPDATE SET "
                "identified_us = min(identified_us, excluded.identified_us)",
                [(name, e.family, e.start.to_bytes(width[e.family], "big"),
                  e.end.to_bytes(width[e.family], "big"), e.identified_us) for e in entries])

    def remove_label(self, name: str) -> bool:
        with self._tx():
            self._db.execute("DELETE FROM label_daily WHERE label = ?", (name,))
            self._db.execute("DELETE FROM label_members WHERE label = ?", (name,))
            n = self._db.execute("DELETE FROM labels WHERE name = ?", (name,)).rowcount
        return bool(n)

    def labels(self) -> list[dict[str, Any]]:
        out = []
        for name, imported, src, entries in self._db.execute(
                "SELECT name, imported_us, source_file, entries FROM labels ORDER BY name"):
            seen, days, first_day, last_day = self._db.execute(
                "SELECT count(DISTINCT source), count(DISTINCT day), min(day), max(day) "
                "FROM label_daily WHERE label = ?", (name,)).fetchone()
            out.append({"label": name, "imported_us": imported, "file": src,
                        "entries": entries, "addresses_seen": seen, "days_seen": days,
                        "first_day": first_day, "last_day": last_day})
        return out

    def label_entries(self) -> dict[str, list[Any]]:
        """{label: [LabelEntry]} of every label (tokens, which match nothing, left out)."""
        from central.labels import LabelEntry

        out: dict[str, list[Any]] = {}
        for (name,) in self._db.execute("SELECT name FROM labels ORDER BY name"):
            out[name] = []
        for name, fam, a, b, ident in self._db.execute(
                "SELECT label, family, start, end_, identified_us FROM label_members"):
            if len(a) != (4 if fam == 4 else 16):
                continue
            out[name].append(LabelEntry(fam, int.from_bytes(a, "big"),
                                        int.from_bytes(b, "big"), ident))
        return out

    def rolled_up_envelopes(self, after: tuple[int, str, int] | None = None,
                            limit: int = 200) -> list[tuple[str, int, int, bytes | None, bytes]]:
        """Rolled-up summaries whose bytes are still kept (a label's backfill), in
        (hour, sensor, sequence) order, paged like `pending_rollup`."""
        cond: str = ""
        args: tuple[Any, ...] = ()
        if after is not None:
            cond = " AND (s.hour_start, s.sensor_id, s.seq_key) > (?, ?, ?)"
            args = (after[0], after[1], after[2] - _SEQ_OFFSET)
        return [
            (sid, key + _SEQ_OFFSET, hour, None if blob is None else bytes(blob), bytes(env))
            for sid, key, hour, blob, env in self._db.execute(
                "SELECT s.sensor_id, s.seq_key, s.hour_start, s.summary, s.envelope "
                "FROM summaries s JOIN rollup_hours r "
                "ON r.sensor_id = s.sensor_id AND r.seq_key = s.seq_key "
                "WHERE (s.summary IS NOT NULL OR length(s.envelope) > 0)"
                f"{cond} ORDER BY s.hour_start, s.sensor_id, s.seq_key LIMIT ?",
                (*args, limit),
            )
        ]

    def add_label_sightings(self, rows: dict[tuple[str, int, bytes], list[int]]) -> None:
        with self._tx():
            self._add_label_rows(rows)

    def label_daily(self, label: str, day_lo: int, day_hi: int) -> list[tuple[int, int, int]]:
        """(day, addresses seen, packets) of a label for days in [day_lo, day_hi)."""
        return [(int(d), int(n), int(p)) for d, n, p in self._db.execute(
            "SELECT day, count(*), sum(packets) FROM label_daily WHERE label = ? AND day >= ? "
            "AND day < ? GROUP BY day ORDER BY day", (label, day_lo, day_hi))]

    def label_sightings(self, label: str, day_lo: int, day_hi: int
                        ) -> list[tuple[int, int, int, int]]:
        """(identified_us, first_us, last_us, packets) per labelled address seen in
        [day_lo, day_hi)."""
        return [(int(a), int(b), int(c), int(d)) for a, b, c, d in self._db.execute(
            "SELECT min(identified_us), min(first_us), max(last_us), sum(packets) "
            "FROM label_daily WHERE label = ? AND day >= ? AND day < ? GROUP BY source",
            (label, day_lo, day_hi))]

    # ------------------------------------------------------------ distinct sources per day
    def port_sources_daily(
        self, keys: list[tuple[int, int]], day_lo: int, day_hi: int,
        sensors: list[str] | None = None,
    ) -> dict[tuple[int, int], dict[int, tuple[int, int]]]:
        """{(proto, port): {day: (source-hours, estimated hours)}} for [day_lo, day_hi)."""
        return self._sum_port_days("daily_port_src", keys, day_lo, day_hi, sensors)

    def region_sources_daily(
        self, ccs: list[str], day_lo: int, day_hi: int
    ) -> dict[str, dict[int, tuple[int, bool]]]:
        """{cc: {day: (distinct sources fleet-wide, estimated)}} for [day_lo, day_hi):
        the KMV sets of a country's registries merged per day."""
        parts: dict[tuple[str, int], list[Any]] = {}
        for cc in ccs:
            for d, hs in self._db.execute(
                    "SELECT day, hashes FROM daily_region_src WHERE cc = ? AND day >= ? "
                    "AND day < ?", (cc, day_lo, day_hi)):
                parts.setdefault((cc, int(d)), []).append(np.frombuffer(bytes(hs), "<u8"))
        out: dict[str, dict[int, tuple[int, bool]]] = {cc: {} for cc in ccs}
        for (cc, d), arrs in sorted(parts.items()):
            out[cc][d] = kmv_count(kmv(np.concatenate(arrs)))
        return out

    # ------------------------------------------------------------ regions
    def save_regions(
        self, rows: list[tuple[int, int, int, str, str]], files: list[str], serials: list[str]
    ) -> None:
        """Replace the region ranges with `rows` (family, start, end, cc, registry)."""
        width = {4: 4, 6: 16}
        with self._tx():
            self._db.execute("DELETE FROM regions")
            self._db.executemany(
                "INSERT INTO regions VALUES (?,?,?,?,?)",
                [
                    (f, s.to_bytes(width[f], "big"), e.to_bytes(width[f], "big"), cc, reg)
                    for f, s, e, cc, reg in rows
                ],
            )
            self._db.execute(
                "INSERT INTO region_imports (imported_us, files, ipv4_ranges, ipv6_ranges, "
                "serials) VALUES (?,?,?,?,?)",
                (
                    _now_us(),
                    "\n".join(files),
                    sum(1 for r in rows if r[0] == 4),
                    sum(1 for r in rows if r[0] == 6),
                    "\n".join(serials),
                ),
            )

    def region_rows(self) -> list[tuple[int, int, int, str, str]]:
        return [
            (f, int.from_bytes(s, "big"), int.from_bytes(e, "big"), cc, reg)
            for f, s, e, cc, reg in self._db.execute(
                "SELECT family, start, end_, cc, registry FROM regions ORDER BY family, start"
            )
        ]

    def region_import(self) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT imported_us, files, ipv4_ranges, ipv6_ranges, serials FROM region_imports "
            "ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return {
            "imported_us": row[0],
            "files": row[1].split("\n") if row[1] else [],
            "ipv4_ranges": row[2],
            "ipv6_ranges": row[3],
            "serials": row[4].split("\n") if row[4] else [],
        }

    # ------------------------------------------------------------ report queries
    @staticmethod
    def _in(column: str, sensors: list[str] | None) -> tuple[str, tuple[str, ...]]:
        if not sensors:
            return "", ()
        return f" AND {column} IN ({','.join('?' * len(sensors))})", tuple(sensors)

    def port_totals(
        self, quarter: str, sensors: list[str] | None = None
    ) -> list[tuple[int, int, int, int]]:
        """(proto, port, packets, backscatter) summed over the quarter's sensors."""
        cond, args = self._in("sensor_id", sensors)
        return [
            (int(a), int(b), int(c), int(d))
            for a, b, c, d in self._db.execute(
                "SELECT proto, port, sum(packets), sum(backscatter) FROM quarter_port "
                f"WHERE quarter = ?{cond} GROUP BY proto, port",
                (quarter, *args),
            )
        ]

    def port_daily(
        self, keys: list[tuple[int, int]], day_lo: int, day_hi: int,
        sensors: list[str] | None = None,
    ) -> dict[tuple[int, int], dict[int, tuple[int, int]]]:
        """{(proto, port): {day: (packets, backscatter)}} for days in [day_lo, day_hi)."""
        cond, args = self._in("sensor_id", sensors)
        sums: dict[tuple[int, int], dict[int, list[int]]] = {k: {} for k in keys}
        for proto, port in keys:  # rows written by versions before schema 3
            for d, p, b in self._db.execute(
                "SELECT day, sum(packets), sum(backscatter) FROM daily_port "
                f"WHERE proto = ? AND port = ? AND day >= ? AND day < ?{cond} GROUP BY day",
                (proto, port, day_lo, day_hi, *args),
            ):
                sums[(proto, port)][int(d)] = [int(p), int(b)]
        return self._sum_port_days("daily_port_cols", keys, day_lo, day_hi, sensors, sums)

    def _sum_port_days(
        self, table: Literal["daily_port_cols", "daily_port_src"],
        keys: list[tuple[int, int]], day_lo: int, day_hi: int, sensors: list[str] | None,
        sums: dict[tuple[int, int], dict[int, list[int]]] | None = None,
    ) -> dict[tuple[int, int], dict[int, tuple[int, int]]]:
        """{(proto, port): {day: (a, b)}}, days in order: the two columns of `table`'s
        packed port-days in [day_lo, day_hi) summed per key, added to what `sums`
        ({(proto, port): {day: [a, b]}}) already holds (port_daily's pre-schema-3 rows)."""
        cond, args = self._in("sensor_id", sensors)
        if sums is None:
            sums = {k: {} for k in keys}
        wanted = np.array(sorted(port_key(*k) for k in keys), dtype=np.int64)
        for d, n, data in self._db.execute(
            f"SELECT day, ports, data FROM {table} WHERE day >= ? AND day < ?{cond}",
            (day_lo, day_hi, *args),
        ):
            pk_keys, col_a, col_b = unpack_port_day(n, bytes(data))
            at = np.minimum(np.searchsorted(pk_keys, wanted), max(len(pk_keys) - 1, 0))
            for key, i in zip(wanted.tolist(), at.tolist(), strict=True):
                if len(pk_keys) and int(pk_keys[i]) == key:
                    row = sums[port_of_key(key)].setdefault(int(d), [0, 0])
                    row[0] += int(col_a[i])
                    row[1] += int(col_b[i])
        return {k: {d: (v[0], v[1]) for d, v in sorted(days.items())}
                for k, days in sums.items()}

    def region_daily(
        self, day_lo: int, day_hi: int, sensors: list[str] | None = None
    ) -> list[tuple[int, str, str, int]]:
        """(day, cc, registry, packets) for days in [day_lo, day_hi)."""
        cond, args = self._in("sensor_id", sensors)
        return [
            (int(d), cc, reg, int(p))
            for d, cc, reg, p in self._db.execute(
                "SELECT day, cc, registry, sum(packets) FROM daily_region "
                f"WHERE day >= ? AND day < ?{cond} GROUP BY day, cc, registry",
                (day_lo, day_hi, *args),
            )
        ]

    def counter_totals(
        self, day_lo: int, day_hi: int, sensors: list[str] | None = None
    ) -> dict[str, int]:
        cond, args = self._in("sensor_id", sensors)
        return {
            name: int(v)
            for name, v in self._db.execute(
                "SELECT name, sum(value) FROM daily_counter "
                f"WHERE day >= ? AND day < ?{cond} GROUP BY name",
                (day_lo, day_hi, *args),
            )
        }

    def lifetime_counts(
        self, quarter: str, end_us: int, thresholds_us: list[int]
    ) -> list[tuple[int, int, list[tuple[int, int]]]]:
        """Per fingerprint bit set: (bits, sources, [(eligible, gone) per threshold]).

        A source is eligible for threshold T when its first sighting is at least T before
        `end_us`; it is gone when it was never seen T or more after its first sighting.
        """
        cols = ", ".join(
            f"sum(first_us + {int(t)} <= {int(end_us)}), "
            f"sum(first_us + {int(t)} <= {int(end_us)} AND last_us - first_us < {int(t)})"
            for t in thresholds_us
        )
        out = []
        for row in self._db.execute(
            f"SELECT fingerprints, count(*), {cols} FROM source_life WHERE quarter = ? "
            "GROUP BY fingerprints ORDER BY fingerprints",
            (quarter,),
        ):
            pairs = [(int(row[2 + 2 * i]), int(row[3 + 2 * i])) for i in range(len(thresholds_us))]
            out.append((int(row[0]), int(row[1]), pairs))
        return out

    def sensor_hours(
        self, lo_s: int, hi_s: int, sensors: list[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Per sensor, from the rolled-up summaries with hour_start in [lo_s, hi_s)."""
        cond, args = self._in("sensor_id", sensors)
        out: dict[str, dict[str, Any]] = {}
        for sid, n, secs, partial, drops, unsynced, evicted, lo, hi in self._db.execute(
            "SELECT sensor_id, count(*), sum(bucket_seconds), sum(partial), sum(capture_drops), "
            "sum(clock_unsynced), sum(spool_evicted), min(hour_start), max(hour_start) "
            f"FROM rollup_hours WHERE hour_start >= ? AND hour_start < ?{cond} "
            "GROUP BY sensor_id ORDER BY sensor_id",
            (lo_s, hi_s, *args),
        ):
            out[sid] = {
                "summaries": int(n),
                "seconds": int(secs),  # replaced below by the time actually covered
                "partial": int(partial),
                "capture_drops": int(drops),
                "clock_unsynced": int(unsynced),
                "spool_evicted": int(evicted),
                "first_hour": int(lo),
                "last_hour": int(hi),
            }
        # A restart inside an hour gives two partial summaries of it: coverage counts each
        # interval once, and the repeats are reported rather than added.
        for sid, secs, distinct in self._db.execute(
            "SELECT sensor_id, sum(b), count(*) FROM (SELECT sensor_id, hour_start, "
            "max(bucket_seconds) AS b FROM rollup_hours WHERE hour_start >= ? AND hour_start < ?"
            f"{cond} GROUP BY sensor_id, hour_start) GROUP BY sensor_id",
            (lo_s, hi_s, *args),
        ):
            out[sid]["seconds"] = int(secs)
            out[sid]["repeated_hours"] = out[sid]["summaries"] - int(distinct)
        return out

    def hour_starts(self, sensor_id: str, lo_s: int, hi_s: int) -> list[tuple[int, int]]:
        """(hour_start, bucket_seconds) of a sensor's stored summaries in [lo_s, hi_s)."""
        return [
            (int(h), int(b))
            for h, b in self._db.execute(
                "SELECT DISTINCT hour_start, bucket_seconds FROM rollup_hours "
                "WHERE sensor_id = ? AND hour_start >= ? AND hour_start < ? ORDER BY hour_start",
                (sensor_id, lo_s, hi_s),
            )
        ]

    def data_days(self, lo_s: int, hi_s: int, sensors: list[str] | None = None) -> set[int]:
        """UTC days in [lo_s, hi_s) with at least one rolled-up summary."""
        cond, args = self._in("sensor_id", sensors)
        return {int(d) for (d,) in self._db.execute(
            "SELECT DISTINCT hour_start / 86400 FROM rollup_hours WHERE hour_start >= ? "
            f"AND hour_start < ?{cond}", (lo_s, hi_s, *args))}

    def sensor_ids(self) -> list[str]:
        return [r[0] for r in self._db.execute(
            "SELECT DISTINCT sensor_id FROM summaries ORDER BY sensor_id")]

    # ------------------------------------------------------------ fleet (central/fleet.py)
    def fleet_facts(self) -> dict[str, dict[str, Any]]:
        """Per sensor: last summary, last status, latest health payload, sequence gaps."""
        out: dict[str, dict[str, Any]] = {}
        for sid, n, last_rx, last_hour in self._db.execute(
            "SELECT sensor_id, count(*), max(received_us), max(hour_start) FROM summaries "
            "GROUP BY sensor_id"
        ):
            out[sid] = {
                "summaries": int(n),
                "last_summary_received_us": int(last_rx),
                "last_summary_hour": int(last_hour),
                "gaps": self.gaps(sid),
            }
        for sid, rx, state in self._db.execute(
            "SELECT s.sensor_id, s.received_us, s.state FROM status s JOIN "
            "(SELECT sensor_id, max(id) AS id FROM status GROUP BY sensor_id) m ON m.id = s.id"
        ):
            out.setdefault(sid, {}).update(last_status=state, last_status_us=int(rx))
        for sid, rx, payload in self._db.execute(
            "SELECT h.sensor_id, h.received_us, h.payload FROM health h JOIN "
            "(SELECT sensor_id, max(id) AS id FROM health GROUP BY sensor_id) m ON m.id = h.id"
        ):
            out.setdefault(sid, {}).update(last_health_us=int(rx), last_health=bytes(payload))
        return out

    # ------------------------------------------------------------ retention and backup
    def apply_retention(
        self, cutoff_us: int, token: Any, run_us: int | None = None
    ) -> dict[str, int]:
        """Forget source addresses last seen before `cutoff_us`; keep every aggregate.

        - `source_life`: every (quarter, source) whose last sighting is before the cutoff
          gets `token()` (8 random bytes, no mapping kept) instead of the address, so the
          lifetimes stay and the address goes;
        - `summaries` whose hour ended before the cutoff and that are rolled up: the
          summary and envelope bytes (which list sources) are emptied; the sha256 stays,
          so a re-sent copy is still recognised as a duplicate;
        - `rejected` rows received before the cutoff: deleted (their bytes with them);
        - `health` rows and all but each sensor's newest `status` row before the cutoff:
          deleted, so operational tables stay bounded too.
        """
        now = run_us if run_us is not None else _now_us()
        cutoff_s = cutoff_us // 1_000_000
        with self._tx():
            old = self._db.execute(
                "SELECT quarter, source FROM source_life WHERE last_us < ? "
                "AND length(source) IN (4, 16)",
                (cutoff_us,),
            ).fetchall()
            self._db.executemany(
                "UPDATE source_life SET source = ? WHERE quarter = ? AND source = ?",
                [(token(), q, src) for q, src in old],
            )
            pruned = self._db.execute(
                "UPDATE summaries SET summary = NULL, envelope = X'', pruned_us = ? "
                "WHERE pruned_us IS NULL AND EXISTS (SELECT 1 FROM rollup_hours r "
                "WHERE r.sensor_id = summaries.sensor_id AND r.seq_key = summaries.seq_key "
                "AND r.hour_start + r.bucket_seconds <= ?)",
                (now, cutoff_s),
            ).rowcount
            rej = self._db.execute(
                "UPDATE rejected SET data = X'' WHERE received_us < ? AND length(data) > 0",
                (cutoff_us,),
            ).rowcount
            # Operational rows are bounded by the same horizon: old health and status
            # messages (the newest status of each sensor stays) and old rejections go.
            health = self._db.execute(
                "DELETE FROM health WHERE received_us < ?", (cutoff_us,)
            ).rowcount
            status = self._db.execute(
                "DELETE FROM status WHERE received_us < ? AND id NOT IN "
                "(SELECT max(id) FROM status GROUP BY sensor_id)",
                (cutoff_us,),
            ).rowcount
            rej_deleted = self._db.execute(
                "DELETE FROM rejected WHERE received_us < ?", (cutoff_us,)
            ).rowcount
            labelled = self._label_retention(cutoff_us, token)
            self._db.execute(
                "INSERT INTO retention_runs (run_us, cutoff_us, sources_anonymised, "
                "summaries_pruned, rejected_pruned) VALUES (?,?,?,?,?)",
                (now, cutoff_us, len(old), pruned, rej),
            )
        return {"sources_anonymised": len(old), "summaries_pruned": pruned,
                "rejected_pruned": rej, "rejected_deleted": rej_deleted,
                "health_deleted": health, "status_deleted": status,
                "label_addresses_anonymised": labelled}

    def _label_retention(self, cutoff_us: int, token: Any) -> int:
        """Labelled addresses under the source rows' rule: an address not seen since the
        cutoff (and, for a listed address, identified before it) gets one token in its
        member row and all its sightings, so counts and lifetimes stay."""
        db = self._db
        gone = set(db.execute(
            "SELECT label, source FROM label_daily WHERE length(source) IN (4, 16) "
            "GROUP BY label, source HAVING max(last_us) < ?", (cutoff_us,)).fetchall())
        gone |= set(db.execute(
            "SELECT m.label, m.start FROM label_members m WHERE m.start = m.end_ "
            "AND length(m.start) IN (4, 16) AND m.identified_us < ? AND NOT EXISTS "
            "(SELECT 1 FROM label_daily d WHERE d.label = m.label AND d.source = m.start "
            "AND d.last_us >= ?)", (cutoff_us, cutoff_us)).fetchall())
        for label, addr in gone:
            tok = token()
            db.execute("UPDATE label_daily SET source = ? WHERE label = ? AND source = ?",
                       (tok, label, addr))
            db.execute("UPDATE label_members SET start = ?, end_ = ? WHERE label = ? AND "
                       "start = ? AND end_ = ?", (tok, tok, label, addr, addr))
        return len(gone)

    def count_addresses(self) -> int:
        """Source rows that still hold an address (retention tests, `teiten central db`)."""
        return int(self._db.execute(
            "SELECT count(*) FROM source_life WHERE length(source) IN (4, 16)").fetchone()[0])

    def backup(
        self, dest: str | Path, *, pages: int = -1,
        progress: Any = None,
    ) -> None:
        """Online copy with SQLite's backup API: writers may go on while it runs.

        `pages=-1` copies in one step (one consistent snapshot; see central/backup.py).
        """
        target = sqlite3.connect(dest)
        try:
            self._db.backup(target, pages=pages, progress=progress)
            ok = target.execute("PRAGMA integrity_check").fetchone()[0]
            if ok != "ok":
                raise StoreError(f"backup {dest} failed its integrity check: {ok}")
        finally:
            target.close()

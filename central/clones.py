"""Cloned cards: two boards with the same keys, detected from what central already stores.

Strategy: `detect` is pure.  It looks at a sensor's stored summaries (sequence = epoch << 32
| counter, hour, receipt time), its `sequence_reuse` rejections and its status messages,
split into key eras (central/enrol.py's `sensor_keys`: a replaced board's summaries are
never compared with its successor's), and raises an alarm on any of:

- `sequence_reuse`: the same sequence with other bytes (the store refused it);
- `overlapping_epochs`: two epochs of one key whose hours overlap by more than the one hour
  a restart shares.  A board draws a new random epoch at each daemon start and never goes
  back to an old one, so its epochs follow each other; two copies run two epochs at once,
  and both keep sending hour after hour;
- `two_live_connections`: status `online` messages whose `boot_time_us` goes back to a
  value after another one was seen (A, B, A): two uplinks that keep displacing each other
  (the broker pins the client id to the certificate, so the copies log each other out).

`scan_database` runs `detect` over a database and records each alarm once in
`clone_alarms` (first and last detection); alarms are never cleared automatically, and
nothing is merged or dropped: the summaries stay as stored, for an operator to judge.
`teiten central sensors` and the report's sensor health show them (`alarms_by_sensor`).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

_SEQ_OFFSET: Final = 2**63
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS clone_alarms (
    sensor_id  TEXT NOT NULL,
    kind       TEXT NOT NULL,
    evidence   TEXT NOT NULL,
    detail     TEXT NOT NULL,
    first_us   INTEGER NOT NULL,
    last_us    INTEGER NOT NULL,
    PRIMARY KEY (sensor_id, kind, evidence)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class Alarm:
    sensor_id: str
    kind: str  # sequence_reuse | overlapping_epochs | two_live_connections
    evidence: str  # stable key: the same evidence is one alarm
    detail: str
    first_us: int = 0
    last_us: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"sensor_id": self.sensor_id, "kind": self.kind, "evidence": self.evidence,
                "detail": self.detail, "first_us": self.first_us, "last_us": self.last_us}


def _era(received_us: int, eras: Sequence[tuple[str, int, int | None]]) -> int:
    """Index of the key era a message received at `received_us` belongs to."""
    idx = 0
    for i, (_, start, _end) in enumerate(eras):
        if received_us >= start:
            idx = i
    return idx


def detect(
    sensor_id: str,
    summaries: Iterable[tuple[int, int, int]],  # (sequence, hour_start, received_us)
    reuse: Iterable[tuple[int | None, int]],  # (sequence, received_us) of sequence_reuse
    statuses: Iterable[tuple[int, bytes]],  # (received_us, payload), in receipt order
    eras: Sequence[tuple[str, int, int | None]] = (),
) -> list[Alarm]:
    out: list[Alarm] = []
    for seq, _rx in reuse:
        out.append(Alarm(sensor_id, "sequence_reuse", f"sequence {seq}",
                         f"sequence {seq} arrived again with other content: two boards "
                         "share this sensor's state"))
    # epochs per key era: [first hour, last hour]
    ranges: dict[tuple[int, int], list[int]] = {}
    for seq, hour, rx in summaries:
        key = (_era(rx, eras), seq >> 32)
        r = ranges.setdefault(key, [hour, hour])
        r[0], r[1] = min(r[0], hour), max(r[1], hour)
    for (ka, ra), (kb, rb) in itertools.combinations(sorted(ranges.items()), 2):
        if ka[0] != kb[0]:
            continue  # another key: a replaced board is not a clone
        if max(ra[0], rb[0]) < min(ra[1], rb[1]):
            lo, hi = sorted((ka[1], kb[1]))
            out.append(Alarm(
                sensor_id, "overlapping_epochs", f"epochs {lo:08x}/{hi:08x}",
                f"epochs {ka[1]:08x} (hours {_h(ra[0])}..{_h(ra[1])}) and {kb[1]:08x} "
                f"(hours {_h(rb[0])}..{_h(rb[1])}) ran at the same time: two boards with "
                "the same signing key"))
    # status alternation A, B, A within one key era
    seen: list[int] = []
    era_of: dict[int, int] = {}
    flagged: set[tuple[int, int]] = set()
    for rx, payload in statuses:
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            continue
        if not isinstance(doc, dict) or doc.get("state") != "online":
            continue
        bt = doc.get("boot_time_us")
        if isinstance(bt, bool) or not isinstance(bt, int):
            continue
        era = _era(rx, eras)
        if seen and seen[-1] == bt:
            continue
        if bt in era_of and era_of[bt] == era and seen and era_of.get(seen[-1]) == era:
            pair = (min(bt, seen[-1]), max(bt, seen[-1]))
            if pair not in flagged:
                flagged.add(pair)
                out.append(Alarm(
                    sensor_id, "two_live_connections", f"boot times {pair[0]}/{pair[1]}",
                    f"two uplinks started at {_t(pair[0])} and {_t(pair[1])} keep connecting "
                    "in turn with this sensor's certificate"))
        era_of.setdefault(bt, era)
        seen.append(bt)
    return out


def _h(hour_start: int) -> str:
    return time.strftime("%Y-%m-%dT%H", time.gmtime(hour_start))


def _t(us: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(us / 1e6))


def _eras(db: sqlite3.Connection) -> dict[str, list[tuple[str, int, int | None]]]:
    try:
        rows = db.execute("SELECT sensor_id, public_key, enrolled_us, retired_us FROM "
                          "sensor_keys ORDER BY sensor_id, enrolled_us").fetchall()
    except sqlite3.OperationalError:
        return {}
    out: dict[str, list[tuple[str, int, int | None]]] = {}
    for sid, key, a, b in rows:
        out.setdefault(sid, []).append((key, a, b))
    return out


def scan_database(path: str | Path, now_us: int | None = None) -> list[Alarm]:
    """Detect over the whole database; record new alarms; return every recorded alarm."""
    now = now_us if now_us is not None else time.time_ns() // 1000
    db = sqlite3.connect(Path(path), timeout=30.0, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
        eras = _eras(db)
        sums: dict[str, list[tuple[int, int, int]]] = {}
        for sid, k, h, rx in db.execute(
                "SELECT sensor_id, seq_key, hour_start, received_us FROM summaries"):
            sums.setdefault(sid, []).append((k + _SEQ_OFFSET, h, rx))
        reuse: dict[str, list[tuple[int | None, int]]] = {}
        for sid, k, rx in db.execute(
                "SELECT sensor_id, seq_key, received_us FROM rejected "
                "WHERE reason = 'sequence_reuse' AND sensor_id IS NOT NULL"):
            reuse.setdefault(sid, []).append((None if k is None else k + _SEQ_OFFSET, rx))
        stat: dict[str, list[tuple[int, bytes]]] = {}
        for sid, rx, payload in db.execute(
                "SELECT sensor_id, received_us, payload FROM status ORDER BY id"):
            stat.setdefault(sid, []).append((rx, bytes(payload)))
        found: list[Alarm] = []
        for sid in sorted(set(sums) | set(reuse) | set(stat)):
            found += detect(sid, sums.get(sid, ()), reuse.get(sid, ()), stat.get(sid, ()),
                            eras.get(sid, ()))
        db.execute("BEGIN IMMEDIATE")
        for a in found:
            db.execute(
                "INSERT INTO clone_alarms (sensor_id, kind, evidence, detail, first_us, "
                "last_us) VALUES (?,?,?,?,?,?) ON CONFLICT (sensor_id, kind, evidence) "
                "DO UPDATE SET last_us = excluded.last_us, detail = excluded.detail",
                (a.sensor_id, a.kind, a.evidence, a.detail, now, now))
        db.execute("COMMIT")
        return recorded(db)
    finally:
        db.close()


def recorded(db: sqlite3.Connection) -> list[Alarm]:
    try:
        rows = db.execute("SELECT sensor_id, kind, evidence, detail, first_us, last_us FROM "
                          "clone_alarms ORDER BY sensor_id, first_us").fetchall()
    except sqlite3.OperationalError:
        return []
    return [Alarm(*r) for r in rows]


def alarms_by_sensor(path: str | Path, *, scan: bool = True) -> Mapping[str, list[Alarm]]:
    """Alarms per sensor id (after a fresh scan unless `scan` is False)."""
    if scan:
        alarms = scan_database(path)
    else:
        db = sqlite3.connect(Path(path), timeout=30.0)
        try:
            alarms = recorded(db)
        finally:
            db.close()
    out: dict[str, list[Alarm]] = {}
    for a in alarms:
        out.setdefault(a.sensor_id, []).append(a)
    return out


def clone_notes(path: str | Path, sensors: Sequence[str] | None = None
                ) -> list[tuple[str, dict[str, Any]]]:
    """The report's `clone_suspected` notes (central/report.py), from recorded alarms."""
    try:
        alarms = alarms_by_sensor(path, scan=True)
    except sqlite3.Error:
        return []
    return [("clone_suspected", {"sensor": sid, "kinds": ", ".join(sorted({a.kind for a in al}))})
            for sid, al in sorted(alarms.items()) if not sensors or sid in sensors]


def print_alarms(alarms: Mapping[str, list[Alarm]]) -> None:
    """`teiten central sensors`: one block per sensor with a suspected cloned card."""
    for sid, al in sorted(alarms.items()):
        print(f"CLONE? {sid}: {len(al)} alarm(s); two boards may share its keys "
              "(docs/enrolment.md: revoke it and re-enrol the real board)")
        for a in al:
            print(f"    {a.kind}: {a.detail} (first seen {_t(a.first_us)})")

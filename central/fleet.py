"""Fleet status: is every enrolled sensor sending, and what does it say about itself?

Strategy: pure.  `fleet_status` joins the keyring (who is enrolled, who is revoked) with
what the store knows per sensor (`Store.fleet_facts`: last summary, last status message,
latest health message, sequence gaps) and flags a sensor as silent when no summary has been
received for longer than `silent_after_s`.  Revoked sensors are listed but never flagged.
Also here: the central site's operating settings (`[fleet]` and `[retention]` in
central.toml), validated into a frozen `OperationsConfig`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

DEFAULT_SILENT_AFTER_S: Final = 2 * 3600
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class OperationsConfigError(ValueError):
    """A precise complaint about [fleet] or [retention] in central.toml."""


def parse_duration(text: str | int) -> int:
    """Seconds from 90, '90s', '15m', '2h' or '7d'."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        t = str(text).strip().lower()
        mult = _UNITS.get(t[-1:], None)
        num = t[:-1] if mult else t
        if not num.isdigit():
            raise OperationsConfigError(f"{text!r}: a duration is a number of s, m, h or d")
        value = int(num) * (mult or 1)
    if value <= 0:
        raise OperationsConfigError(f"{text!r}: a duration must be positive")
    return value


@dataclass(frozen=True, slots=True)
class OperationsConfig:
    silent_after_s: int = DEFAULT_SILENT_AFTER_S
    source_retention_days: int | None = None  # None: keep source addresses for ever


def parse_operations(doc: Mapping[str, Any]) -> OperationsConfig:
    """Read `[fleet] silent_after` and `[retention] source_days` from a central.toml doc."""
    fleet = doc.get("fleet", {})
    ret = doc.get("retention", {})
    if not isinstance(fleet, Mapping) or not isinstance(ret, Mapping):
        raise OperationsConfigError("[fleet] and [retention] must be tables")
    for name, t, known in (("fleet", fleet, {"silent_after"}),
                           ("retention", ret, {"source_days"})):
        unknown = sorted(set(t) - known)
        if unknown:
            raise OperationsConfigError(
                f"[{name}] unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    silent = parse_duration(fleet.get("silent_after", DEFAULT_SILENT_AFTER_S))
    days = ret.get("source_days")
    if days is not None and (type(days) is not int or days < 1):
        raise OperationsConfigError(
            f"[retention] source_days = {days!r}: a whole number of days, at least 1")
    return OperationsConfig(silent_after_s=silent, source_retention_days=days)


@dataclass(frozen=True, slots=True)
class SensorStatus:
    sensor: str
    enrolled: bool
    revoked: bool
    summaries: int
    last_summary_hour: int | None  # Unix seconds
    last_summary_received_us: int | None
    last_status: str | None
    last_status_us: int | None
    last_health_us: int | None
    spool_entries: int | None
    spool_bytes: int | None
    clock_synchronized: bool | None
    gaps: tuple[tuple[int, int], ...]
    missing_sequences: int
    silent_for_s: int | None  # since the last summary was received; None: never
    silent: bool

    def to_json(self) -> dict[str, Any]:
        return {k: (list(map(list, v)) if k == "gaps" else v)
                for k, v in ((f, getattr(self, f)) for f in self.__slots__)}


def _health_fields(payload: bytes | None) -> tuple[int | None, int | None, bool | None]:
    if not payload:
        return None, None, None
    try:
        doc = json.loads(payload)
    except ValueError:
        return None, None, None
    if not isinstance(doc, dict):
        return None, None, None
    entries, size = doc.get("spool_entries"), doc.get("spool_bytes")
    clock = doc.get("clock")
    sync = clock.get("synchronized") if isinstance(clock, dict) else None
    return (entries if isinstance(entries, int) else None,
            size if isinstance(size, int) else None,
            sync if isinstance(sync, bool) else None)


def fleet_status(
    enrolled: Mapping[str, bool],
    facts: Mapping[str, Mapping[str, Any]],
    *,
    now_us: int,
    silent_after_s: int = DEFAULT_SILENT_AFTER_S,
) -> list[SensorStatus]:
    """Every enrolled sensor (value: revoked) and every sensor the store has heard from."""
    out = []
    for sid in sorted(set(enrolled) | set(facts)):
        f = facts.get(sid, {})
        revoked = enrolled.get(sid, False)
        last_rx = f.get("last_summary_received_us")
        silent_for = None if last_rx is None else max(0, (now_us - last_rx) // 1_000_000)
        entries, size, sync = _health_fields(f.get("last_health"))
        gaps = tuple(tuple(g) for g in f.get("gaps", ()))
        out.append(SensorStatus(
            sensor=sid,
            enrolled=sid in enrolled,
            revoked=revoked,
            summaries=int(f.get("summaries", 0)),
            last_summary_hour=f.get("last_summary_hour"),
            last_summary_received_us=last_rx,
            last_status=f.get("last_status"),
            last_status_us=f.get("last_status_us"),
            last_health_us=f.get("last_health_us"),
            spool_entries=entries,
            spool_bytes=size,
            clock_synchronized=sync,
            gaps=gaps,
            missing_sequences=sum(b - a + 1 for a, b in gaps),
            silent_for_s=silent_for,
            silent=not revoked and sid in enrolled
            and (silent_for is None or silent_for > silent_after_s),
        ))
    return out

"""Labelled source populations: addresses an analyst identified elsewhere, followed here.

Strategy: pure.  `parse_label_csv` reads the analyst's CSV (`address,label,date`: an
address or a CIDR prefix, the population's name, the date or time it was identified);
`LabelSet` matches source addresses against every label's entries (numpy
`searchsorted` over sorted range starts with a running maximum of the ends, so prefixes
and single addresses may nest); `label_lifetimes` turns the per-address sightings the
store keeps (`label_daily`) into the shares no longer seen after 24, 48 and 168 hours.

Two bases, both reported and named (docs/central.md, "Labelled populations"):
- `identified`: measured from the date the address was identified (the CSV's date,
  00:00 UTC when only a date is given).  Population: the labelled addresses seen at or
  after that time.  Gone after T: never seen at or after identified + T.
- `first_seen`: measured from the address's first sighting in the data considered.
  Gone after T: never seen T or more after its first sighting.
For both, an address whose reference time is less than T before the end of the data
cannot be told yet: it is left out of that share (not eligible) and counted.

The hourly summaries say how many distinct ports a source probed, not which: there is
no source x port table, so a label's ports cannot be given (the report says so).
"""

from __future__ import annotations

import csv
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np

THRESHOLDS_H: Final = (24, 48, 168)
HOUR_US: Final = 3_600_000_000
BASES: Final = ("identified", "first_seen")
MAX_LABEL_LEN: Final = 64


class LabelFormatError(ValueError):
    """A line of the label CSV that cannot be read; the message names file and line."""


@dataclass(frozen=True, slots=True)
class LabelEntry:
    family: int  # 4 or 6
    start: int
    end: int  # inclusive
    identified_us: int


def _when(text: str, where: str) -> int:
    t = text.strip()
    try:
        if len(t) == 10:
            d = datetime.strptime(t, "%Y-%m-%d").replace(tzinfo=UTC)
        else:
            d = datetime.fromisoformat(t.replace("Z", "+00:00"))
            if d.tzinfo is None:
                d = d.replace(tzinfo=UTC)
    except ValueError:
        raise LabelFormatError(f"{where}: {text!r} is not a date (YYYY-MM-DD or ISO 8601)"
                               ) from None
    return int(d.timestamp()) * 1_000_000 + d.microsecond


def check_label_name(name: str) -> str:
    if not name or len(name) > MAX_LABEL_LEN or not all(
            c.isalnum() or c in "-_.:" for c in name):
        raise LabelFormatError(f"label {name!r}: 1 to {MAX_LABEL_LEN} letters, digits, "
                               "'-', '_', '.' or ':'")
    return name


def parse_label_csv(lines: Iterable[str], label: str, *, where: str = "input"
                    ) -> tuple[list[LabelEntry], int]:
    """(entries for `label`, rows skipped because they name another label).

    Columns: address (or CIDR prefix), label, date identified.  A header row (first cell
    `address`) and lines starting with `#` are skipped; an empty label cell means
    `label`.  Rows naming another label are counted and skipped, so one CSV may hold
    several populations, imported one at a time.
    """
    check_label_name(label)
    out: list[LabelEntry] = []
    other = 0
    for lineno, row in enumerate(csv.reader(lines), 1):
        if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
            continue
        if lineno == 1 and row[0].strip().lower() == "address":
            continue
        at = f"{where}:{lineno}"
        if len(row) < 3:
            raise LabelFormatError(f"{at}: expected address,label,date; got {len(row)} cells")
        addr, name, date = (c.strip() for c in row[:3])
        if name and name != label:
            other += 1
            continue
        try:
            net = ipaddress.ip_network(addr, strict=True)
        except ValueError as exc:
            raise LabelFormatError(f"{at}: {addr!r}: {exc}") from None
        out.append(LabelEntry(net.version, int(net.network_address),
                              int(net.broadcast_address), _when(date, at)))
    return out, other


class LabelSet:
    """Every label's entries; `match` says which sources belong to which label."""

    def __init__(self, entries: dict[str, Sequence[LabelEntry]]) -> None:
        self.names = sorted(entries)
        self._tables: list[dict[int, tuple[Any, Any, Any, Any]]] = []
        for name in self.names:
            per: dict[int, tuple[Any, Any, Any, Any]] = {}
            for fam in (4, 6):
                es = sorted((e for e in entries[name] if e.family == fam),
                            key=lambda e: (e.start, -e.end))
                if not es:
                    continue
                starts = [e.start for e in es]
                ends = [e.end for e in es]
                dates = [e.identified_us for e in es]
                # running maximum of the ends, and the entry that reaches it: a nested
                # address is found under its enclosing prefix too
                run_end: list[int] = []
                run_idx: list[int] = []
                for i, e in enumerate(ends):
                    if run_end and run_end[-1] >= e:
                        run_end.append(run_end[-1])
                        run_idx.append(run_idx[-1])
                    else:
                        run_end.append(e)
                        run_idx.append(i)
                if fam == 4:
                    # the identified time of the entry that covers each position
                    when = np.array(dates, dtype=np.int64)[np.array(run_idx, dtype=np.int64)]
                    per[4] = (np.array(starts, dtype=np.uint64),
                              np.array(run_end, dtype=np.uint64), run_idx, when)
                else:
                    per[6] = (starts, run_end, run_idx, dates)
            self._tables.append(per)

    def __len__(self) -> int:
        return len(self.names)

    def match_v4(self, i: int, addrs: Any) -> tuple[Any, Any]:
        """(mask of matching rows, identified_us per row) for uint32 addresses `addrs`."""
        t = self._tables[i].get(4)
        n = len(addrs)
        if t is None or not n:
            return np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int64)
        starts, run_end, _, when_at = t
        a = addrs.astype(np.uint64)
        pos = np.searchsorted(starts, a, side="right") - 1
        safe = np.maximum(pos, 0)
        ok = (pos >= 0) & (a <= run_end[safe])
        return ok, when_at[safe]

    def match_one(self, i: int, family: int, addr: int) -> int | None:
        """identified_us of the entry covering `addr` in label `i`, or None."""
        t = self._tables[i].get(family)
        if t is None:
            return None
        starts, run_end, run_idx, dates = t
        if family == 4:
            pos = int(np.searchsorted(starts, np.uint64(addr), side="right")) - 1
            if pos < 0 or addr > int(run_end[pos]):
                return None
            return int(dates[pos])
        import bisect
        pos = bisect.bisect_right(starts, addr) - 1
        if pos < 0 or addr > int(run_end[pos]):
            return None
        return int(dates[run_idx[pos]])


@dataclass(frozen=True, slots=True)
class LabelLifetime:
    basis: str  # identified | first_seen
    population: int
    eligible: list[int]
    gone: list[int]
    too_late: list[int]

    @property
    def shares(self) -> list[float | None]:
        return [g / e if e else None for g, e in zip(self.gone, self.eligible, strict=True)]


def label_lifetimes(
    sightings: Iterable[tuple[int, int, int]], until_us: int,
    thresholds_h: Sequence[int] = THRESHOLDS_H,
) -> list[LabelLifetime]:
    """Both bases from (identified_us, first_us, last_us) per labelled address seen.

    `first_us`/`last_us` are the address's first and last sighting in the data
    considered; `until_us` is the end of that data.
    """
    rows = list(sightings)
    out = []
    for basis in BASES:
        el = [0] * len(thresholds_h)
        gone = [0] * len(thresholds_h)
        pop = 0
        for ident, first, last in rows:
            if basis == "identified":
                if last < ident:
                    continue  # not seen since it was identified
                ref = ident
            else:
                ref = first
            pop += 1
            for j, h in enumerate(thresholds_h):
                t = h * HOUR_US
                if ref + t <= until_us:
                    el[j] += 1
                    gone[j] += last < ref + t
        out.append(LabelLifetime(basis, pop, el, gone, [pop - e for e in el]))
    return out

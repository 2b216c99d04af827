"""What changed, and when: rank changes against the previous quarter and surges in daily
series (pure: rows in, records out; no store, no clock).

Surges (docs/central.md, "What changed, and when"): a robust trailing baseline.  For each
day d of a daily series (packets, or distinct sources, of one service or region), the
baseline is the median of the `WINDOW` days before d (at least `MIN_BASELINE_DAYS` of
them; the previous quarter's days count, so a surge early in a quarter is found), and
its scale is 1.4826 x the median absolute deviation, floored at sqrt(baseline) (Poisson
noise) and 1.  Day d is *high* when

    value >= RATIO x baseline   and   value >= baseline + Z x scale.

A baseline of 0 (the series was silent on at least half of the window's days) is too
sparse to judge: no surge is looked for there (a service that appears from nothing is
reported as entering the top 5 instead).

A surge starts on d when d and the `PERSIST - 1` days after it are all high against the
baseline frozen at d (one day's burst is not a surge), and lasts while the days stay
high.  Its size is the median value over the surge divided by the baseline; its peak the
largest day.  Detection then resumes after the surge, with a baseline that includes it,
so a second, higher step is a second surge.  A series that never doubles is never a
surge: a weekly cycle, noise or a slow trend stays below RATIO.

Rank changes: for the top `TOP` now and the top `TOP` of the previous quarter, each key's
rank in both (from the full rankings): `entered`, `left`, `rose`, `fell`, `same`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import median
from typing import Any, Final

WINDOW: Final = 28
MIN_BASELINE_DAYS: Final = 14
RATIO: Final = 2.0
Z: Final = 5.0
PERSIST: Final = 3
MAD_SCALE: Final = 1.4826


@dataclass(frozen=True, slots=True)
class Surge:
    start_day: int  # Unix day (seconds // 86400)
    end_day: int  # last high day (inclusive)
    ongoing: bool  # still high on the series' last day
    baseline: float  # median of the WINDOW days before start_day
    level: float  # median over the surge
    ratio: float  # level / baseline
    peak: int
    peak_day: int


def _threshold(window: Sequence[int]) -> tuple[float, float]:
    b = float(median(window))
    mad = float(median(abs(x - b) for x in window))
    scale = max(MAD_SCALE * mad, math.sqrt(b), 1.0)
    return b, max(RATIO * b, b + Z * scale)


def find_surges(days: Sequence[int], values: Sequence[int | None],
                first_day: int | None = None) -> list[Surge]:
    """Surges in one daily series; `values[i]` is day `days[i]` (None: no data that day,
    skipped, never high).  Only surges starting on or after `first_day` are returned (the
    days before it serve as baseline)."""
    n = len(values)
    out: list[Surge] = []
    i = 0
    while i < n:
        lo = max(0, i - WINDOW)
        window = [v for v in values[lo:i] if v is not None]
        v = values[i]
        if len(window) < MIN_BASELINE_DAYS or v is None:
            i += 1
            continue
        b, th = _threshold(window)
        if b <= 0:
            i += 1  # a median of zero: too sparse to tell a surge from its noise
            continue
        run = values[i:i + PERSIST]
        if len(run) < PERSIST or not all(x is not None and x >= th for x in run):
            i += 1
            continue
        j = i
        while j + 1 < n and (x := values[j + 1]) is not None and x >= th:
            j += 1
        seg = [x for x in values[i:j + 1] if x is not None]
        level = float(median(seg))
        peak = max(seg)
        peak_i = i + seg.index(peak)
        if first_day is None or days[i] >= first_day:
            out.append(Surge(days[i], days[j], j == n - 1, b, level,
                             level / b, peak, days[peak_i]))
        i = j + 1
    return out


@dataclass(frozen=True, slots=True)
class RankChange:
    key: str
    kind: str  # entered | left | rose | fell | same
    rank: int | None  # now (None: not seen this quarter)
    prev_rank: int | None  # in the previous quarter (None: not seen then)


def rank_changes(now: Sequence[str], prev: Sequence[str], top: int = 5) -> list[RankChange]:
    """Changes among the top `top`: `now` and `prev` are the full rankings, best first."""
    r_now = {k: i + 1 for i, k in enumerate(now)}
    r_prev = {k: i + 1 for i, k in enumerate(prev)}
    out: list[RankChange] = []
    for k in now[:top]:
        p = r_prev.get(k)
        r = r_now[k]
        if p is None or p > top:
            kind = "entered"
        else:
            kind = "rose" if r < p else "fell" if r > p else "same"
        out.append(RankChange(k, kind, r, p))
    for k in prev[:top]:
        if r_now.get(k, top + 1) > top:
            out.append(RankChange(k, "left", r_now.get(k), r_prev[k]))
    return out


@dataclass(slots=True)
class Change:
    """One statement of the report's "what changed" section, as numbers."""

    subject: str  # service | region
    key: str
    kind: str  # entered | left | rose | fell | surge
    rank: int | None = None
    prev_rank: int | None = None
    metric: str | None = None  # surges: packets | sources
    surge: dict[str, Any] = field(default_factory=dict)


def changes_for(subject: str, ranks: Sequence[RankChange],
                series: Mapping[str, Mapping[str, tuple[Sequence[int], Sequence[int | None]]]],
                first_day: int) -> list[Change]:
    """Rank changes (not `same`) and every surge of `series[key][metric]`, in one list:
    per key, its rank change first, then its surges by start day."""
    out: list[Change] = []
    ranked = {r.key: r for r in ranks}
    keys = [r.key for r in ranks] + [k for k in series if k not in ranked]
    for key in keys:
        r = ranked.get(key)
        if r is not None and r.kind != "same":
            out.append(Change(subject, key, r.kind, r.rank, r.prev_rank))
        found: list[tuple[int, str, Surge]] = []
        for metric, (days, values) in series.get(key, {}).items():
            for s in find_surges(days, values, first_day):
                found.append((s.start_day, metric, s))
        for _, metric, s in sorted(found, key=lambda t: (t[0], t[1])):
            out.append(Change(subject, key, "surge", r.rank if r else None,
                              r.prev_rank if r else None, metric, {
                                  "start_day": s.start_day, "end_day": s.end_day,
                                  "ongoing": s.ongoing, "baseline": s.baseline,
                                  "level": s.level, "ratio": s.ratio, "peak": s.peak,
                                  "peak_day": s.peak_day}))
    return out

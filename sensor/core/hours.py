"""The hour-closing state machine of a live sensor: events in, summaries out, time injected.

Strategy (the shape of `uplink/session.py` and h11): the daemon's threads and clocks stay
in `sensor/edges/daemon.py`; every *decision* about buckets lives here, in one object that reads
no clock, starts no thread and opens nothing.  The daemon feeds it events

- `capture_closed(intervals)`: the aggregation closed intervals because records far
  ahead arrived (they are held until the next tick);
- `late(n)`: packets for a bucket that was already sealed (counted in the next summary);
- `gap_begin(reason, at_us)` / `gap_end(at_us)`: a stretch without capture;
- `clock_stepped(seen_us, delta_us)`: the wall clock jumped;
- `capture_totals(received, dropped, if_dropped)`: running libpcap totals over every
  handle (health carries their deltas since the previous summary);
- `reloaded()`, `summaries_dropped(n)`: counters for the next health map;

and asks `close_due(now_us, aggregation, synchronized=..., final=...)`, which returns the
summaries of every bucket that ended `close_grace_s` before `now_us`: buckets the
aggregation holds, plus an *empty* summary for every bucket nothing arrived in (an idle
hour still says so), at most `max_fill` of them after a long pause or a forward clock
step (then one gap record covers the rest).  `horizon_us` tells the capture side which
timestamps belong to sealed buckets.

A bucket is *complete* when the sensor ran from its start to its end and no forward
clock step jumped over it; otherwise its summary says `partial`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from sensor.core.aggregate import HourAggregator, hour_of
from sensor.core.limits import Limits
from wire.summary import Summary

MAX_GAPS = 256  # gap records kept for reporting (older ones are merged into a counter)
MAX_FILL = 48  # empty buckets written after a pause; beyond that, one gap record
CLOCK_STEP = "clock step"


class Finishable(Protocol):
    """An interval's aggregator: the reference `HourAggregator` or the compiled twin's."""

    @property
    def hour_start(self) -> int: ...

    late: int

    def finish(self, *, sensor_id: str, darknet: Iterable[str] = (), complete: bool = True,
               health: Mapping[str, Any] | None = None) -> Summary: ...


class Closed(Protocol):
    @property
    def aggregator(self) -> Finishable: ...


class Aggregation(Protocol):
    """What `close_due` needs of the aggregation (reference or compiled)."""

    def close_before(self, ts_us: int) -> Sequence[Closed]: ...

    def flush(self, *, complete: bool = False) -> Sequence[Closed]: ...


@dataclasses.dataclass(slots=True)
class Gap:
    start_us: int
    end_us: int | None  # None while the gap lasts
    reason: str
    reported: bool = False  # in at least one summary's health

    def as_list(self) -> list[Any]:
        return [self.start_us, self.end_us if self.end_us is not None else 0, self.reason]


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """What every summary of this sensor says about where it came from."""

    sensor_id: str
    darknet: tuple[str, ...]
    software: str
    topology: str
    interface: str


class HourCloser:
    """Decides which buckets close when, and what their health maps say (see module doc)."""

    def __init__(self, identity: Identity, *, bucket_s: int, close_grace_us: int,
                 limits: Limits, start_us: int, max_gaps: int = MAX_GAPS,
                 max_fill: int = MAX_FILL) -> None:
        if bucket_s <= 0:
            raise ValueError("bucket_s must be positive")
        if close_grace_us < 0:
            raise ValueError("close_grace_us must not be negative")
        self.identity = identity
        self.bucket_s = bucket_s
        self.close_grace_us = close_grace_us
        self.limits = limits
        self.max_gaps = max(1, max_gaps)
        self.max_fill = max(1, max_fill)
        self.start_us = start_us
        self._ready: list[Closed] = []
        self._closed_through = 0  # seconds: every bucket before this one is sealed
        self._next_bucket: int | None = None  # start of the next bucket to seal
        self._late = 0
        self._gaps: list[Gap] = []
        self._gaps_dropped = 0
        self._steps: list[list[int]] = []
        self._reloads = 0
        self._summaries_dropped = 0
        self._totals = (0, 0, 0)
        self._reported = (0, 0, 0)

    # ---------------------------------------------------------------- events
    def started(self, now_us: int) -> None:
        """Capture (re)started the sensor's life at `now_us`: earlier buckets are partial."""
        self.start_us = now_us

    @property
    def horizon_us(self) -> int:
        """Records stamped before this belong to sealed buckets: count them `late`."""
        return self._closed_through * 1_000_000

    def capture_closed(self, intervals: Iterable[Closed]) -> None:
        for c in intervals:
            self._ready.append(c)
            end = c.aggregator.hour_start + self.bucket_s
            self._closed_through = max(self._closed_through, end)

    def late(self, n: int) -> None:
        self._late += n

    def in_gap(self) -> bool:
        return bool(self._gaps) and self._gaps[-1].end_us is None

    def gap_begin(self, reason: str, at_us: int) -> bool:
        """Open a gap unless one is open; True if this call opened it."""
        if self.in_gap():
            return False
        self._gaps.append(Gap(at_us, None, reason))
        if len(self._gaps) > self.max_gaps:
            self._gaps.pop(0)
            self._gaps_dropped += 1
        return True

    def gap_end(self, at_us: int) -> Gap | None:
        """Close the open gap, if any, and return it."""
        if not self.in_gap():
            return None
        gap = self._gaps[-1]
        gap.end_us = at_us
        return gap

    def clock_stepped(self, seen_us: int, delta_us: int) -> None:
        # Back: sealed buckets stay sealed, their packets are counted late.  Forward: the
        # time jumped over was never observed, so it is a gap and its buckets are partial.
        self._steps.append([seen_us, delta_us])
        if delta_us > 0:
            self._gaps.append(Gap(seen_us - delta_us, seen_us, CLOCK_STEP))

    def capture_totals(self, received: int, dropped: int, if_dropped: int) -> None:
        self._totals = (received, dropped, if_dropped)

    def reloaded(self) -> None:
        self._reloads += 1

    def summaries_dropped(self, n: int = 1) -> None:
        self._summaries_dropped += n

    # ---------------------------------------------------------------- decision
    def close_due(self, now_us: int, aggregation: Aggregation, *,
                  synchronized: bool | None, final: bool = False,
                  extra_health: Callable[[], Mapping[str, Any]] | None = None) -> list[Summary]:
        """Summaries of every bucket that ended `close_grace_us` ago (all of them if `final`:
        the bucket in progress too, partial, and anything ahead of the clock).

        `extra_health` is asked once per summary (e.g. the responder's counters)."""
        bucket = self.bucket_s
        due_us = now_us - self.close_grace_us
        current = hour_of(now_us, bucket)
        if self._next_bucket is None:
            self._next_bucket = hour_of(self.start_us, bucket)
        closed = list(self._ready)
        self._ready.clear()
        closed += aggregation.close_before(due_us)
        if final:
            closed += aggregation.flush(complete=False)
        by_start = {c.aggregator.hour_start: c for c in closed}
        last = max([current, *by_start]) if final else hour_of(due_us, bucket) - bucket
        starts = set(by_start)
        if last >= self._next_bucket:
            fill = range(self._next_bucket, last + 1, bucket)
            if len(fill) > self.max_fill:
                # a long pause or a clock step forward: one gap record, not 10,000 empties
                skipped_end = last - (self.max_fill - 1) * bucket
                self._gaps.append(Gap(self._next_bucket * 1_000_000, skipped_end * 1_000_000,
                                      "no buckets (clock step or pause)"))
                fill = range(skipped_end, last + 1, bucket)
            starts.update(fill)
        now_s = now_us // 1_000_000
        out: list[Summary] = []
        for start in sorted(starts):
            c = by_start.get(start)
            agg: Finishable = (c.aggregator if c is not None
                               else HourAggregator(start, bucket, self.limits))
            complete = (start * 1_000_000 >= self.start_us and start + bucket <= now_s
                        and not self._stepped_over(start, start + bucket))
            if self._late:
                agg.late += self._late
                self._late = 0
            health = self._health(now_us, start, start + bucket, synchronized,
                                  extra_health() if extra_health is not None else None)
            out.append(agg.finish(sensor_id=self.identity.sensor_id,
                                  darknet=self.identity.darknet,
                                  complete=complete, health=health))
            self._closed_through = max(self._closed_through, start + bucket)
            self._next_bucket = max(self._next_bucket, start + bucket)
        return out

    def _stepped_over(self, start: int, end: int) -> bool:
        return any(g.reason == CLOCK_STEP and g.start_us < end * 1_000_000
                   and (g.end_us or 0) > start * 1_000_000 for g in self._gaps)

    def _health(self, now_us: int, start: int, end: int, sync: bool | None,
                extra: Mapping[str, Any] | None) -> dict[str, Any]:
        received, dropped, if_dropped = (
            t - r for t, r in zip(self._totals, self._reported, strict=True))
        self._reported = self._totals
        ident = self.identity
        h: dict[str, Any] = {
            "software": ident.software,
            "topology": ident.topology,
            "interface": ident.interface,
            "capture_received": received,
            "capture_dropped": dropped,
            "capture_if_dropped": if_dropped,
            "clock_synchronized": bool(sync),
            "closed_us": now_us,
        }
        if sync is None:
            h["clock_sync_unknown"] = True
        start_us, end_us = start * 1_000_000, end * 1_000_000
        # A gap is reported in every bucket it touches; one that touches no sealed bucket
        # (the buckets skipped after a long pause) in the first bucket after it.
        gaps = [g for g in self._gaps
                if (g.start_us < end_us and (g.end_us is None or g.end_us > start_us))
                or (not g.reported and g.end_us is not None and g.end_us <= start_us)]
        for g in gaps:
            g.reported = True
        if gaps:
            h["capture_gaps"] = [g.as_list() for g in gaps]
            total = 0
            for g in gaps:
                g_end = min(g.end_us if g.end_us is not None else now_us, end_us)
                total += max(0, g_end - max(g.start_us, start_us))
            h["capture_gap_us"] = total
        # gaps that ended before this bucket's end cannot touch later ones
        self._gaps = [g for g in self._gaps
                      if g.end_us is None or g.end_us > end_us or not g.reported]
        if self._gaps_dropped:
            h["capture_gaps_dropped"] = self._gaps_dropped
            self._gaps_dropped = 0
        if self._summaries_dropped:
            h["summaries_dropped"] = self._summaries_dropped
            self._summaries_dropped = 0
        if self._steps:
            h["clock_steps"] = self._steps
            self._steps = []
        if self._reloads:
            h["config_reloads"] = self._reloads
            self._reloads = 0
        if extra:
            h.update(extra)
        return h

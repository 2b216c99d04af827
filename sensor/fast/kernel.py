"""The compiled hot path: decode + hourly aggregation in C (sensor.fast._fast), same summaries.

Strategy: `sensor.fast._fast.Kernel` holds the state `HourlyAggregation` holds, one C structure
per Python one (sources, ports, destinations, budgeted exact sets that turn into
HyperLogLog sketches, the overflow sketch), and folds frames into it without creating a
Python object per packet: straight from a pcap file with `pcap_dispatch`
(`FastHourlyAggregation.feed_file`), or from the batches a live capture hands over
(`feed_frames`).  Closed intervals come back as `FastInterval`, whose `finish()` builds the
`Summary` from the exported tables; sketch estimates use `sensor.core.sketch._estimate` over
the exported registers, so the floating-point part is the reference's own code.

The pure-Python path (`sensor.core.decode` + `sensor.core.aggregate`) stays the reference and the
fallback: `available()` is False when the extension is not built, and
tests/integration/test_fastpath_equivalence.py checks that both give the same bytes.

Counting needs only `sensor.core.limits` and the extension: the summary format and the
reference's helpers that `finish()` uses are imported where they are used, so that
`teiten replay` can start counting while they load (sensor/edges/replay.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from sensor.core.limits import HOUR, LIMIT_FIELDS, Limits, check_bucket_seconds
from sensor.core.sketch import _estimate
from sensor.core.tuples import NamedTuple

# typing for type checkers only (start-up time: sensor/core/tuples.py says why).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final, Literal

    from wire.summary import Summary

try:
    from sensor.fast import _fast as _fast  # re-exported: pack and replay use it
except ImportError:  # not built: the reference path is used
    _fast = None  # type: ignore[assignment]

FILE_CHUNK: Final = 1 << 18  # frames per feed_file call (progress and Ctrl-C granularity)
# A size hint's room for destinations: a darknet's busy addresses are far fewer than its
# sources, and a table that outgrows this rehashes a few times, cheaply; a reservation as
# large as the sources' would be slots written and never used.
DESTINATIONS_ROOM: Final = 4096


def available() -> bool:
    """True when the compiled kernel is built and importable."""
    return _fast is not None


def pack_ahead(intervals: Sequence[FastInterval]) -> None:
    """Pack several closed intervals' big tables at once, one thread each, for the
    `finish_packed` (`sensor.fast.pack.encode_interval`) calls that follow: the hours a
    replay's `flush` closes together would otherwise be packed one after the other while
    the machine's other cores are idle.  The bytes are the same either way."""
    if _fast is not None and len(intervals) > 1:
        _fast.pack_ahead([interval._iv for interval in intervals], _estimate)


class FastInterval:
    """One closed interval from the kernel; `finish()` is `HourAggregator.finish`.

    `late` may be raised by the caller (a live sensor adds the packets it counted late for
    sealed buckets), as with `HourAggregator.late`.
    """

    __slots__ = ("_extra_late", "_iv", "bucket_seconds", "limits")

    def __init__(self, iv: Any, bucket_seconds: int, limits: Limits) -> None:
        self._iv = iv
        self.bucket_seconds = bucket_seconds
        # The limits the interval was opened with (a reload may have changed them since).
        own = tuple(iv.limits)
        self.limits = limits if own == limits.values() else Limits(
            **dict(zip(LIMIT_FIELDS, own, strict=True)))
        self._extra_late = 0

    @property
    def hour_start(self) -> int:
        return int(self._iv.hour_start)

    @property
    def late(self) -> int:
        return int(self._iv.late) + self._extra_late

    @late.setter
    def late(self, value: int) -> None:
        self._extra_late = value - int(self._iv.late)

    @property
    def packets(self) -> int:
        return int(self._iv.packets)

    def finish(
        self,
        *,
        sensor_id: str,
        darknet: Iterable[str] = (),
        complete: bool = True,
        health: Mapping[str, Any] | None = None,
    ) -> Summary:
        # Here, not at the top, as in _summary: the summary format loads while a replay counts.
        from wire.summary import DestinationRow, IcmpCodeRow, PortRow, SourceRow

        # Rows are made in C (same values as the reference's finish; estimates by _estimate).
        ports, icmp_codes, sources, destinations = self._iv.rows(
            PortRow, IcmpCodeRow, SourceRow, DestinationRow, _estimate
        )
        return self._summary(sensor_id, darknet, complete, health, ports=ports,
                             icmp_codes=icmp_codes, sources=sources, destinations=destinations)

    def finish_packed(
        self,
        *,
        sensor_id: str,
        darknet: Iterable[str] = (),
        complete: bool = True,
        health: Mapping[str, Any] | None = None,
    ) -> tuple[Summary, dict[str, bytes]] | None:
        """`finish()` without its four big tables, and those tables packed in C.

        Returns (the summary with empty ports, icmp_codes, sources and destinations, those
        four as the msgpack bytes `sensor.fast._fast.pack_table` makes of finish()'s rows),
        or None when the kernel cannot pack them (then use finish()).  No Python object is
        made per row: `sensor.fast.pack.encode_interval` writes a summary file from this.
        """
        packed = self._iv.pack(_estimate)
        if packed is None:
            return None
        head = self._summary(sensor_id, darknet, complete, health, ports=(), icmp_codes=(),
                             sources=(), destinations=())
        return head, dict(zip(("ports", "icmp_codes", "sources", "destinations"), packed,
                              strict=True))

    def _summary(
        self,
        sensor_id: str,
        darknet: Iterable[str],
        complete: bool,
        health: Mapping[str, Any] | None,
        **rows: Any,
    ) -> Summary:
        # The summary format and the reference's helpers are imported when the first
        # interval is finished, not with this module: `teiten replay` starts counting
        # before they are loaded, and loads them meanwhile (sensor/edges/replay.py).
        from sensor.core.aggregate import backscatter_map, interval_health, nonzero
        from wire.summary import FINGERPRINTS, SIZE_BUCKETS, Summary

        t = self._iv.export(False)
        overflow = t["sources_overflow"]
        registers = t["overflow_registers"]
        overflow_distinct = _estimate(registers) if overflow and registers is not None else 0
        merged_health = interval_health(
            health, complete=complete, late=int(t["late"]) + self._extra_late
        )
        # Allocation failures in the kernel (never silent; absent when none happened):
        # frames not counted at all, and frames a distinct count may be missing.
        if t["oom_dropped"]:
            merged_health["kernel_oom_dropped"] = int(t["oom_dropped"])
        if t["oom_inexact"]:
            merged_health["kernel_oom_inexact"] = int(t["oom_inexact"])
        tcp_flags, ttls, sizes = t["tcp_flags"], t["ttl"], t["sizes"]
        return Summary(
            sensor_id=sensor_id,
            hour_start=t["hour_start"],
            bucket_seconds=self.bucket_seconds,
            darknet=tuple(darknet),
            packets=t["packets"],
            bytes=t["bytes"],
            fragments=t["fragments"],
            sources_distinct=t["sources_rows"] + overflow_distinct,
            sources_distinct_estimated=overflow > 0,
            sources_overflow=overflow,
            destinations_overflow=t["destinations_overflow"],
            **rows,
            tcp_flags=nonzero(tcp_flags),
            ttl=nonzero(ttls),
            sizes=nonzero(sizes, SIZE_BUCKETS),
            fingerprints=dict(zip(FINGERPRINTS, t["fingerprints"], strict=True)),
            backscatter=backscatter_map(t["backscatter"]),
            malformed=t["malformed"],
            sketch=self.limits.sketch_description(),
            health=merged_health,
        )


class FastClosed(NamedTuple):
    """An interval handed back by `FastHourlyAggregation`, ready to `finish()`.

    (A named tuple: a dataclass would import the dataclasses module before a replay counts.)
    """

    aggregator: FastInterval
    complete: bool


class FastHourlyAggregation:
    """`HourlyAggregation` fed with frames instead of records, decoded and counted in C.

    Same routing (`open_intervals` open, late packets counted in the oldest open one), same
    `close_before` / `flush`; frames of `linktype` go in through `feed_frames` (batches from
    a live capture) or `feed_file` (a `sensor.fast._fast.FileReader`, no Python per packet).
    """

    def __init__(
        self,
        linktype: int,
        bucket_seconds: int = HOUR,
        limits: Limits | None = None,
        open_intervals: int = 2,
        *,
        ahead: Literal["rows", "pack"] | None = "rows",
    ) -> None:
        if _fast is None:
            raise RuntimeError("sensor.fast._fast is not built; run `pip install -e .` or use the "
                               "reference path (sensor.core.aggregate)")
        # The reference's checks (check_bucket_seconds, Limits.check): same errors, same messages.
        check_bucket_seconds(bucket_seconds)
        self._limits = (limits or Limits()).check()
        self.linktype = linktype
        self.bucket_seconds = bucket_seconds
        self._k = _fast.Kernel(linktype, bucket_seconds, max(1, open_intervals),
                               self._limits.values())
        # The arguments FastInterval.finish gives Interval.rows: with them, feed_file makes
        # the rows of an interval that closes while it counts on (a helper thread; see
        # prebuild_main in sensor/fast/src/reader.c).
        # With ahead="pack" (a caller that encodes with finish_packed) the helper packs the
        # interval's tables instead, for Interval.pack; with None it does nothing.
        if ahead == "rows":
            # Here, not at the top: a replay (ahead="pack") counts before wire.summary loads.
            from wire.summary import DestinationRow, IcmpCodeRow, PortRow, SourceRow

            self._k.set_rows(PortRow, IcmpCodeRow, SourceRow, DestinationRow, _estimate)
        elif ahead == "pack":
            self._k.set_pack(_estimate)

    @property
    def limits(self) -> Limits:
        return self._limits

    @limits.setter
    def limits(self, limits: Limits) -> None:
        """As `HourlyAggregation.limits`: intervals opened from now on use these limits."""
        self._k.set_limits(limits.check().values())
        self._limits = limits

    def _wrap(self, closed: list[tuple[Any, bool]]) -> list[FastClosed]:
        return [
            FastClosed(FastInterval(iv, self.bucket_seconds, self.limits), complete)
            for iv, complete in closed
        ]

    @property
    def pending_bad_timestamps(self) -> int:
        """As `HourlyAggregation.pending_bad_timestamps`: frames with a bad timestamp held
        until an interval opens."""
        return int(self._k.pending_bad_timestamps)

    def set_size_hint(self, entries: int) -> None:
        """Start the next new interval's tables with room for `entries` ports and sources
        (and destinations, up to DESTINATIONS_ROOM; all capped by the limits), not 16: a
        caller that knows the input is big (a replay, from the file's size) saves the
        rehashes of tables growing.  Later intervals are sized from the hour before them."""
        n = max(0, min(int(entries), 0xFFFFFFFF))
        self._k.set_size_hint(n, n, min(n, DESTINATIONS_ROOM))

    def set_linktype(self, linktype: int) -> None:
        """Decode what follows as frames of `linktype` (the state carries on)."""
        self._k.set_linktype(linktype)
        self.linktype = linktype

    def feed_frames(self, frames: Sequence[tuple[int, int, bytes]]) -> list[FastClosed]:
        """Decode and count `(ts_us, wire_len, data)` frames; return intervals that closed."""
        return self._wrap(self._k.feed_frames(frames))

    def set_horizon(self, ts_us: int) -> None:
        """Frames timed before `ts_us` are counted by `take_before()`, not routed.

        A live sensor seals buckets on a timer: after `close_before` an old frame must not
        open its sealed bucket again.  Same decision as the daemon's reference path, which
        counts such records as late before they reach `HourlyAggregation.add`.
        """
        self._k.set_horizon(ts_us)

    def take_before(self) -> int:
        """Frames stopped by the horizon since the last call (and reset the count)."""
        return int(self._k.take_before())

    def feed_file(self, reader: Any, max_frames: int = FILE_CHUNK) -> tuple[int, list[FastClosed]]:
        """Read up to `max_frames` frames of `reader` (a `sensor.fast._fast.FileReader`).

        Returns (frames read, closed intervals); frames is -1 at the end of the file.  It
        returns early when an interval closes, so closed state never piles up.  Raises
        `sensor.fast._fast.FastError(message, offset)` on a corrupt file, after the frames before
        it were returned.
        """
        n, closed = self._k.feed_file(reader, max_frames)
        return int(n), self._wrap(closed)

    def close_before(self, ts_us: int) -> list[FastClosed]:
        """Close every interval that ends at or before `ts_us` (a timer's decision)."""
        return self._wrap(self._k.close_before(ts_us))

    def flush(self, *, complete: bool = False) -> list[FastClosed]:
        """Close every open interval (end of a file, or shutdown: partial by default)."""
        return self._wrap(self._k.flush(complete))

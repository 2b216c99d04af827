"""Hourly aggregation of decoded packets, with bounded memory.

Strategy (after corsaro3's interval plugins): an `HourAggregator` holds the state of one
interval; `add()` folds in one `PacketRecord`, `add_malformed()` one `Malformed`, and
`finish()` turns the state into an immutable `Summary`.  `HourlyAggregation` routes records
to the interval of their own timestamp (UTC hour, or a shorter test-only bucket), keeps a
bounded number of intervals open for slightly out-of-order packets, and hands back the ones
that closed.  Nothing here reads a clock: time comes only from packet timestamps and from
the caller's `close_before(ts_us)`, so live capture, replay, tests and benchmarks share it.

Bounds (all in `Limits`, each overflow counted, nothing sampled):
- at most `max_sources` sources get a row per hour; packets from further sources still
  count everywhere else and in `sources_overflow` (their number is estimated by a sketch);
- at most `max_destinations` destination rows; beyond, `destinations_overflow`;
- distinct counts are exact below their bounds and sketches beyond (see sensor/core/sketch.py);
- the port and ICMP tables are bounded by the key space (2 x 65,536 + 3 x 256 keys).
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sensor.core.classify import BACKSCATTER_NAMES, backscatter_kind, fingerprint_bits
from sensor.core.decode import TS_MAX_US
from sensor.core.limits import HOUR, Limits, check_bucket_seconds
from sensor.core.records import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    Malformed,
    PacketRecord,
)
from sensor.core.sketch import BudgetedDistinct, HyperLogLog, RowDistinct
from wire.summary import (
    EST_DESTINATIONS,
    EST_PORTS,
    FINGERPRINTS,
    SIZE_BUCKETS,
    DestinationRow,
    IcmpCodeRow,
    PortRow,
    SourceRow,
    Summary,
)

_NO_PORT: Final = -1
_V6_TAG: Final = 1 << 128  # keeps IPv6 source keys apart from IPv4 ones
_V6_PREFIX_TAG: Final = 1 << 64  # keeps IPv6 /64 destination keys apart from IPv4 ones
_M64: Final = (1 << 64) - 1




def hour_of(ts_us: int, bucket_seconds: int = HOUR) -> int:
    """Start (Unix seconds) of the UTC bucket holding `ts_us`."""
    seconds = ts_us // 1_000_000
    return seconds - seconds % bucket_seconds


def _source_key(rec: PacketRecord) -> int:
    return rec.src if rec.version == 4 else rec.src | _V6_TAG


def _dest_key(version: int, dst: int) -> int:
    return dst if version == 4 else (dst >> 64) | _V6_PREFIX_TAG


class HourAggregator:
    """State of one interval: add records, then `finish()` into a `Summary`."""

    def __init__(self, hour_start: int, bucket_seconds: int = HOUR, limits: Limits | None = None):
        self.hour_start = hour_start
        self.bucket_seconds = bucket_seconds
        self.limits = (limits or Limits()).check()
        lim = self.limits
        self.packets = 0
        self.bytes = 0
        self.fragments = 0
        self.late = 0  # packets that belonged to an earlier, already closed interval
        self._ports: dict[int, list[int]] = {}  # key -> [packets, bytes, backscatter]
        self._port_sources = BudgetedDistinct(
            budget=lim.port_exact_budget,
            exact_limit=lim.port_exact_limit,
            big_p=lim.port_big_p,
            small_p=lim.port_small_p,
            max_big=lim.port_max_big,
        )
        self._icmp_codes: dict[int, int] = {}
        # Source table, columnar: key -> row, then one array per column.
        self._src_row: dict[int, int] = {}
        self._src_packets = array("Q")
        self._src_bytes = array("Q")
        self._src_first = array("q")
        self._src_last = array("q")
        self._src_ttl = bytearray()
        self._src_fp = bytearray()
        # The exact budget is shared by halves between the two per-source columns.
        source_distinct = {
            "budget": lim.source_exact_budget // 2,
            "exact_limit": lim.source_exact_limit,
            "big_p": lim.source_big_p,
            "small_p": lim.source_small_p,
            "max_big": lim.source_max_big // 2,
        }
        self._src_ports = RowDistinct(**source_distinct)
        self._src_dests = RowDistinct(**source_distinct)
        self.sources_overflow = 0
        self._overflow_sources = HyperLogLog(lim.overflow_sketch_p)
        self._dests: dict[int, int] = {}
        self.destinations_overflow = 0
        self._tcp_flags = [0] * 256
        self._ttl = [0] * 256
        self._sizes = [0] * len(SIZE_BUCKETS)
        self._fingerprints = [0, 0, 0]
        self._backscatter = [0] * len(BACKSCATTER_NAMES)
        self._malformed: dict[str, int] = {}

    # -- per packet --------------------------------------------------------------------

    def add(self, rec: PacketRecord) -> None:
        self.packets += 1
        ip_len = rec.ip_len
        self.bytes += ip_len
        proto = rec.proto
        bs = 0
        fp = 0
        port_of_source = -1
        if rec.later_fragment:
            self.fragments += 1
            port = _NO_PORT
        elif proto == PROTO_TCP:
            port = rec.dport  # type: ignore[assignment]
            port_of_source = port | (PROTO_TCP << 16)
            self._tcp_flags[rec.tcp_flags] += 1
            bs = backscatter_kind(rec)
            fp = fingerprint_bits(rec)
        elif proto == PROTO_UDP:
            port = rec.dport  # type: ignore[assignment]
            port_of_source = port | (PROTO_UDP << 16)
            fp = fingerprint_bits(rec)
        elif proto in (PROTO_ICMP, PROTO_ICMPV6):
            port = rec.icmp_type  # type: ignore[assignment]
            code_key = (proto << 16) | (port << 8) | rec.icmp_code  # type: ignore[operator]
            self._icmp_codes[code_key] = self._icmp_codes.get(code_key, 0) + 1
            bs = backscatter_kind(rec)
            fp = fingerprint_bits(rec)
        else:
            port = _NO_PORT
            fp = fingerprint_bits(rec)
        port_key = (proto << 17) | (port + 1)
        counters = self._ports.get(port_key)
        if counters is None:
            self._ports[port_key] = [1, ip_len, 1 if bs else 0]
        else:
            counters[0] += 1
            counters[1] += ip_len
            if bs:
                counters[2] += 1
        if bs:
            self._backscatter[bs] += 1
        if fp:
            fps = self._fingerprints
            if fp & 1:
                fps[0] += 1
            if fp & 2:
                fps[1] += 1
            if fp & 4:
                fps[2] += 1
        src_key = rec.src if rec.version == 4 else rec.src | _V6_TAG
        self._port_sources.add(port_key, src_key)
        dest_key = _dest_key(rec.version, rec.dst)
        self._ttl[rec.ttl] += 1
        self._sizes[bisect_right(SIZE_BUCKETS, ip_len) - 1] += 1

        row = self._src_row.get(src_key)
        ts = rec.ts_us
        if row is None:
            if len(self._src_row) < self.limits.max_sources:
                row = self._new_source(src_key, ts, rec.ttl)
            else:
                self.sources_overflow += 1
                self._overflow_sources.add(src_key)
        if row is not None:
            self._src_packets[row] += 1
            self._src_bytes[row] += ip_len
            if ts < self._src_first[row]:
                self._src_first[row] = ts
            if ts > self._src_last[row]:
                self._src_last[row] = ts
            if fp:
                self._src_fp[row] |= fp
            if port_of_source >= 0:
                self._src_ports.add(row, port_of_source)
            # A source is IPv4 or IPv6, so its destinations need no family tag (fits 64 bits).
            self._src_dests.add(row, dest_key & _M64)

        dests = self._dests
        count = dests.get(dest_key)
        if count is not None:
            dests[dest_key] = count + 1
        elif len(dests) < self.limits.max_destinations:
            dests[dest_key] = 1
        else:
            self.destinations_overflow += 1

    def _new_source(self, key: int, ts: int, ttl: int) -> int:
        row = len(self._src_row)
        self._src_row[key] = row
        self._src_packets.append(0)
        self._src_bytes.append(0)
        self._src_first.append(ts)
        self._src_last.append(ts)
        self._src_ttl.append(ttl)
        self._src_fp.append(0)
        self._src_ports.add_row()
        self._src_dests.add_row()
        return row

    def add_malformed(self, reason: str, n: int = 1) -> None:
        self._malformed[reason] = self._malformed.get(reason, 0) + n

    def add_all(self, records: Iterable[PacketRecord | Malformed]) -> None:
        for rec in records:
            if type(rec) is PacketRecord:
                self.add(rec)
            else:
                self.add_malformed(rec.reason)  # type: ignore[union-attr]

    # -- end of interval ---------------------------------------------------------------

    def finish(
        self,
        *,
        sensor_id: str,
        darknet: Iterable[str] = (),
        complete: bool = True,
        health: Mapping[str, Any] | None = None,
    ) -> Summary:
        """Freeze the interval into a Summary; `complete=False` marks a partial interval."""
        ports = []
        for key, (packets, nbytes, bs) in self._ports.items():
            proto = key >> 17
            port = (key & 0x1FFFF) - 1
            n_sources, estimated = self._port_sources.count(key)
            ports.append(
                PortRow(proto, None if port == _NO_PORT else port, packets, nbytes, bs,
                        n_sources, estimated)
            )
        sources = []
        for key, row in self._src_row.items():
            version = 4 if key < _V6_TAG else 6
            address = (key & (_V6_TAG - 1)).to_bytes(4 if version == 4 else 16, "big")
            n_ports, est_ports = self._src_ports.count(row)
            n_dests, est_dests = self._src_dests.count(row)
            sources.append(
                SourceRow(
                    address, self._src_packets[row], self._src_bytes[row],
                    self._src_first[row], self._src_last[row], n_ports, n_dests,
                    self._src_ttl[row], self._src_fp[row],
                    (EST_PORTS if est_ports else 0) | (EST_DESTINATIONS if est_dests else 0),
                )
            )
        destinations = [
            DestinationRow(
                key.to_bytes(4, "big") if key < _V6_PREFIX_TAG
                else (key & (_V6_PREFIX_TAG - 1)).to_bytes(8, "big"),
                packets,
            )
            for key, packets in self._dests.items()
        ]
        overflow_distinct = self._overflow_sources.estimate() if self.sources_overflow else 0
        return Summary(
            sensor_id=sensor_id,
            hour_start=self.hour_start,
            bucket_seconds=self.bucket_seconds,
            darknet=tuple(darknet),
            packets=self.packets,
            bytes=self.bytes,
            fragments=self.fragments,
            sources_distinct=len(self._src_row) + overflow_distinct,
            sources_distinct_estimated=self.sources_overflow > 0,
            sources_overflow=self.sources_overflow,
            destinations_overflow=self.destinations_overflow,
            ports=tuple(ports),
            icmp_codes=tuple(
                IcmpCodeRow(k >> 16, (k >> 8) & 0xFF, k & 0xFF, n)
                for k, n in self._icmp_codes.items()
            ),
            sources=tuple(sources),
            destinations=tuple(destinations),
            tcp_flags=nonzero(self._tcp_flags),
            ttl=nonzero(self._ttl),
            sizes=nonzero(self._sizes, SIZE_BUCKETS),
            fingerprints=dict(zip(FINGERPRINTS, self._fingerprints, strict=True)),
            backscatter=backscatter_map(self._backscatter),
            malformed=dict(self._malformed),
            sketch=self.limits.sketch_description(),
            health=interval_health(health, complete=complete, late=self.late),
        )


# Shared by this reference finish and the compiled one (sensor/fast/kernel.py).
def nonzero(
    counts: Sequence[int], keys: Sequence[int] | None = None
) -> tuple[tuple[int, int], ...]:
    """(key, count) of the non-zero counts of a histogram; keys default to the indexes."""
    return tuple((i if keys is None else keys[i], n) for i, n in enumerate(counts) if n)


def backscatter_map(counts: Sequence[int]) -> dict[str, int]:
    """Backscatter kinds by name (index 0 of `BACKSCATTER_NAMES` is "not backscatter")."""
    return {name: counts[i] for i, name in enumerate(BACKSCATTER_NAMES) if i}


def interval_health(
    health: Mapping[str, Any] | None, *, complete: bool, late: int
) -> dict[str, Any]:
    """A summary's health: the caller's facts, `partial` unless the interval is complete,
    and `late_packets` when packets older than every open interval were counted here."""
    merged = dict(health or {})
    merged["partial"] = not complete
    if late:
        merged["late_packets"] = late
    return merged


@dataclass(frozen=True, slots=True)
class ClosedInterval:
    """An interval handed back by `HourlyAggregation`, ready to `finish()`."""

    aggregator: HourAggregator
    complete: bool


class HourlyAggregation:
    """Route records to the interval of their timestamp; hand back intervals as they close.

    At most `open_intervals` intervals stay open (the newest and the ones just before it,
    for packets that arrive slightly out of order).  A record older than every open
    interval is counted as `late` in the oldest open one, never dropped silently.  A record
    timed outside what a summary can hold (0..`sensor.core.decode.TS_MAX_US`) opens no interval:
    it is counted as malformed `bad_timestamp` in the oldest open one, or, while none is
    open, held in `pending_bad_timestamps` and counted in the first one that opens.
    """

    def __init__(
        self,
        bucket_seconds: int = HOUR,
        limits: Limits | None = None,
        open_intervals: int = 2,
    ) -> None:
        check_bucket_seconds(bucket_seconds)
        self.bucket_seconds = bucket_seconds
        self.limits = (limits or Limits()).check()
        self.open_intervals = max(1, open_intervals)
        self._open: dict[int, HourAggregator] = {}
        self._first_start: int | None = None
        # Frames with a bad timestamp seen while no interval was open (see the class doc).
        self.pending_bad_timestamps = 0

    def _interval(self, ts_us: int, closed: list[ClosedInterval]) -> HourAggregator:
        start = hour_of(ts_us, self.bucket_seconds)
        agg = self._open.get(start)
        if agg is not None:
            return agg
        if self._open:
            newest = max(self._open)
            if start < newest - (self.open_intervals - 1) * self.bucket_seconds:
                # Its interval has closed: count it in the oldest open one, never drop it.
                self._open[min(self._open)].late += 1
                return _LATE
        agg = HourAggregator(start, self.bucket_seconds, self.limits)
        if self.pending_bad_timestamps:
            agg.add_malformed("bad_timestamp", self.pending_bad_timestamps)
            self.pending_bad_timestamps = 0
        self._open[start] = agg
        if self._first_start is None:
            self._first_start = start
        newest = max(self._open)
        horizon = newest - (self.open_intervals - 1) * self.bucket_seconds
        for old in sorted(k for k in self._open if k < horizon):
            # Complete unless capture started inside it (the very first interval).
            closed.append(ClosedInterval(self._open.pop(old), old != self._first_start))
        return agg

    def add(self, rec: PacketRecord | Malformed) -> list[ClosedInterval]:
        closed: list[ClosedInterval] = []
        if not 0 <= rec.ts_us <= TS_MAX_US:  # whatever decoded it: its time routes nowhere
            if self._open:
                self._open[min(self._open)].add_malformed("bad_timestamp")
            else:
                self.pending_bad_timestamps += 1
            return closed
        agg = self._interval(rec.ts_us, closed)
        if agg is _LATE:
            return closed
        if type(rec) is PacketRecord:
            agg.add(rec)
        else:
            agg.add_malformed(rec.reason)  # type: ignore[union-attr]
        return closed

    def close_before(self, ts_us: int) -> list[ClosedInterval]:
        """Close every interval that ends at or before `ts_us` (a timer's decision)."""
        seconds = ts_us // 1_000_000
        closed = []
        for start in sorted(self._open):
            if start + self.bucket_seconds <= seconds:
                closed.append(ClosedInterval(self._open.pop(start), start != self._first_start))
        return closed

    def flush(self, *, complete: bool = False) -> list[ClosedInterval]:
        """Close every open interval (end of a file, or shutdown: partial by default)."""
        closed = [
            ClosedInterval(self._open.pop(start), complete) for start in sorted(self._open)
        ]
        return closed


# A sink for records too late for any open interval (they are counted, not stored).
_LATE: Final = HourAggregator(0, HOUR, Limits(max_sources=1, max_destinations=0))

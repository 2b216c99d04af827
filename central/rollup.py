"""Rollup: decoded hourly summaries -> the aggregates the quarterly report reads.

Strategy: pure.  `rollup_summary` turns one `Summary` into an `HourRollup` (its port rows,
packets per region, named counters, source spans and the health facts the report needs);
`RollupBatch.add` folds many of them into keyed sums, so the store writes each aggregate row
once per batch (`Store.write_rollup`, one transaction).  Regions are resolved here, at
rollup time, with the delegation data current then (`RegionTable`): a later import changes
only later rollups, never what a published report said.

Aggregates, all keyed by UTC day (`hour_start // 86400`) and sensor so a report can pick a
quarter and a set of sensors: packets and backscatter per (proto, port), per quarter too;
packets per region (from the source rows; packets of sources past the sensor's cap are
`ZZ/overflow`, sources outside every delegation `ZZ/`); named counters.  Sources are kept
fleet-wide per quarter as first/last sighting, packets and the OR of fingerprint bits:
enough for lifetimes, and all that retention has to anonymise.

Quarters are calendar quarters in UTC, written `2025Q1`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import repeat
from typing import Any, Final

import numpy as np
import zstandard

from central._rollup import LifeTable
from central.columns import SummaryColumns
from central.labels import LabelSet
from central.regions import UNKNOWN_CC, RegionTable
from wire.summary import FINGERPRINT_BITS, FINGERPRINTS, Summary

log = logging.getLogger(__name__)
DAY: Final = 86_400
OVERFLOW_REGISTRY: Final = "overflow"


class QuarterError(ValueError):
    """Not a quarter such as 2025Q1."""


def parse_quarter(text: str) -> tuple[int, int]:
    """(year, quarter 1..4) from '2025Q1' (case-insensitive)."""
    t = text.strip().upper()
    if len(t) != 6 or t[4] != "Q" or not t[:4].isdigit() or t[5] not in "1234":
        raise QuarterError(f"{text!r}: a quarter is written YYYYQn, e.g. 2025Q1")
    return int(t[:4]), int(t[5])


def quarter_name(year: int, q: int) -> str:
    return f"{year:04d}Q{q}"


def quarter_bounds(text: str) -> tuple[int, int]:
    """[start, end) of the quarter in Unix seconds, UTC."""
    y, q = parse_quarter(text)
    start = datetime(y, 3 * q - 2, 1, tzinfo=UTC)
    end = datetime(y + (q == 4), 1 if q == 4 else 3 * q + 1, 1, tzinfo=UTC)
    return int(start.timestamp()), int(end.timestamp())


def previous_quarter(text: str) -> str:
    y, q = parse_quarter(text)
    return quarter_name(y - 1, 4) if q == 1 else quarter_name(y, q - 1)


def quarter_of(unix_s: int) -> str:
    d = datetime.fromtimestamp(unix_s, UTC)
    return quarter_name(d.year, (d.month - 1) // 3 + 1)


def _int(v: object) -> int:
    return v if type(v) is int and v >= 0 else 0


def health_facts(health: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """(partial, capture_drops, clock_trouble, spool_evicted) from a summary's health map.

    Keys read, as the sensor daemon writes them (docs/central.md, "Report"): `partial`;
    `capture_dropped` + `capture_if_dropped` (also `capture: {dropped, ifdropped}`);
    clock trouble is `clock_synchronized: false`, `clock: {synchronized: false}` or any
    `clock_steps` in the hour; `spool_evicted`.  Anything missing counts as no trouble.
    """
    partial = 1 if health.get("partial") is True else 0
    drops = _int(health.get("capture_dropped")) + _int(health.get("capture_if_dropped"))
    cap = health.get("capture")
    if isinstance(cap, Mapping):
        drops += _int(cap.get("dropped")) + _int(cap.get("ifdropped"))
    clock = health.get("clock")
    trouble = (health.get("clock_synchronized") is False
               or (isinstance(clock, Mapping) and clock.get("synchronized") is False)
               or bool(health.get("clock_steps")))
    return partial, drops, 1 if trouble else 0, _int(health.get("spool_evicted"))


@dataclass(frozen=True, slots=True)
class HourRollup:
    """What one summary contributes to the aggregates."""

    sensor_id: str
    sequence: int
    hour_start: int
    bucket_seconds: int
    ports: tuple[tuple[int, int, int, int], ...]  # proto, port (-1: none), packets, backscatter
    regions: tuple[tuple[str, str, int], ...]  # cc, registry, packets
    counters: tuple[tuple[str, int], ...]
    sources: tuple[tuple[bytes, int, int, int, int], ...]  # addr, first, last, packets, fp
    hour_row: tuple[int, ...]  # packets, backscatter, sources, overflow, partial, drops,
    #                            clock_unsynced, spool_evicted
    port_sources: tuple[tuple[int, int, int, int], ...] = ()  # proto, port, sources, est
    region_sources: tuple[tuple[str, str, int], ...] = ()  # cc, registry, address hash
    label_hits: tuple[tuple[str, bytes, int, int, int, int], ...] = ()  # label, addr,
    #                                           packets, first_us, last_us, identified_us

    @property
    def day(self) -> int:
        return self.hour_start // DAY

    @property
    def quarter(self) -> str:
        return quarter_of(self.hour_start)


def rollup_summary(s: Summary, sequence: int, regions: RegionTable,
                   labels: LabelSet | None = None) -> HourRollup:
    """The aggregates of one decoded summary, regions resolved with `regions` now."""
    ports = tuple(
        (r.proto, -1 if r.port is None else r.port, r.packets, r.backscatter) for r in s.ports
    )
    addrs = [r.address for r in s.sources]
    labs = regions.lookup_many(addrs)
    by_lab: dict[int, int] = {}
    for r, lab in zip(s.sources, labs, strict=True):
        by_lab[lab] = by_lab.get(lab, 0) + r.packets
    reg: list[tuple[str, str, int]] = [
        (*(regions.labels[lab] if lab >= 0 else (UNKNOWN_CC, "")), n)
        for lab, n in by_lab.items()
    ]
    if s.sources_overflow:
        reg.append((UNKNOWN_CC, OVERFLOW_REGISTRY, s.sources_overflow))
    sources = tuple(
        (r.address, r.first_us, r.last_us, r.packets, r.fingerprints) for r in s.sources
    )
    hashes = source_hashes(
        np.frombuffer(b"".join(a.ljust(16, b"\0") for a in addrs), dtype=np.uint8)
        .reshape(-1, 16), np.array([len(a) for a in addrs], dtype=np.uint8))
    region_sources = tuple(
        (*(regions.labels[lab] if lab >= 0 else (UNKNOWN_CC, "")), int(h))
        for lab, h in zip(labs, hashes.tolist(), strict=True))
    hits: list[tuple[str, bytes, int, int, int, int]] = []
    if labels is not None:
        for i, name in enumerate(labels.names):
            for r in s.sources:
                ident = labels.match_one(i, 4 if len(r.address) == 4 else 6,
                                         int.from_bytes(r.address, "big"))
                if ident is not None:
                    hits.append((name, r.address, r.packets, r.first_us, r.last_us, ident))
    port_sources = tuple(
        (r.proto, -1 if r.port is None else r.port, r.sources, int(r.sources_estimated))
        for r in s.ports)
    return _hour_rollup(s, sequence, ports, tuple(reg), sources, port_sources,
                        region_sources, tuple(hits))


@dataclass(slots=True)
class RollupBatch:
    """Keyed sums of many `HourRollup`s, written by `Store.write_rollup` in one go."""

    ports: dict[tuple[int, int, int, str], list[int]] = field(default_factory=dict)
    quarter_ports: dict[tuple[str, str, int, int], list[int]] = field(default_factory=dict)
    regions: dict[tuple[int, str, str, str], int] = field(default_factory=dict)
    counters: dict[tuple[int, str, str], int] = field(default_factory=dict)
    sources: dict[tuple[str, bytes], list[int]] = field(default_factory=dict)
    hours: list[tuple[str, int, int, int, tuple[int, ...]]] = field(default_factory=list)
    # (day, sensor) -> (port keys, packets, backscatter): ColumnBatch's ports, already summed
    port_days: dict[tuple[int, str], PortDay] = field(default_factory=dict)
    # (quarter, address, first_us, last_us, packets, fingerprints), unique per
    # (quarter, address) and disjoint from `sources`: ColumnBatch's life tables
    source_rows: list[tuple[str, bytes, int, int, int, int]] = field(default_factory=list)
    # per-port hourly distinct sources summed per (day, sensor): reference rows and columns
    port_src: dict[tuple[int, int, int, str], list[int]] = field(default_factory=dict)
    port_src_days: dict[tuple[int, str], PortDay] = field(default_factory=dict)
    # (day, cc, registry) -> address hashes (uint64 arrays; `region_source_sets` folds them)
    region_src: dict[tuple[int, str, str], list[Any]] = field(default_factory=dict)
    # (label, day, address) -> [packets, first_us, last_us, identified_us]
    label_rows: dict[tuple[str, int, bytes], list[int]] = field(default_factory=dict)

    def port_src_columns(self) -> dict[tuple[int, str], PortDay]:
        """`port_src` and `port_src_days` together, one (keys, sources, estimated) per
        (day, sensor)."""
        rows: dict[tuple[int, str], list[tuple[int, int, int]]] = {}
        for (proto, port, day, sid), (n, est) in self.port_src.items():
            rows.setdefault((day, sid), []).append((port_key(proto, port), n, est))
        out = dict(self.port_src_days)
        for k, r in rows.items():
            cols = reduce_ports(*(np.array(c, dtype=np.int64) for c in zip(*r, strict=True)))
            out[k] = merge_port_days(out[k], cols) if k in out else cols
        return out

    def region_source_sets(self) -> dict[tuple[int, str, str], Any]:
        """(day, cc, registry) -> the KMV set (sorted unique hashes, at most KMV_K)."""
        return {k: kmv(np.concatenate(v)) for k, v in self.region_src.items()}

    def add_label_hit(self, label: str, day: int, addr: bytes, pk: int, first: int,
                      last: int, ident: int) -> None:
        cur = self.label_rows.get((label, day, addr))
        if cur is None:
            self.label_rows[(label, day, addr)] = [pk, first, last, ident]
        else:
            cur[0] += pk
            cur[1] = min(cur[1], first)
            cur[2] = max(cur[2], last)
            cur[3] = min(cur[3], ident)

    def port_day_columns(self) -> dict[tuple[int, str], PortDay]:
        """`ports` and `port_days` together, one `PortDay` per (day, sensor)."""
        rows: dict[tuple[int, str], list[tuple[int, int, int]]] = {}
        for (proto, port, day, sid), (pk, bs) in self.ports.items():
            rows.setdefault((day, sid), []).append((port_key(proto, port), pk, bs))
        out = dict(self.port_days)
        for k, r in rows.items():
            cols = reduce_ports(*(np.array(c, dtype=np.int64) for c in zip(*r, strict=True)))
            out[k] = merge_port_days(out[k], cols) if k in out else cols
        return out

    def __len__(self) -> int:
        return len(self.hours)

    def add(self, h: HourRollup) -> None:
        day, sid, quarter = h.day, h.sensor_id, h.quarter
        for proto, port, pk, bs in h.ports:
            row = self.ports.setdefault((proto, port, day, sid), [0, 0])
            row[0] += pk
            row[1] += bs
            qrow = self.quarter_ports.setdefault((quarter, sid, proto, port), [0, 0])
            qrow[0] += pk
            qrow[1] += bs
        for cc, reg, n in h.regions:
            k = (day, sid, cc, reg)
            self.regions[k] = self.regions.get(k, 0) + n
        for name, v in h.counters:
            ck = (day, sid, name)
            self.counters[ck] = self.counters.get(ck, 0) + v
        src = self.sources
        for addr, first, last, pk, fp in h.sources:
            cur = src.get((quarter, addr))
            if cur is None:
                src[(quarter, addr)] = [first, last, pk, fp]
            else:
                if first < cur[0]:
                    cur[0] = first
                if last > cur[1]:
                    cur[1] = last
                cur[2] += pk
                cur[3] |= fp
        for proto, port, n, est in h.port_sources:
            prow = self.port_src.setdefault((proto, port, day, sid), [0, 0])
            prow[0] += n
            prow[1] += est
        for cc, reg, hsh in h.region_sources:
            self.region_src.setdefault((day, cc, reg), []).append(
                np.array([hsh], dtype=np.uint64))
        for label, addr, pk, first, last, ident in h.label_hits:
            self.add_label_hit(label, day, addr, pk, first, last, ident)
        self.hours.append((sid, h.sequence, h.hour_start, h.bucket_seconds, h.hour_row))


def fingerprint_bit(name: str) -> int:
    return FINGERPRINT_BITS[name]


__all__ = [
    "DAY",
    "FINGERPRINTS",
    "HourRollup",
    "QuarterError",
    "RollupBatch",
    "fingerprint_bit",
    "health_facts",
    "parse_quarter",
    "previous_quarter",
    "quarter_bounds",
    "quarter_of",
    "rollup_summary",
]


_I64_MAX: Final = 2**63 - 1
# (sorted unique port keys, packets, backscatter) of one sensor-day, int64 arrays
PortDay = tuple[Any, Any, Any]


def port_key(proto: int, port: int) -> int:
    """One int64 per (proto, port); port -1 (no port) included."""
    return proto * 65_537 + port + 1


def port_of_key(key: int) -> tuple[int, int]:
    proto, p = divmod(key, 65_537)
    return proto, p - 1


# Distinct sources per (day, region), fleet-wide: a k-minimum-values set of 64-bit
# address hashes.  Below KMV_K hashes it is the exact set; at KMV_K the count is the KMV
# estimate (k - 1) / (h_k / 2**64), relative standard error about 1 / sqrt(k - 2): 1.6 %.
KMV_K: Final = 4096
_M1: Final = np.uint64(0xBF58476D1CE4E5B9)
_M2: Final = np.uint64(0x94D049BB133111EB)


def _mix64(x: Any) -> Any:
    """splitmix64's finaliser, on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def source_hashes(slots: Any, lengths: Any) -> Any:
    """A 64-bit hash per address: `slots` (n, 16) uint8 rows, `lengths` 4, 8 or 16."""
    if not len(lengths):
        return np.zeros(0, dtype=np.uint64)
    words = np.ascontiguousarray(slots).view("<u8").reshape(-1, 2)
    with np.errstate(over="ignore"):
        h = _mix64(words[:, 0] ^ _mix64(words[:, 1] ^ lengths.astype(np.uint64)))
    return h


def kmv(hashes: Any) -> Any:
    """The KMV set of `hashes`: sorted, unique, the smallest KMV_K."""
    h = np.sort(hashes.astype(np.uint64, copy=False))
    if len(h) > 1:
        h = h[np.r_[True, h[1:] != h[:-1]]]
    return h[:KMV_K]


def kmv_count(hashes: Any) -> tuple[int, bool]:
    """(distinct sources, estimated) from a KMV set."""
    if len(hashes) < KMV_K:
        return len(hashes), False
    return int((KMV_K - 1) / ((float(hashes[KMV_K - 1]) + 1.0) / 2.0**64)), True


def reduce_ports(keys: Any, *values: Any) -> tuple[Any, ...]:
    """(sorted unique keys, *exact sums per key); sums past int64 saturate at 2**63 - 1."""
    if not len(keys):
        return (keys, *values)
    if any(int(v.max()) > _I64_MAX // len(v) for v in values):
        sums: dict[int, list[int]] = {}
        for k, *vs in zip(keys.tolist(), *(v.tolist() for v in values), strict=True):
            acc = sums.setdefault(k, [0] * len(vs))
            for i, x in enumerate(vs):
                acc[i] += x
        ks = sorted(sums)
        return (np.array(ks, dtype=np.int64), *(
            np.array([min(sums[k][i], _I64_MAX) for k in ks], dtype=np.int64)
            for i in range(len(values))))
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    return (k[starts], *(np.add.reduceat(v[order], starts) for v in values))


def merge_port_days(a: PortDay, b: PortDay) -> PortDay:
    k, pk, bs = reduce_ports(*(np.concatenate([x, y]) for x, y in zip(a, b, strict=True)))
    return k, pk, bs


def pack_port_day(day: PortDay) -> bytes:
    """The `daily_port_cols.data` bytes: zstd of keys, packets, backscatter (int64 LE)."""
    raw = b"".join(np.ascontiguousarray(c, dtype="<i8").tobytes() for c in day)
    out: bytes = zstandard.ZstdCompressor(level=1).compress(raw)
    return out


def unpack_port_day(n: int, data: bytes) -> PortDay:
    raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=24 * n)
    cols = np.frombuffer(raw, dtype="<i8").astype(np.int64).reshape(3, n)
    return cols[0], cols[1], cols[2]


def _sum_by_label(labels: Any, values: Any) -> dict[int, int]:
    """Exact sums of int64 `values` per label (-1 included); bincount when float64 is exact."""
    if not len(labels):
        return {}
    if int(values.max()) * len(values) < 2**53:
        sums = np.bincount(labels + 1, weights=values)
        present = np.flatnonzero(np.bincount(labels + 1))
        return {int(i) - 1: int(sums[i]) for i in present.tolist()}
    k, v = reduce_ports(labels, values)
    return dict(zip(k.tolist(), v.tolist(), strict=True))


class ColumnBatch:
    """`RollupBatch`'s fast twin: the same aggregates from `SummaryColumns`.

    Per-row work is in numpy and `central._rollup.LifeTable` (the fleet-wide source table,
    one per quarter), never one Python object per source row; `finish` hands the store a
    `RollupBatch` with the same keys and sums as the reference path, which
    tests/unit/test_columns.py checks.  `sources` counts the rows the life tables hold, so a
    caller can bound the memory (about 70 bytes a distinct source) by flushing early.
    """

    def __init__(self, regions: RegionTable, labels: LabelSet | None = None) -> None:
        self.regions = regions
        self.labels = labels
        self._psrc: dict[tuple[int, str], list[tuple[Any, Any, Any]]] = {}
        self.batch = RollupBatch()
        self.life: dict[str, LifeTable] = {}
        self._ports: dict[tuple[int, str], list[tuple[Any, Any, Any]]] = {}
        self.port_bytes = 0  # memory held by the port columns and hash sets until `finish`
        self._held: dict[tuple[int, str, str], int] = {}

    def __len__(self) -> int:
        return len(self.batch)

    @property
    def sources(self) -> int:
        return sum(len(t) for t in self.life.values())

    def add(self, c: SummaryColumns, sequence: int) -> None:
        s = c.head
        day, quarter = s.hour_start // DAY, quarter_of(s.hour_start)
        src = c.sources
        labs: dict[int, int] = {}
        if src.n:
            packets = src.int_column(0)
            lens = np.frombuffer(src.length, dtype=np.uint8)
            slots = np.frombuffer(src.address, dtype=np.uint8).reshape(-1, 16)
            v4 = lens == 4
            label = np.full(src.n, -1, dtype=np.int64)
            if v4.any():
                a4 = np.ascontiguousarray(slots[v4, :4]).view(">u4").ravel().astype(np.uint32)
                label[v4] = self.regions.lookup_v4_many(a4)
            if not v4.all():
                label[~v4] = self.regions.lookup_many([bytes(a) for a in slots[~v4]])
            labs = _sum_by_label(label, packets)
            hashes = source_hashes(slots, lens)
            order = np.argsort(label)
            sl = label[order]
            cuts = np.flatnonzero(sl[1:] != sl[:-1]) + 1
            for lab, part in zip(sl[np.r_[0, cuts]].tolist(), np.split(hashes[order], cuts),
                                 strict=True):
                cc, reg = self.regions.labels[lab] if lab >= 0 else (UNKNOWN_CC, "")
                parts = self.batch.region_src.setdefault((day, cc, reg), [])
                parts.append(part)
                held = self._held.get((day, cc, reg), 0) + len(part)
                if held > 2 * KMV_K:  # fold: a key holds at most 3 K hashes (96 KiB)
                    folded = kmv(np.concatenate(parts))
                    parts[:] = [folded]
                    self.port_bytes += 8 * (len(folded) - held)
                    held = len(folded)
                else:
                    self.port_bytes += 8 * len(part)
                self._held[(day, cc, reg)] = held
            if self.labels is not None and len(self.labels):
                self._label_hits(day, src, slots, lens, v4)
            self.life.setdefault(quarter, LifeTable()).add(
                src.address, src.length, src.ints[2], src.ints[3], src.ints[0], src.ints[7]
            )
        regions = [
            (*(self.regions.labels[lab] if lab >= 0 else (UNKNOWN_CC, "")), n)
            for lab, n in labs.items()
        ]
        if s.sources_overflow:
            regions.append((UNKNOWN_CC, OVERFLOW_REGISTRY, s.sources_overflow))
        if c.ports.n:
            ports = c.ports
            key = port_key(ports.int_column(0), ports.int_column(1))  # type: ignore[arg-type]
            self._ports.setdefault((day, s.sensor_id), []).append(
                (key, ports.int_column(2), ports.int_column(4))
            )
            self._psrc.setdefault((day, s.sensor_id), []).append(
                (key, ports.int_column(5), ports.int_column(6))
            )
            self.port_bytes += 48 * ports.n
        self.batch.add(_hour_rollup(s, sequence, (), tuple(regions), ()))

    def _label_hits(self, day: int, src: Any, slots: Any, lens: Any, v4: Any) -> None:
        assert self.labels is not None
        packets, first, last = src.int_column(0), src.int_column(2), src.int_column(3)
        rows4 = np.flatnonzero(v4)
        a4 = (np.ascontiguousarray(slots[rows4, :4]).view(">u4").ravel().astype(np.uint32)
              if len(rows4) else np.zeros(0, dtype=np.uint32))
        rows6 = np.flatnonzero(~v4).tolist()
        for i, name in enumerate(self.labels.names):
            ok, when = self.labels.match_v4(i, a4)
            js = np.flatnonzero(ok)
            hits = [(int(rows4[j]), int(when[j])) for j in js.tolist()] if len(js) else []
            for r in rows6:
                ln = int(lens[r])
                ident = self.labels.match_one(i, 6, int.from_bytes(bytes(slots[r, :ln]), "big"))
                if ident is not None:
                    hits.append((r, ident))
            for r, ident in hits:
                ln = int(lens[r])
                self.batch.add_label_hit(name, day, bytes(slots[r, :ln]), int(packets[r]),
                                         int(first[r]), int(last[r]), ident)

    def finish(self) -> RollupBatch:
        """The batch for `Store.write_rollup` (ports folded, life tables exported)."""
        b = self.batch
        for (day, sid), parts in self._psrc.items():
            cols = reduce_ports(*(np.concatenate(c) for c in zip(*parts, strict=True)))
            b.port_src_days[(day, sid)] = (cols[0], cols[1], cols[2])
        self._psrc.clear()
        by_quarter: dict[tuple[str, str], list[PortDay]] = {}
        for (day, sid), parts in self._ports.items():
            cols = reduce_ports(*(np.concatenate(c) for c in zip(*parts, strict=True)))
            one: PortDay = (cols[0], cols[1], cols[2])
            b.port_days[(day, sid)] = one
            by_quarter.setdefault((quarter_of(day * DAY), sid), []).append(one)
        for (quarter, sid), days in by_quarter.items():
            k, pk, bs = reduce_ports(*(np.concatenate(c) for c in zip(*days, strict=True)))
            for key, p, x in zip(k.tolist(), pk.tolist(), bs.tolist(), strict=True):
                qrow = b.quarter_ports.setdefault((quarter, sid, *port_of_key(key)), [0, 0])
                qrow[0] += p
                qrow[1] += x
        self._ports.clear()
        self._held.clear()
        self.port_bytes = 0
        for quarter, table in self.life.items():
            addr, lens, first, last, packets, fps = table.export()
            life = [np.frombuffer(x, dtype=np.int64).tolist() for x in (first, last, packets, fps)]
            addrs = [addr[16 * i : 16 * i + ln] for i, ln in enumerate(lens)]
            b.source_rows.extend(zip(repeat(quarter), addrs, *life, strict=False))
            table.clear()
        return b


def _hour_rollup(s: Summary, sequence: int, ports: tuple[tuple[int, int, int, int], ...],
                 regions: tuple[tuple[str, str, int], ...],
                 sources: tuple[tuple[bytes, int, int, int, int], ...],
                 port_sources: tuple[tuple[int, int, int, int], ...] = (),
                 region_sources: tuple[tuple[str, str, int], ...] = (),
                 label_hits: tuple[tuple[str, bytes, int, int, int, int], ...] = (),
                 ) -> HourRollup:
    counters: dict[str, int] = {
        "packets": s.packets,
        "bytes": s.bytes,
        "fragments": s.fragments,
        "backscatter": s.backscatter_total,
        "malformed": s.malformed_total,
        "sources_overflow": s.sources_overflow,
    }
    for k, v in s.backscatter.items():
        counters[f"backscatter:{k}"] = v
    for k, v in s.fingerprints.items():
        counters[f"fp:{k}"] = v
    partial, drops, unsynced, evicted = health_facts(s.health)
    return HourRollup(
        sensor_id=s.sensor_id,
        sequence=sequence,
        hour_start=s.hour_start,
        bucket_seconds=s.bucket_seconds,
        ports=ports,
        regions=regions,
        counters=tuple(counters.items()),
        sources=sources,
        hour_row=(s.packets, s.backscatter_total, s.sources_distinct, s.sources_overflow,
                  partial, drops, unsynced, evicted),
        port_sources=port_sources,
        region_sources=region_sources,
        label_hits=label_hits,
    )

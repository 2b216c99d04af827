"""Regions: RIR delegated statistics -> sorted address ranges -> (country code, registry).

Strategy: pure.  `parse_delegated(lines)` reads the "extended" delegated statistics format
that all five RIRs and the NRO combined file share (one `|`-separated record a line:
`registry|cc|type|start|value|date|status[|opaque-id[|extensions]]`), keeps only IPv4 and
IPv6 rows whose status is `allocated` or `assigned`, and turns each into an inclusive
integer range: an IPv4 row is a start address and a host count that need not be a power of
two or CIDR-aligned, an IPv6 row a start address and a prefix length.  Version, summary and
comment lines are skipped.  `RegionTable.build` sorts the ranges, drops exact duplicates (the
NRO file repeats what the RIR files say), keeps the first of two overlapping ranges and
counts the conflict, and merges neighbours with the same label.  A lookup is one binary
search over the starts (`bisect`, or numpy's `searchsorted` for a batch of IPv4
addresses), then one comparison with the end of the range found.  IPv4 and IPv6 are
separate tables: addresses are compared as ints of their own width.

No files here: the importer in `central/cli/report.py` reads them, the store keeps the
ranges (`Store.save_regions`), and `RegionTable.from_rows` rebuilds a table from them.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

COUNTED_STATUS: Final = frozenset({"allocated", "assigned"})
REGISTRIES: Final = frozenset({"afrinic", "apnic", "arin", "lacnic", "ripencc"})
UNKNOWN_CC: Final = "ZZ"  # ISO 3166 user-assigned: "unknown or unspecified"
_MIXED: Final = -2  # a /24 that two delegations (or one and a gap) share


class DelegationFormatError(ValueError):
    """A line that claims to be a delegation record but cannot be one."""


@dataclass(frozen=True, slots=True)
class Delegation:
    """One counted delegation: an inclusive range of one address family."""

    family: int  # 4 or 6
    start: int
    end: int
    cc: str
    registry: str


@dataclass(slots=True)
class ParseStats:
    records: int = 0  # ipv4/ipv6 records read
    counted: int = 0  # allocated or assigned
    skipped_status: int = 0  # available, reserved, ...
    other_types: int = 0  # asn rows
    headers: int = 0  # version and summary lines
    serials: list[str] = field(default_factory=list)  # "registry serial" from version lines


def _is_version_line(parts: list[str]) -> bool:
    head = parts[0]
    return bool(head) and all(c.isdigit() or c == "." for c in head) and len(parts) >= 3


def parse_delegated(
    lines: Iterable[str], *, stats: ParseStats | None = None, where: str = "input"
) -> list[Delegation]:
    """Counted IPv4/IPv6 delegations in `lines` (one file's text, any RIR or the NRO file)."""
    st = stats if stats is not None else ParseStats()
    out: list[Delegation] = []
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("|")
        if _is_version_line(parts):
            st.headers += 1
            st.serials.append(f"{parts[1]} {parts[2]}")
            continue
        if len(parts) >= 6 and parts[5] == "summary":
            st.headers += 1
            continue
        if len(parts) < 7:
            raise DelegationFormatError(
                f"{where}:{lineno}: expected at least 7 '|'-separated fields, got {len(parts)}"
            )
        registry, cc, kind, start, value, _date, status = (p.strip() for p in parts[:7])
        if kind not in ("ipv4", "ipv6"):
            st.other_types += 1
            continue
        st.records += 1
        if status.lower() not in COUNTED_STATUS:
            st.skipped_status += 1
            continue
        try:
            if kind == "ipv4":
                first = int(ipaddress.IPv4Address(start))
                count = int(value)
                if count < 1 or first + count > 1 << 32:
                    raise ValueError(f"count {value} out of range")
                rec = Delegation(4, first, first + count - 1, cc.upper() or UNKNOWN_CC,
                                 registry.lower())
            else:
                first = int(ipaddress.IPv6Address(start))
                plen = int(value)
                if not 0 <= plen <= 128:
                    raise ValueError(f"prefix length {value} out of range")
                size = 1 << (128 - plen)
                if first % size:
                    raise ValueError(f"{start}/{plen} has host bits set")
                rec = Delegation(6, first, first + size - 1, cc.upper() or UNKNOWN_CC,
                                 registry.lower())
        except ValueError as exc:
            raise DelegationFormatError(f"{where}:{lineno}: {line[:80]!r}: {exc}") from None
        st.counted += 1
        out.append(rec)
    return out


@dataclass(frozen=True, slots=True)
class BuildStats:
    ipv4_ranges: int
    ipv6_ranges: int
    duplicates: int  # identical ranges given more than once (RIR file + NRO file)
    conflicts: int  # overlapping ranges with another label: the first one kept


class _Family:
    """Sorted, non-overlapping inclusive ranges of one family with label indexes."""

    __slots__ = ("ends", "labels", "np_ends", "np_labels", "np_starts", "starts")

    def __init__(self, starts: list[int], ends: list[int], labels: list[int], width: int):
        self.starts = starts
        self.ends = ends
        self.labels = labels
        if width == 32:
            self.np_starts: Any = np.asarray(starts, dtype=np.uint32)
            self.np_ends: Any = np.asarray(ends, dtype=np.uint32)
            self.np_labels: Any = np.asarray(labels, dtype=np.int32)


def _build_family(
    recs: list[Delegation], label_of: dict[tuple[str, str], int]
) -> tuple[list[int], list[int], list[int], int, int]:
    recs = sorted(recs, key=lambda r: (r.start, -r.end))
    starts: list[int] = []
    ends: list[int] = []
    labels: list[int] = []
    dup = conflicts = 0
    for r in recs:
        lab = label_of.setdefault((r.cc, r.registry), len(label_of))
        if ends and r.start <= ends[-1]:
            if r.end <= ends[-1] and labels[-1] == lab:
                dup += 1
                continue
            conflicts += 1
            if r.end <= ends[-1]:
                continue
            r = Delegation(r.family, ends[-1] + 1, r.end, r.cc, r.registry)
        if ends and r.start == ends[-1] + 1 and labels[-1] == lab:
            ends[-1] = r.end  # adjacent, same label: merge
            continue
        starts.append(r.start)
        ends.append(r.end)
        labels.append(lab)
    return starts, ends, labels, dup, conflicts


class RegionTable:
    """Address -> (cc, registry) by binary search; build with `build` or `from_rows`."""

    def __init__(self, v4: _Family, v6: _Family, labels: Sequence[tuple[str, str]],
                 stats: BuildStats) -> None:
        self._slash24: Any = None
        self._v4 = v4
        self._v6 = v6
        self.labels: tuple[tuple[str, str], ...] = tuple(labels)
        self.stats = stats

    @classmethod
    def build(cls, delegations: Iterable[Delegation]) -> RegionTable:
        recs = list(delegations)
        v4 = [d for d in recs if d.family == 4]
        v6 = [d for d in recs if d.family == 6]
        label_of: dict[tuple[str, str], int] = {}
        s4, e4, l4, d4, c4 = _build_family(v4, label_of)
        s6, e6, l6, d6, c6 = _build_family(v6, label_of)
        labels = [k for k, _ in sorted(label_of.items(), key=lambda kv: kv[1])]
        stats = BuildStats(len(s4), len(s6), d4 + d6, c4 + c6)
        return cls(_Family(s4, e4, l4, 32), _Family(s6, e6, l6, 128), labels, stats)

    @classmethod
    def empty(cls) -> RegionTable:
        return cls.build([])

    def rows(self) -> Iterable[tuple[int, int, int, str, str]]:
        """(family, start, end, cc, registry) for the store."""
        for fam, f in ((4, self._v4), (6, self._v6)):
            for s, e, lab in zip(f.starts, f.ends, f.labels, strict=True):
                cc, reg = self.labels[lab]
                yield fam, s, e, cc, reg

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[int, int, int, str, str]]) -> RegionTable:
        return cls.build(Delegation(f, s, e, cc, reg) for f, s, e, cc, reg in rows)

    def __len__(self) -> int:
        return len(self._v4.starts) + len(self._v6.starts)

    # ---------------------------------------------------------------- lookups
    def lookup_int(self, family: int, value: int) -> tuple[str, str] | None:
        f = self._v4 if family == 4 else self._v6
        i = bisect.bisect_right(f.starts, value) - 1
        if i >= 0 and value <= f.ends[i]:
            return self.labels[f.labels[i]]
        return None

    def lookup(self, address: bytes) -> tuple[str, str] | None:
        """(cc, registry) of a 4- or 16-byte address, or None when no delegation covers it."""
        f = self._v4 if len(address) == 4 else self._v6
        value = int.from_bytes(address, "big")
        i = bisect.bisect_right(f.starts, value) - 1
        if i >= 0 and value <= f.ends[i]:
            return self.labels[f.labels[i]]
        return None

    def lookup_v4_batch(self, addresses: Any) -> Any:
        """Label indexes (into `labels`; -1 = not delegated) for a uint32 numpy array."""
        f = self._v4
        a = np.asarray(addresses, dtype=np.uint32)
        if not f.starts:
            return np.full(a.shape, -1, dtype=np.int32)
        i = np.searchsorted(f.np_starts, a, side="right") - 1
        safe = np.maximum(i, 0)
        hit = (i >= 0) & (a <= f.np_ends[safe])
        return np.where(hit, f.np_labels[safe], -1)

    def lookup_v4_many(self, addresses: Any) -> Any:
        """`lookup_v4_batch` through a table of every /24 (built on first use: 32 MiB,
        0.2 s): one load per address, a binary search only in the few /24s that
        two delegations share.  For the rollup, which looks up 20,000 sources an hour per
        sensor; the same labels as `lookup_v4_batch`, which tests check."""
        a = np.asarray(addresses, dtype=np.uint32)
        if self._slash24 is None:
            self._slash24 = self._build_slash24()
        lab = self._slash24[a >> 8].astype(np.int32)
        mixed = lab == _MIXED
        if mixed.any():
            lab[mixed] = self.lookup_v4_batch(a[mixed])
        return lab

    def _build_slash24(self) -> Any:
        f = self._v4
        out = np.full(1 << 24, -1, dtype=np.int16)
        if len(self.labels) >= 2**15 - 2:  # int16 cells: use the searches instead
            out[:] = _MIXED
            return out
        if not f.starts:
            return out
        start = f.np_starts.astype(np.int64)
        end = f.np_ends.astype(np.int64)
        # /24s a range covers whole get its label (ranges do not overlap, so no other
        # range touches them); the /24s where a range starts or ends inside are shared
        first, last = (start + 255) >> 8, ((end + 1) >> 8) - 1
        n = np.maximum(last - first + 1, 0)
        offset = np.repeat(first - np.concatenate(([0], np.cumsum(n)[:-1])), n)
        out[offset + np.arange(int(n.sum()))] = np.repeat(f.np_labels, n).astype(np.int16)
        out[start[(start & 255) != 0] >> 8] = _MIXED
        out[end[((end + 1) & 255) != 0] >> 8] = _MIXED
        return out

    def lookup_many(self, addresses: Sequence[bytes]) -> list[int]:
        """Label indexes (-1 = unknown) for a list of 4/16-byte addresses, IPv4 batched."""
        out = [-1] * len(addresses)
        v4_idx = [i for i, a in enumerate(addresses) if len(a) == 4]
        if v4_idx:
            packed = b"".join(addresses[i] for i in v4_idx)
            ints = np.frombuffer(packed, dtype=">u4").astype(np.uint32)
            labs = self.lookup_v4_batch(ints).tolist()
            for i, lab in zip(v4_idx, labs, strict=True):
                out[i] = lab
        if len(v4_idx) != len(addresses):
            f = self._v6
            for i, a in enumerate(addresses):
                if len(a) == 4:
                    continue
                value = int.from_bytes(a, "big")
                j = bisect.bisect_right(f.starts, value) - 1
                if j >= 0 and value <= f.ends[j]:
                    out[i] = f.labels[j]
        return out

"""Summary bytes -> the head and fixed-width columns of the big tables (fast path, pure).

Strategy: `decode_summary` builds one Python tuple per source row, 60 ms for a busy /24
hour; a quarter of 20 sensors is 43,200 of them.  `decode_columns` finds the values of the
top-level map (`central._rollup.map_spans`), unpacks all but the three big tables
(`sources`, `ports`, `destinations`) with msgpack, checks them with the reference checks
(`wire.summary.decode_document`), and has `central._rollup.parse_rows` turn each table
into int64 columns, checking every cell the same way (1.3 ms for that hour).  Whenever
anything is unusual (a table the C parser does not accept, a failed check, trailing
bytes), it runs the reference decoder instead: that raises the reference's error, or, for
a valid but unusual summary (extra columns from a newer minor version), gives rows that
are turned into the same columns.  So the accepted set and the error messages are the
reference's by construction; tests/unit/test_columns.py checks it on mutated summaries.

No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

import msgpack
import numpy as np

from central._rollup import map_spans, parse_rows
from wire.summary import (
    MAX_DESTINATION_ROWS,
    MAX_PORT_ROWS,
    MAX_SOURCE_ROWS,
    Summary,
    SummaryFormatError,
    decode_document,
    decode_summary,
)

# Column kinds of central/_rollup.c's parse_rows, one per cell of a v1 row.
_SPECS: Final = {
    "sources": ("Auufluubbb", MAX_SOURCE_ROWS),
    "ports": ("bpuuuu?", MAX_PORT_ROWS),
    "destinations": ("Du", MAX_DESTINATION_ROWS),
}


@dataclass(frozen=True, slots=True)
class Columns:
    """A table as columns: `address` 16-byte slots with `length` (4, 8 or 16) per row;
    every other column native int64 (`None` port is -1, booleans 0/1)."""

    n: int
    address: bytes
    length: bytes
    ints: tuple[bytes, ...]

    def int_column(self, i: int) -> np.ndarray:
        return np.frombuffer(self.ints[i], dtype=np.int64)


@dataclass(frozen=True, slots=True)
class SummaryColumns:
    """`head`: the summary with empty sources, ports and destinations; those as columns."""

    head: Summary
    sources: Columns  # ints: packets, bytes, first_us, last_us, ports, destinations,
    #                   ttl, fingerprints, estimated
    ports: Columns  # address unused; ints: proto, port, packets, bytes, backscatter,
    #                 sources, sources_estimated
    destinations: Columns  # ints: packets


def _columns(parsed: tuple[object, ...]) -> Columns:
    n = parsed[0]
    assert isinstance(n, int)
    address, length = b"", b""
    ints: list[bytes] = []
    for col in parsed[1:]:
        if isinstance(col, tuple):
            address, length = col
        else:
            assert isinstance(col, bytes)
            ints.append(col)
    return Columns(n, address, length, tuple(ints))


def _fast(data: bytes, keep: bool = True) -> SummaryColumns | None:
    found = map_spans(data)
    if found is None:
        return None
    view = memoryview(data)
    doc: dict[str, object] = {}
    spans: dict[str, tuple[int, int]] = {}
    try:
        for key, start, end in found:
            if key in _SPECS:
                spans[key] = (start, end)
                doc[key] = []
            else:
                doc[key] = msgpack.unpackb(view[start:end], raw=False, strict_map_key=True,
                                           use_list=True)
        head = decode_document(doc)
    except (SummaryFormatError, ValueError, msgpack.UnpackException, RecursionError):
        return None
    if len(spans) != len(_SPECS):
        return None
    lo_us, hi_us = head.hour_start * 1_000_000, head.hour_end * 1_000_000
    tables: dict[str, Columns] = {}
    for name, (spec, max_rows) in _SPECS.items():
        lo, hi = spans[name]
        parsed = parse_rows(view[lo:hi], spec, max_rows, keep=keep, lo_us=lo_us, hi_us=hi_us)
        if parsed is None:
            return None
        tables[name] = _columns(parsed)
    return SummaryColumns(head, tables["sources"], tables["ports"], tables["destinations"])


def _pack(n: int, rows: list[tuple[int, ...]], width: int) -> tuple[bytes, ...]:
    return tuple(np.array([r[i] for r in rows] if n else [], dtype=np.int64).tobytes()
                 for i in range(width))


def columns_from_summary(s: Summary) -> SummaryColumns:
    """The columns of a decoded summary (the slow path; rows in the order they came)."""
    src = list(s.sources)
    ports = list(s.ports)
    dests = list(s.destinations)
    return SummaryColumns(
        head=replace(s, sources=(), ports=(), destinations=()),
        sources=Columns(
            len(src),
            b"".join(r.address.ljust(16, b"\0") for r in src),
            bytes(len(r.address) for r in src),
            _pack(len(src), [tuple(r[1:]) for r in src], 9),
        ),
        ports=Columns(
            len(ports), b"", b"",
            _pack(len(ports), [(r.proto, -1 if r.port is None else r.port, r.packets, r.bytes,
                                r.backscatter, r.sources, int(r.sources_estimated))
                               for r in ports], 7),
        ),
        destinations=Columns(
            len(dests),
            b"".join(r.address.ljust(16, b"\0") for r in dests),
            bytes(len(r.address) for r in dests),
            _pack(len(dests), [(r.packets,) for r in dests], 1),
        ),
    )


def decode_columns(data: bytes) -> SummaryColumns:
    """Check summary bytes like `decode_summary` and return head + columns.

    Raises `SummaryFormatError` exactly when `decode_summary` does, with its message.
    """
    fast = _fast(data)
    return fast if fast is not None else columns_from_summary(decode_summary(data))


def check_summary(data: bytes) -> Summary:
    """`decode_summary` for a verifier that needs the verdict and the head only: the
    returned summary's sources, ports and destinations are empty."""
    fast = _fast(data, keep=False)
    return fast.head if fast is not None else decode_columns(data).head


__all__ = ["Columns", "SummaryColumns", "check_summary", "columns_from_summary",
           "decode_columns"]

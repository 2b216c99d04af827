"""The summary encoder on the compiled path: `wire.summary.encode_summary`'s bytes, faster.

A msgpack map is its header followed by each key and value, so the document is written
key by key in `wire.summary.summary_fields`'s order, with the seven big tables packed in
C (`sensor.fast._fast.pack_table`).  `encode_interval` goes one step further for a caller
that needs only the bytes: the kernel packs those tables from its own state, with no rows
made in Python.  Tests (tests/unit/test_fast_encode.py, tests/unit/test_fast_pack_interval.py
and the equivalence tests) check that the bytes are the reference's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgpack

from sensor.fast import kernel
from wire.summary import Summary, summary_fields
from wire.summary import encode_summary as encode_summary_reference

_TABLE_KINDS = {"ports": "ports", "icmp_codes": "icmp_codes", "sources": "sources",
                "destinations": "destinations", "tcp_flags": "pairs", "ttl": "pairs",
                "sizes": "pairs"}


def encode_summary(s: Summary) -> bytes:
    """Canonical bytes of `s`: packed in C when the kernel is built, else the reference."""
    packed = encode_summary_fast(s)
    return packed if packed is not None else encode_summary_reference(s)


def _packb(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def encode_summary_fast(s: Summary) -> bytes | None:
    """`wire.summary.encode_summary(s)`, byte for byte, with the big tables packed in C.

    A msgpack map is its header followed by each key and value, so the document is written
    as the reference writes it, key by key, with the sorted tables (ports, sources, ...)
    coming from `sensor.fast._fast.pack_table`.  Returns None when the extension is missing or a
    row is not what the packer expects; the caller then uses the reference encoder.
    """
    fast = kernel._fast  # looked up per call: tests unload it to check the fallback
    if fast is None:
        return None
    tables = {}
    for key, kind in _TABLE_KINDS.items():
        packed = fast.pack_table(kind, getattr(s, key))
        if packed is None:
            return None
        tables[key] = packed
    return _assemble(s, tables)


def encode_interval(
    interval: kernel.FastInterval,
    *,
    sensor_id: str,
    darknet: Iterable[str] = (),
    complete: bool = True,
    health: Mapping[str, Any] | None = None,
) -> bytes:
    """`encode_summary(interval.finish(...))`, byte for byte, without the summary's rows.

    The four big tables are packed by the kernel straight from its own tables
    (`FastInterval.finish_packed`): no Python object per row is made, sorted, packed and
    freed.  For a caller that only writes the bytes (`teiten replay --out`); falls back
    to finish() and encode_summary when the kernel cannot pack them.
    """
    parts = interval.finish_packed(sensor_id=sensor_id, darknet=darknet, complete=complete,
                                   health=health)
    if parts is None:
        return encode_summary(interval.finish(sensor_id=sensor_id, darknet=darknet,
                                              complete=complete, health=health))
    head, tables = parts
    for key in ("tcp_flags", "ttl", "sizes"):  # small: (key, count) pairs
        packed = kernel._fast.pack_table("pairs", getattr(head, key))
        if packed is None:
            return encode_summary(interval.finish(sensor_id=sensor_id, darknet=darknet,
                                                  complete=complete, health=health))
        tables[key] = packed
    return _assemble(head, tables)


def _assemble(s: Summary, tables: Mapping[str, bytes]) -> bytes:
    """The document: `summary_fields(s)`'s keys in order, the big tables given packed."""
    doc = summary_fields(s, tables=False)
    n = len(doc)
    parts = [bytes((0x80 | n,)) if n < 16 else b"\xde" + n.to_bytes(2, "big")]
    for key, value in doc:
        parts.append(_packb(key))
        parts.append(tables[key] if key in tables else _packb(value))
    return b"".join(parts)

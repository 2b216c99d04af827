"""The summary encoder on the compiled path: `wire.summary.encode_summary`'s bytes, faster.

A msgpack map is its header followed by each key and value, so the document is written
key by key in `wire.summary.summary_fields`'s order, with the seven big tables packed in
C (`sensor.fast._fast.pack_table`).  Tests (tests/unit/test_fast_encode.py and the
equivalence tests) check that the bytes are the reference's.
"""

from __future__ import annotations

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
    doc = summary_fields(s, tables=False)
    n = len(doc)
    parts = [bytes((0x80 | n,)) if n < 16 else b"\xde" + n.to_bytes(2, "big")]
    for key, value in doc:
        parts.append(_packb(key))
        parts.append(tables[key] if key in tables else _packb(value))
    return b"".join(parts)

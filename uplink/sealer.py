"""Seal encoded summaries into envelopes and spool them (the I/O edge around envelope.py).

Strategy: the envelope core is pure; this module supplies what it needs from the world (the
next sequence, the wall clock) and hands the bytes to the spool.  The order matters: the
sequence is durable before the envelope that carries it exists, and the envelope is durable
before `seal_and_spool` returns, so a crash anywhere loses at most an unreported envelope and
never reuses a sequence.

Note for the summary builder: evictions and quarantines are reported through
`Spool.take_evictions()`, which must be merged into the health map of the summary *before* it
is encoded; the sealer cannot change a summary after the fact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sensor.spool import Spool, SpoolEntry
from uplink.envelope import seal


class SequenceSource(Protocol):
    def next(self) -> int: ...


def wall_clock_us() -> int:
    """Microseconds since the Unix epoch (UTC)."""
    return time.time_ns() // 1000


def seal_and_spool(
    spool: Spool,
    key: Ed25519PrivateKey,
    sensor_id: str,
    hour_start: int,
    summary_bytes: bytes,
    seq_alloc: SequenceSource,
    clock: Callable[[], int] = wall_clock_us,
) -> SpoolEntry:
    """Seal one encoded summary and spool it durably; returns the spool entry."""
    sequence = seq_alloc.next()
    envelope = seal(
        summary_bytes,
        sensor_id=sensor_id,
        sequence=sequence,
        hour_start=hour_start,
        created_us=clock(),
        key=key,
    )
    return spool.write(envelope, hour_start, sequence)


def spool_summaries(
    spool: Spool,
    key: Ed25519PrivateKey,
    sensor_id: str,
    summaries: Iterable[tuple[int, bytes]],
    seq_alloc: SequenceSource,
    clock: Callable[[], int] = wall_clock_us,
) -> list[SpoolEntry]:
    """Seal and spool `(hour_start, encoded_summary)` pairs in order; returns the entries.

    Raises SpoolFullError / SpoolWriteError (sensor.spool) or SequenceStateError
    (sensor.sequence); entries spooled before the failure stay spooled.
    """
    return [
        seal_and_spool(spool, key, sensor_id, hour_start, data, seq_alloc, clock)
        for hour_start, data in summaries
    ]

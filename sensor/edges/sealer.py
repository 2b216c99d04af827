"""Seal encoded summaries into envelopes and spool them (the I/O edge around envelope.py).

Strategy: the envelope core is pure; this module supplies what it needs from the world (the
next sequence, the wall clock) and hands the bytes to the spool.  The order matters: the
sequence is durable before the envelope that carries it exists, and the envelope is durable
before `seal_and_spool` returns, so a crash anywhere loses at most an unreported envelope and
never reuses a sequence.

Evictions and quarantines reach central through the health map of the next summary: `Sealer`
takes `Spool.take_evictions()` and, when there is something to report, merges it into the
summary's `health` and re-encodes it before sealing (and gives it back to the spool if the
write fails, so the report is not lost).  Callers that use the bare functions must merge it
themselves before encoding.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sensor.edges.keys import KeyFileError, load_private_key
from sensor.edges.sequence import SequenceAllocator, SequenceStateError
from sensor.edges.spool import DEFAULT_SPOOL_BYTES, Spool, SpoolEntry, SpoolError
from sensor.fast.pack import encode_summary
from wire.envelope import seal
from wire.ids import validate_sensor_id
from wire.summary import Summary


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

    Raises SpoolFullError / SpoolWriteError (sensor.edges.spool) or SequenceStateError
    (sensor.edges.sequence); entries spooled before the failure stay spooled.
    """
    return [
        seal_and_spool(spool, key, sensor_id, hour_start, data, seq_alloc, clock)
        for hour_start, data in summaries
    ]


class SealerSetupError(ValueError):
    """The key, spool or sequence state cannot be opened; the message says what to do."""


def has_news(fragment: dict[str, Any]) -> bool:
    return any(fragment.values())


class Sealer:
    """Seal-and-spool sink for one sensor: the key, the spool and the sequence allocator."""

    def __init__(
        self,
        key: Ed25519PrivateKey,
        spool: Spool,
        sensor_id: str,
        seq_alloc: SequenceAllocator,
        clock: Callable[[], int] = wall_clock_us,
    ) -> None:
        self.key = key
        self.spool = spool
        self.sensor_id = validate_sensor_id(sensor_id)
        self.seq_alloc = seq_alloc
        self.clock = clock
        self.sealed = 0

    def seal_and_spool(self, summary: Summary, data: bytes | None = None) -> SpoolEntry:
        """Seal `summary` (encoded as `data` if given) and spool it; returns the entry.

        Spool evictions/quarantines not yet reported are merged into the summary's health
        map first.  Raises SpoolFullError, SpoolWriteError or SequenceStateError.
        """
        if summary.sensor_id != self.sensor_id:
            raise ValueError(
                f"summary is for sensor {summary.sensor_id!r}, this sealer signs for "
                f"{self.sensor_id!r}"
            )
        news = self.spool.take_evictions()
        if has_news(news):
            summary = dataclasses.replace(summary, health={**summary.health, **news})
            data = encode_summary(summary)
        elif data is None:
            data = encode_summary(summary)
        try:
            entry = seal_and_spool(
                self.spool, self.key, self.sensor_id, summary.hour_start, data,
                self.seq_alloc, self.clock,
            )
        except BaseException:
            if has_news(news):
                self.spool.return_evictions(news)
            raise
        self.sealed += 1
        return entry

    def close(self) -> None:
        self.seq_alloc.close()

    def __enter__(self) -> Sealer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_sealer(
    *,
    key_path: str | os.PathLike[str],
    spool_dir: str | os.PathLike[str],
    sensor_id: str,
    state_path: str | os.PathLike[str] | None = None,
    max_bytes: int = DEFAULT_SPOOL_BYTES,
    clock: Callable[[], int] = wall_clock_us,
) -> Sealer:
    """Open key, spool (scanning it) and sequence state; the default state file is
    `SPOOL/../sequence.state`.  Raises SealerSetupError (a ValueError) with what to do."""
    try:
        validate_sensor_id(sensor_id)
        key = load_private_key(key_path)
        spool = Spool(spool_dir, max_bytes)
        state = Path(state_path) if state_path else Path(spool_dir).parent / "sequence.state"
        seq_alloc = SequenceAllocator(state)
    except (KeyFileError, SpoolError, SequenceStateError, ValueError) as exc:
        raise SealerSetupError(str(exc)) from None
    return Sealer(key, spool, sensor_id, seq_alloc, clock)

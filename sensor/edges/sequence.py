"""Envelope sequence numbers that never repeat for a sensor, even after lost state.

Strategy: a sequence is `epoch << 32 | counter` (unsigned 64-bit).
- The counter lives in a small state file and is persisted *ahead of use*: before handing
  out counter c the allocator has durably recorded a limit > c (write temp, fsync, rename,
  fsync directory).  A crash can therefore skip numbers (up to `block - 1`), never repeat
  them, as long as the state file is the one the allocator last wrote.
- The epoch is 32 fresh random bits drawn at *every* process start (and whenever the
  counter would wrap).  It is what protects against a state file that was deleted,
  corrupted, or restored from an old copy: after such a loss the counter may run over values
  it used before, but a repeat needs the new epoch to equal the epoch of that earlier run.
  With k earlier process starts, the chance that one start after a state loss repeats any
  sequence is at most k / 2**32 (10,000 restarts: 2.3e-6); with the state intact it is 0,
  because the counter ranges of different runs are disjoint.

For the central site (docs/wire-format.md): within one epoch the counter rises by exactly 1
per envelope; across restarts it keeps rising (a jump of up to `block` after a crash); a
counter that falls back under a new epoch means the sensor lost or restored its state.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from pathlib import Path
from typing import Final

from sensor.edges.durable import write_durably

STATE_FORMAT: Final = 1
COUNTER_LIMIT: Final = 2**32


class SequenceStateError(Exception):
    """The state file cannot be written or is in use; the message says what to do."""


class SequenceAllocator:
    """Hands out never-repeating envelope sequences; see the module docstring.

    `block` numbers are reserved per fsync of the state file; 1 (the default) keeps the
    counter gap-free across crashes at the cost of one small fsync per envelope, which at
    one summary per hour is nothing.
    """

    def __init__(self, state_path: str | os.PathLike[str], *, block: int = 1) -> None:
        if block < 1:
            raise ValueError("block must be at least 1")
        self.path = Path(state_path)
        self.block = block
        self._lock_fd = self._lock()
        self.state_lost, self._counter = self._load()
        self._limit = self._counter
        self.epoch = secrets.randbits(32)

    def _lock(self) -> int:
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SequenceStateError(f"cannot open {lock_path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SequenceStateError(
                f"{self.path} is in use by another teiten process; stop it first "
                "or give this one its own state file"
            ) from None
        return fd

    def _load(self) -> tuple[bool, int]:
        """(state_lost, counter).  Anything unreadable counts as lost: never fatal."""
        try:
            doc = json.loads(self.path.read_bytes())
            counter = doc["next"]
            if doc["format"] != STATE_FORMAT or type(counter) is not int:
                return True, 0
            if not 0 <= counter < COUNTER_LIMIT:
                return True, 0
            return False, counter
        except (OSError, ValueError, KeyError, TypeError):
            return True, 0

    def _persist(self, limit: int) -> None:
        data = json.dumps({"format": STATE_FORMAT, "next": limit}).encode() + b"\n"
        try:
            write_durably(self.path, data, mode=0o600)
        except OSError as exc:
            raise SequenceStateError(
                f"cannot persist sequence state {self.path}: {exc.strerror}; "
                "free space on that file system or fix its permissions"
            ) from None

    def next(self) -> int:
        """The next sequence; durable before it is returned."""
        if self._counter >= COUNTER_LIMIT:
            # 2**32 envelopes in one state's life: start a new epoch, as after a loss.
            self.epoch = secrets.randbits(32)
            self._counter = self._limit = 0
        if self._counter >= self._limit:
            limit = min(self._counter + self.block, COUNTER_LIMIT)
            self._persist(limit)
            self._limit = limit
        seq = (self.epoch << 32) | self._counter
        self._counter += 1
        return seq

    def close(self) -> None:
        """Give back unused reservations (keeps the counter gap-free) and drop the lock."""
        if self._lock_fd < 0:
            return
        try:
            if self._limit > self._counter:
                self._persist(self._counter)
                self._limit = self._counter
        finally:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> SequenceAllocator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The daemon's clock: wall time, monotonic time, synchronisation and step detection.

Strategy: everything that reads the time takes a `Clock`, so tests can step it.  A step is
what NTP (or an operator's `date -s`) does to a board that booted without a real-time clock:
the wall clock jumps while the monotonic clock does not.  `StepDetector` watches the
difference `wall - monotonic`; when it moves by more than a threshold between two looks,
that is a step, reported with its size and when it was seen.  Packets keep their own
(kernel) timestamps; the daemon only decides, by this clock, when a bucket has ended.

`SystemClock.synchronized()` asks the kernel (adjtimex(2), read-only: modes = 0) whether
its clock is disciplined; no systemd-timedated needed.  `OffsetClock` is the test clock:
real time plus an offset that a test can change (directly, or through a file the daemon
re-reads, so a test can step the clock of a daemon running in another process).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

TIME_ERROR: Final = 5  # adjtimex: clock not synchronised
STA_UNSYNC: Final = 0x0040


class Clock(Protocol):
    def wall_us(self) -> int:
        """Microseconds since the Unix epoch (UTC)."""
        ...

    def monotonic_us(self) -> int: ...

    def synchronized(self) -> bool | None:
        """True if the clock is disciplined (NTP/PTP/GPS), False if not, None if unknown."""
        ...

    def adjust(self, kernel_ts_us: int) -> int:
        """Map a kernel (packet) timestamp onto this clock's time line."""
        ...


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("pad", ctypes.c_long * 20),
    ]


def kernel_sync_state() -> tuple[bool | None, int]:
    """(synchronised?, maxerror in µs) from adjtimex; (None, -1) where it is unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        tx = _Timex()
        state = int(libc.adjtimex(ctypes.byref(tx)))
    except (OSError, AttributeError):
        return None, -1
    if state < 0:
        return None, -1
    return state != TIME_ERROR and not tx.status & STA_UNSYNC, int(tx.maxerror)


class SystemClock:
    """The real clocks."""

    def wall_us(self) -> int:
        return time.time_ns() // 1000

    def monotonic_us(self) -> int:
        return time.monotonic_ns() // 1000

    def synchronized(self) -> bool | None:
        return kernel_sync_state()[0]

    def adjust(self, kernel_ts_us: int) -> int:
        return kernel_ts_us


class OffsetClock(SystemClock):
    """Test clock: real time plus `offset_us`; `step()` changes it, `sync` is settable.

    With `offset_file`, the offset (seconds, a decimal number) is re-read from the file
    whenever its modification time changes, so a test can step a daemon in another process.
    """

    def __init__(self, offset_us: int = 0, *, offset_file: Path | None = None,
                 sync: bool | None = None) -> None:
        self.offset_us = offset_us
        self.offset_file = offset_file
        self.sync = sync
        self._mtime: int | None = None

    def step(self, delta_us: int) -> None:
        self.offset_us += delta_us

    def _refresh(self) -> None:
        if self.offset_file is None:
            return
        try:
            st = os.stat(self.offset_file)
        except OSError:
            return
        if st.st_mtime_ns == self._mtime:
            return
        self._mtime = st.st_mtime_ns
        with contextlib.suppress(OSError, ValueError):
            self.offset_us = int(float(self.offset_file.read_text().strip() or 0) * 1e6)

    def wall_us(self) -> int:
        self._refresh()
        return super().wall_us() + self.offset_us

    def synchronized(self) -> bool | None:
        return self.sync if self.sync is not None else super().synchronized()

    def adjust(self, kernel_ts_us: int) -> int:
        return kernel_ts_us + self.offset_us


@dataclass(frozen=True, slots=True)
class ClockStep:
    seen_us: int  # wall time (after the step) when it was noticed
    delta_us: int  # positive: the clock jumped forward


class StepDetector:
    """Notice wall-clock steps by watching wall minus monotonic."""

    def __init__(self, clock: Clock, threshold_us: int = 2_000_000) -> None:
        self.clock = clock
        self.threshold_us = threshold_us
        self._base: int | None = None

    def check(self) -> ClockStep | None:
        wall = self.clock.wall_us()
        base = wall - self.clock.monotonic_us()
        if self._base is None:
            self._base = base
            return None
        delta = base - self._base
        self._base = base
        if abs(delta) > self.threshold_us:
            return ClockStep(wall, delta)
        return None

"""Test doubles shared by several test files."""

from __future__ import annotations


class ManualClock:
    """A `sensor.edges.clock.Clock` the test moves by hand: wall and monotonic time in µs (set
    `wall` alone to make the wall clock step), a fixed synchronisation state."""

    def __init__(self, wall_us: int, mono_us: int = 1_000_000, *,
                 synchronized: bool | None = False) -> None:
        self.wall = wall_us
        self.mono = mono_us
        self.sync = synchronized

    def wall_us(self) -> int:
        return self.wall

    def monotonic_us(self) -> int:
        return self.mono

    def synchronized(self) -> bool | None:
        return self.sync

    def adjust(self, ts: int) -> int:
        return ts

    def tick(self, us: int) -> None:
        """Both clocks move on by `us`."""
        self.wall += us
        self.mono += us

    def advance(self, seconds: float) -> None:
        self.tick(int(seconds * 1e6))

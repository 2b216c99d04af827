"""Typed stub for sensor.fast._fast, the compiled hot path (C in sensor/fast/src/, kernel.py)."""

from collections.abc import Callable, Sequence
from os import PathLike
from typing import Any, final

TS_MAX_US: int  # sensor.core.decode.TS_MAX_US: later frames are bad_timestamp

class FastError(Exception):
    """A capture file error; `args` is (message, byte offset or -1)."""

@final
class FileReader:
    def __init__(self, path: str | PathLike[str], pipeline: bool | None = None) -> None: ...
    def setfilter(self, expr: str, /) -> None: ...
    def datalink(self) -> int: ...
    def close(self) -> None: ...

@final
class Interval:
    @property
    def hour_start(self) -> int: ...
    @property
    def late(self) -> int: ...
    @property
    def packets(self) -> int: ...
    @property
    def limits(self) -> tuple[int, ...]: ...
    def export(self, tables: bool = True, /) -> dict[str, Any]: ...
    def rows(
        self, port: type, icmp: type, source: type, destination: type,
        estimate: Callable[[bytes], int], /
    ) -> tuple[tuple[Any, ...], tuple[Any, ...], tuple[Any, ...], tuple[Any, ...]]: ...

@final
class Kernel:
    def __init__(
        self,
        linktype: int,
        bucket_seconds: int,
        open_intervals: int,
        limits: tuple[int, ...],
    ) -> None: ...
    @property
    def pending_bad_timestamps(self) -> int: ...
    def set_linktype(self, linktype: int, /) -> None: ...
    def set_limits(self, limits: tuple[int, ...], /) -> None: ...
    def set_horizon(self, ts_us: int, /) -> None: ...
    def take_before(self) -> int: ...
    def feed_file(
        self, reader: FileReader, max_packets: int, /
    ) -> tuple[int, list[tuple[Interval, bool]]]: ...
    def feed_frames(
        self, frames: Sequence[tuple[int, int, bytes]], /
    ) -> list[tuple[Interval, bool]]: ...
    def close_before(self, ts_us: int, /) -> list[tuple[Interval, bool]]: ...
    def flush(self, complete: bool, /) -> list[tuple[Interval, bool]]: ...
    def set_rows(
        self, port_row: type, icmp_row: type, source_row: type, destination_row: type,
        estimate: Any, /,
    ) -> None: ...

def decode(
    linktype: int, frame: bytes, wire_len: int = 0, /
) -> (
    str
    | tuple[
        int, int, int, int, int, int, int, bool, int | None, int | None, int, int,
        int | None, int | None,
    ]
): ...

def _fail_allocations_after(n: int, /) -> None:
    """Tests only: the next `n` allocations of aggregation state succeed, later ones fail
    (every Kernel of the process) until called with -1."""

def pack_table(kind: str, rows: Sequence[tuple[Any, ...]], /) -> bytes | None: ...

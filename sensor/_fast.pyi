"""Typed stub for sensor._fast, the compiled hot path (see sensor/_fast.c, sensor/fastpath.py)."""

from collections.abc import Callable, Sequence
from os import PathLike
from typing import Any, final

class FastError(Exception):
    """A capture file error; `args` is (message, byte offset or -1)."""

@final
class FileReader:
    def __init__(self, path: str | PathLike[str]) -> None: ...
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
    def set_linktype(self, linktype: int, /) -> None: ...
    def feed_file(
        self, reader: FileReader, max_packets: int, /
    ) -> tuple[int, list[tuple[Interval, bool]]]: ...
    def feed_frames(
        self, frames: Sequence[tuple[int, int, bytes]], /
    ) -> list[tuple[Interval, bool]]: ...
    def close_before(self, ts_us: int, /) -> list[tuple[Interval, bool]]: ...
    def flush(self, complete: bool, /) -> list[tuple[Interval, bool]]: ...

def decode(
    linktype: int, frame: bytes, wire_len: int = 0, /
) -> (
    str
    | tuple[
        int, int, int, int, int, int, int, bool, int | None, int | None, int, int,
        int | None, int | None,
    ]
): ...

def pack_table(kind: str, rows: Sequence[tuple[Any, ...]], /) -> bytes | None: ...

"""Typed stub for sensor.edges._pcap, Teiten's own libpcap binding (see sensor/edges/_pcap.c)."""

from os import PathLike
from types import TracebackType
from typing import TypeVar, final, overload

_T = TypeVar("_T", bound=tuple[int, int, bytes])

lib_version: str

class PcapError(Exception):
    """A libpcap error: `message` is libpcap's text, `offset` the file byte offset (-1 if none)."""

    message: str
    offset: int

@final
class Handle:
    @property
    def warning(self) -> str | None: ...
    @property
    def closed(self) -> bool: ...
    @overload
    def next_batch(self, max_packets: int, /) -> list[tuple[int, int, bytes]] | None: ...
    @overload
    def next_batch(self, max_packets: int, tuple_type: type[_T], /) -> list[_T] | None: ...
    def setfilter(self, expr: str, /) -> None: ...
    def datalink(self) -> int: ...
    def snapshot(self) -> int: ...
    def fileno(self) -> int: ...
    def file_offset(self) -> int: ...
    def set_nonblock(self, on: bool, /) -> None: ...
    def stats(self) -> tuple[int, int, int]: ...
    def breakloop(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Handle: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> bool: ...

def open_offline(path: str | PathLike[str], /) -> Handle: ...
def open_live(
    iface: str,
    snaplen: int,
    promisc: bool,
    timeout_ms: int,
    buffer_size: int,
    immediate: bool,
    /,
) -> Handle: ...
def compile_filter(expr: str, linktype: int, snaplen: int, /) -> list[tuple[int, int, int, int]]:
    """Compile `expr` as a capture of `linktype` (DLT_*) and `snaplen` would, opening nothing.

    Returns the optimised program as (code, jt, jf, k) instructions; PcapError if libpcap
    refuses the expression.
    """

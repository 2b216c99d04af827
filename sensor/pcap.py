"""The capture edge: typed wrapper over the project's own libpcap binding (sensor._pcap).

Two sources, one shape: `open_file(path, bpf)` and `open_interface(iface, bpf, ...)` both
give batches of `Frame(ts_us, wire_len, data)`, timestamps in microseconds since the Unix
epoch, `wire_len` the length on the wire (data may be shorter: the snap length).

- A file source yields every packet it could read, then raises `CaptureFileError` naming
  the file and the byte offset where reading stopped if the file is truncated or corrupt.
- A live source returns an empty batch when `timeout_ms` passes with no packet, so the
  caller's clock-driven work (closing an hour) never waits for traffic.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import TracebackType
from typing import NamedTuple, Self

from sensor import _pcap

DEFAULT_BATCH = 4096
DEFAULT_SNAPLEN = 256  # headers only: enough for VLAN + IPv6 + extension headers + TCP options
DEFAULT_TIMEOUT_MS = 250
DEFAULT_BUFFER_SIZE = 8 << 20


class Frame(NamedTuple):
    ts_us: int  # capture time, microseconds since the Unix epoch (UTC)
    wire_len: int  # length on the wire; len(data) may be less (snap length)
    data: bytes


class CaptureStats(NamedTuple):
    received: int  # ps_recv
    dropped: int  # ps_drop: no room in the capture buffer
    if_dropped: int  # ps_ifdrop: dropped by the interface/driver


class CaptureFileError(Exception):
    """A capture file that cannot be (fully) read; says which file, where, and what to do."""

    def __init__(self, path: str, offset: int, detail: str) -> None:
        self.path = path
        self.offset = offset
        self.detail = detail
        where = f" at byte {offset}" if offset >= 0 else ""
        super().__init__(
            f"{path}: cannot read capture{where}: {detail}. Packets before that point were "
            f"delivered; if the file was cut short (disk full, copy interrupted, capture still "
            f"running) re-copy it, or repair it with `pcapfix`/`editcap` and read it again"
        )


class CaptureError(Exception):
    """A live capture that cannot be opened or read; names the interface and what to do."""

    def __init__(self, iface: str, detail: str) -> None:
        self.iface = iface
        self.detail = detail
        super().__init__(f"capture on {iface!r}: {detail}")


class FilterError(ValueError):
    """A BPF expression libpcap rejected."""

    def __init__(self, expr: str, detail: str) -> None:
        self.expr = expr
        self.detail = detail
        super().__init__(f"bad BPF filter {expr!r}: {detail}")


def _setfilter(handle: _pcap.Handle, bpf: str | None) -> None:
    if bpf is None or not bpf.strip():
        return
    try:
        handle.setfilter(bpf)
    except _pcap.PcapError as exc:
        handle.close()
        raise FilterError(bpf, exc.message) from exc


class _HandleSource:
    """What file and live sources share: the handle, its link type, closing."""

    def __init__(self, handle: _pcap.Handle) -> None:
        self._h = handle
        self.linktype = handle.datalink()
        self.snaplen = handle.snapshot()

    def close(self) -> None:
        self._h.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class PcapSource(_HandleSource):
    """Packets from a pcap or pcapng file, in batches."""

    def __init__(self, path: str, handle: _pcap.Handle) -> None:
        super().__init__(handle)
        self.path = path

    def batches(self, n: int = DEFAULT_BATCH) -> Iterator[list[Frame]]:
        """Yield non-empty batches of up to `n` frames until the end of the file.

        Raises CaptureFileError after yielding every packet before a truncation or corruption.
        """
        while True:
            try:
                frames = self._h.next_batch(n, Frame)
            except _pcap.PcapError as exc:
                raise CaptureFileError(self.path, exc.offset, exc.message) from exc
            if frames is None:
                return
            if frames:
                yield frames

    def offset(self) -> int:
        """Byte offset in the file of the next unread record."""
        return self._h.file_offset()



def open_file(path: str | os.PathLike[str], bpf: str | None = None) -> PcapSource:
    """Open a pcap/pcapng file; a missing or non-capture file raises CaptureFileError."""
    name = os.fspath(path)
    if not os.path.exists(name):
        raise CaptureFileError(name, -1, "no such file; check the path")
    if os.path.isdir(name):
        raise CaptureFileError(name, -1, "is a directory, not a capture file")
    try:
        handle = _pcap.open_offline(name)
    except _pcap.PcapError as exc:
        raise CaptureFileError(
            name, -1, f"not a pcap or pcapng capture ({exc.message})"
        ) from exc
    _setfilter(handle, bpf)
    return PcapSource(name, handle)


class LiveSource(_HandleSource):
    """Packets from a network interface; `next_batch` returns [] after `timeout_ms` idle."""

    def __init__(self, iface: str, handle: _pcap.Handle) -> None:
        super().__init__(handle)
        self.iface = iface
        self.warning = handle.warning

    def next_batch(self, n: int = DEFAULT_BATCH) -> list[Frame]:
        """Up to `n` frames; [] on timeout or after `breakloop()`."""
        try:
            frames = self._h.next_batch(n, Frame)
        except _pcap.PcapError as exc:
            raise CaptureError(self.iface, f"read failed: {exc.message}") from exc
        return frames or []

    def batches(self, n: int = DEFAULT_BATCH) -> Iterator[list[Frame]]:
        """Batches forever, including empty ones on timeout (so the caller can check its clock)."""
        while not self._h.closed:
            yield self.next_batch(n)

    def stats(self) -> CaptureStats:
        try:
            return CaptureStats(*self._h.stats())
        except _pcap.PcapError as exc:
            raise CaptureError(self.iface, f"statistics unavailable: {exc.message}") from exc

    def fileno(self) -> int:
        return self._h.fileno()

    def breakloop(self) -> None:
        """Make a `next_batch` running in another thread return [] now (thread-safe)."""
        self._h.breakloop()



def open_interface(
    iface: str,
    bpf: str | None = None,
    *,
    snaplen: int = DEFAULT_SNAPLEN,
    promisc: bool = True,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    immediate: bool = False,
) -> LiveSource:
    """Open a live capture (needs root or CAP_NET_RAW).  `timeout_ms` must be positive."""
    if timeout_ms <= 0:
        raise ValueError("timeout_ms must be > 0 so an idle interface returns control")
    try:
        handle = _pcap.open_live(iface, snaplen, promisc, timeout_ms, buffer_size, immediate)
    except _pcap.PcapError as exc:
        hint = ""
        if "permission" in exc.message.lower() or "not permitted" in exc.message.lower():
            hint = "; run as root or give the sensor CAP_NET_RAW and CAP_NET_ADMIN"
        elif "no such device" in exc.message.lower():
            hint = "; check the interface name in the config (`ip link` lists them)"
        raise CaptureError(iface, f"cannot open: {exc.message}{hint}") from exc
    _setfilter(handle, bpf)
    return LiveSource(iface, handle)

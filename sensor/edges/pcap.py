"""The capture edge: typed wrapper over the project's own libpcap binding (sensor.edges._pcap).

Two sources, one shape: `open_file(path, bpf)` and `open_interface(iface, bpf, ...)` both
give batches of `Frame(ts_us, wire_len, data)`, timestamps in microseconds since the Unix
epoch, `wire_len` the length on the wire (data may be shorter: the snap length).

- A file source yields every packet it could read, then raises `CaptureFileError` naming
  the file and the byte offset where reading stopped if the file is truncated or corrupt.
  A file that cannot be opened (missing, a directory, unreadable, not a capture) raises it
  before any packet, saying which of those it is.
- A filter libpcap cannot apply to a link type the decoder does not know either raises
  `UnsupportedLinkType` (a `FilterError`): the link type is the problem, not the filter.
- A live source returns an empty batch when `timeout_ms` passes with no packet, so the
  caller's clock-driven work (closing an hour) never waits for traffic.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import TracebackType

from sensor.core.linktypes import SUPPORTED_LINKTYPES, SUPPORTED_LINKTYPES_TEXT
from sensor.core.tuples import NamedTuple
from sensor.edges import _pcap

# typing for type checkers only (start-up time: sensor/core/tuples.py says why).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Self

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


_CUT_SHORT_ADVICE = (
    "if the file was cut short (disk full, copy interrupted, capture still running) re-copy "
    "it, or repair it with `pcapfix`/`editcap` and read it again"
)


class CaptureFileError(Exception):
    """A capture file that cannot be (fully) read; says which file, where, and what to do.

    `offset` >= 0: reading stopped there (packets before it were delivered), and the advice
    is about files cut short.  `offset` -1: the file could not be opened; `detail` says why
    and what to do.
    """

    def __init__(self, path: str, offset: int, detail: str) -> None:
        self.path = path
        self.offset = offset
        self.detail = detail
        if offset >= 0:
            text = (f"{path}: cannot read capture at byte {offset}: {detail}. Packets before "
                    f"that point were delivered; {_CUT_SHORT_ADVICE}")
        else:
            text = f"{path}: cannot read capture: {detail}"
        super().__init__(text)


def not_a_capture(path: str, message: str) -> CaptureFileError:
    """The error for a file libpcap cannot open (`message` is libpcap's text)."""
    if "truncated" in message:  # shorter than a file header: an empty or cut-short copy
        advice = _CUT_SHORT_ADVICE
    else:
        advice = ("check that it is a capture file (`capinfos FILE` says what it is); "
                  "convert other formats with `editcap -F pcap FILE OUT.pcap`")
    return CaptureFileError(path, -1, f"not a pcap or pcapng capture ({message}); {advice}")


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


class UnsupportedLinkType(FilterError):
    """A capture of a link type the decoder does not know, on which libpcap cannot apply
    the filter either: the link type is what to report, not the expression."""

    def __init__(self, expr: str, detail: str, linktype: int) -> None:
        super().__init__(expr, detail)
        self.linktype = linktype
        self.args = (
            f"link type {linktype} is not supported: Teiten decodes {SUPPORTED_LINKTYPES_TEXT}, "
            f"and counts frames of any other link type as malformed (link_unsupported); "
            f"libpcap cannot apply the capture filter to it either ({detail})",
        )


def filter_error(handle: _pcap.Handle, bpf: str, detail: str) -> FilterError:
    """The error for `bpf` rejected by libpcap on `handle`'s link type (`detail`)."""
    linktype = handle.datalink()
    if linktype not in SUPPORTED_LINKTYPES:
        return UnsupportedLinkType(bpf, detail, linktype)
    return FilterError(bpf, detail)


def _setfilter(handle: _pcap.Handle, bpf: str | None) -> None:
    if bpf is None or not bpf.strip():
        return
    try:
        handle.setfilter(bpf)
    except _pcap.PcapError as exc:
        error = filter_error(handle, bpf, exc.message)
        handle.close()
        raise error from exc


class _HandleSource:
    """What file and live sources share: the handle, its link type, closing."""

    def __init__(self, handle: _pcap.Handle) -> None:
        self._h = handle
        self.linktype = handle.datalink()
        self.snaplen = handle.snapshot()

    def setfilter(self, bpf: str) -> None:
        """Apply `bpf`; `FilterError` (or `UnsupportedLinkType`) if libpcap rejects it, and
        the source stays open, unfiltered."""
        try:
            self._h.setfilter(bpf)
        except _pcap.PcapError as exc:
            raise filter_error(self._h, bpf, exc.message) from exc

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
        raise CaptureFileError(
            name, -1, "is a directory, not a capture file; give the capture files in it "
            f"(for example {os.path.join(name, '*.pcap')})"
        )
    if os.path.isfile(name):  # a regular file (a pipe, `<(zcat x.pcap.gz)`, is read as it is)
        if os.path.getsize(name) == 0:
            raise CaptureFileError(
                name, -1, "the file is empty (0 bytes), not a capture; if it was copied or "
                "downloaded, do that again"
            )
        try:  # what the system says (permissions, ...) rather than libpcap's reading of it
            with open(name, "rb"):
                pass
        except PermissionError:
            raise CaptureFileError(
                name, -1, "permission denied; run as a user who may read it, or fix its mode"
            ) from None
        except OSError as exc:
            raise CaptureFileError(name, -1, f"cannot open it ({exc.strerror})") from None
    try:
        handle = _pcap.open_offline(name)
    except _pcap.PcapError as exc:
        raise not_a_capture(name, exc.message) from exc
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

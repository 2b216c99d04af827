"""Offline replay: capture files -> decode -> aggregate -> one summary per UTC hour.

This is an edge (it opens files); the work is done by the sans-I/O core.  Files are read
in the order given through the project's libpcap binding with the darknet BPF filter, so a
replay counts exactly what a live sensor with the same filter would have counted.  A
corrupt or truncated file stops the replay with `CaptureFileError` naming the file and the
byte offset, after the summaries of everything read so far have been handed to `emit`.

Two things a capture can hold that no filter or summary hour fits, treated the same way on
the reference and the compiled path:
- a link type the decoder does not know: its frames are counted as malformed
  `link_unsupported` (through the darknet filter when libpcap can apply it to that link
  type, all of them when it cannot), with a warning in `ReplayStats.warnings`;
- a frame timed outside what a summary can hold (`sensor.core.decode.TS_MAX_US`): malformed
  `bad_timestamp`, counted in the oldest open hour; `ReplayStats.uncounted` says how many
  found no hour at all (the capture had no frame with a valid time).
"""

from __future__ import annotations

import _thread
import contextlib
import importlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from sensor.core.bpf import darknet_filter
from sensor.core.limits import HOUR, Limits
from sensor.core.linktypes import LINKTYPE_ETHERNET, SUPPORTED_LINKTYPES, SUPPORTED_LINKTYPES_TEXT
from sensor.core.tuples import NamedTuple
from sensor.edges.pcap import (
    CaptureFileError,
    FilterError,
    UnsupportedLinkType,
    not_a_capture,
    open_file,
)
from sensor.fast.kernel import FastHourlyAggregation, FastInterval, _fast, pack_ahead
from sensor.fast.kernel import available as fast_available

# typing for type checkers only (start-up time: sensor/core/tuples.py says why).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final, Protocol, TextIO

    from wire.summary import Summary

BATCH = 4096


class ReplayStats:
    """What a replay did, filled in as it goes.  (A plain class: a dataclass would import the
    dataclasses module, 8 ms, before `teiten replay` starts counting.)"""

    _FIELDS: Final = ("files", "frames", "summaries", "errors", "warnings", "uncounted")
    __slots__ = _FIELDS

    def __init__(self) -> None:
        self.files = 0
        self.frames = 0
        self.summaries = 0
        self.errors: list[str] = []
        # What the caller should tell the user (a link type the decoder does not know, ...).
        self.warnings: list[str] = []
        # bad_timestamp frames that no summary holds: no frame of the replay had a valid time.
        self.uncounted = 0

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._FIELDS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReplayStats):
            return NotImplemented
        return self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]  # mutable, as a dataclass with eq

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in zip(
            self._FIELDS, self._values(), strict=True))
        return f"ReplayStats({fields})"


class Progress:
    """A one-line progress display on a terminal; silent when stderr is not a TTY."""

    def __init__(self, stream: TextIO | None = None, interval: float = 0.5) -> None:
        # sys.stderr as it is now, not as it was when this module was imported
        self.stream = sys.stderr if stream is None else stream
        self.enabled = self.stream.isatty()
        self.interval = interval
        self._next = 0.0
        self._start = time.monotonic()

    def update(self, label: str, frames: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        rate = frames / max(now - self._start, 1e-9)
        self.stream.write(f"\r{label}: {frames:,} frames ({rate:,.0f}/s)   ")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


class CaptureFilter(NamedTuple):
    linktype: int
    bpf: str  # "" when no filter applies (libpcap cannot filter this link type)
    warning: str | None  # for the user: the link type is not supported


def capture_filter(path: str, darknet: Sequence[str]) -> CaptureFilter:
    """A capture file's link type and the darknet filter for it (`vlan` is Ethernet-only).

    For a link type the decoder does not know, every frame is `link_unsupported`; when
    libpcap cannot compile the filter for it either, the file is read unfiltered (so every
    frame is counted) rather than refused.  Raises CaptureFileError if the file cannot be
    opened, FilterError if the expression is wrong.
    """
    with open_file(path) as probe:
        linktype = probe.linktype
        bpf = darknet_filter(darknet, vlan=linktype == LINKTYPE_ETHERNET)
        if linktype in SUPPORTED_LINKTYPES:
            return CaptureFilter(linktype, bpf, None)
        unsupported = (
            f"{path}: link type {linktype} is not supported (Teiten decodes "
            f"{SUPPORTED_LINKTYPES_TEXT}): its frames are counted as malformed link_unsupported"
        )
        try:
            probe.setfilter(bpf)
        except UnsupportedLinkType:
            return CaptureFilter(linktype, "", unsupported + (
                ", all of them: libpcap cannot apply the darknet filter to this link type"))
    return CaptureFilter(linktype, bpf, unsupported + " (those the darknet filter passes)")


class EncodedSummary(NamedTuple):
    """A finished hour as its canonical bytes (`wire.summary.encode_summary`'s), for
    `replay(..., encoded=True)`."""

    sensor_id: str
    hour_start: int
    data: bytes


if TYPE_CHECKING:  # only annotations name them (typing.Protocol: see the imports)
    class _Finishable(Protocol):
        def finish(
            self, *, sensor_id: str, darknet: Iterable[str], complete: bool,
            health: Mapping[str, Any] | None,
        ) -> Summary: ...

    class _Closed(Protocol):
        @property
        def aggregator(self) -> _Finishable: ...
        @property
        def complete(self) -> bool: ...


class SummarySink:
    """Finishes closed intervals (reference or compiled) into summaries for `emit`: Summary
    objects, or with `encoded` their bytes (EncodedSummary).  An interval of the compiled
    kernel is then encoded straight from its tables (`sensor.fast.encode_interval`: no
    rows made in Python); the reference's through its Summary."""

    def __init__(
        self, emit: Callable[[Any], None], stats: ReplayStats, sensor_id: str,
        darknet: Sequence[str], *, encoded: bool = False,
    ) -> None:
        self.emit = emit
        self.stats = stats
        self.sensor_id = sensor_id
        self.darknet = darknet
        self.encoded = encoded

    def __call__(self, closed: Iterable[_Closed]) -> None:
        # Here, not at the top: the compiled path counts while these load (_replay_compiled).
        from sensor.fast.pack import encode_interval, encode_summary

        closed = list(closed)
        if self.encoded:  # several at once (the hours flush closes): packed side by side
            pack_ahead([c.aggregator for c in closed if isinstance(c.aggregator, FastInterval)])
        for interval in closed:
            agg = interval.aggregator
            if not self.encoded:
                self.emit(agg.finish(sensor_id=self.sensor_id, darknet=self.darknet,
                                     complete=interval.complete, health=REPLAY_HEALTH))
            elif isinstance(agg, FastInterval):
                self.emit(EncodedSummary(self.sensor_id, agg.hour_start, encode_interval(
                    agg, sensor_id=self.sensor_id, darknet=self.darknet,
                    complete=interval.complete, health=REPLAY_HEALTH)))
            else:
                summary = agg.finish(sensor_id=self.sensor_id, darknet=self.darknet,
                                     complete=interval.complete, health=REPLAY_HEALTH)
                self.emit(EncodedSummary(self.sensor_id, summary.hour_start,
                                         encode_summary(summary)))
            self.stats.summaries += 1


REPLAY_HEALTH: Final = {"source": "replay"}


def replay(
    paths: Sequence[str],
    *,
    darknet: Sequence[str],
    sensor_id: str,
    emit: Callable[[Any], None],
    limits: Limits | None = None,
    bucket_seconds: int = HOUR,
    progress: Progress | None = None,
    reference: bool = False,
    stats: ReplayStats | None = None,
    encoded: bool = False,
    emit_imports: Sequence[str] = (),
) -> ReplayStats:
    """Replay `paths` and call `emit` with each finished hourly summary, oldest first.

    Uses the compiled path (sensor.fast) when it is built, unless `reference` asks for
    the pure-Python decode + aggregate below; both give the same summaries, byte for byte.
    With `encoded`, `emit` gets each summary's canonical bytes (EncodedSummary) instead of
    the Summary: for a caller that only writes them, the compiled path then makes no row
    objects at all.  Raises CaptureFileError after emitting everything read before the
    error; `stats`, when given, is filled in as the replay goes (so it holds the warnings
    even then).  `emit_imports` names modules `emit` imports when first called: the compiled
    path loads them while it counts the first hour, with its own (`_load_in_background`).
    """
    if stats is None:
        stats = ReplayStats()
    if not reference and fast_available():
        return _replay_compiled(
            paths, darknet=darknet, sensor_id=sensor_id, emit=emit, limits=limits,
            bucket_seconds=bucket_seconds, progress=progress, stats=stats, encoded=encoded,
            emit_imports=emit_imports,
        )
    # The reference core, imported only when it is used (the compiled path does without it).
    from sensor.core.aggregate import HourlyAggregation
    from sensor.core.decode import decode_frame

    aggregation = HourlyAggregation(bucket_seconds, limits)
    finish = SummarySink(emit, stats, sensor_id, darknet, encoded=encoded)
    try:
        for path in paths:
            linktype, bpf, warning = capture_filter(path, darknet)
            if warning:
                stats.warnings.append(warning)
            stats.files += 1
            with open_file(path, bpf) as source:
                for batch in source.batches(BATCH):
                    for frame in batch:
                        rec = decode_frame(frame.ts_us, linktype, frame.data, frame.wire_len)
                        closed = aggregation.add(rec)
                        if closed:
                            finish(closed)
                    stats.frames += len(batch)
                    if progress is not None:
                        progress.update(path, stats.frames)
    except CaptureFileError:
        finish(aggregation.flush(complete=False))
        stats.uncounted = aggregation.pending_bad_timestamps
        raise
    finally:
        if progress is not None:
            progress.done()
    finish(aggregation.flush(complete=False))
    stats.uncounted = aggregation.pending_bad_timestamps
    return stats


__all__ = ["CaptureFileError", "EncodedSummary", "ReplayStats", "replay"]


# The first hour of a replay has no hour before it to size its tables from: they start
# with room for one entry per KiB of capture (a darknet hour of SYNs holds about one new
# source per 1.4 KiB), at most FIRST_HOUR_ROOM, instead of growing from 16 by rehashing.
FIRST_HOUR_ROOM: Final = 65_536


def first_hour_room(paths: Sequence[str]) -> int:
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):  # reported when the file is opened
            total += os.stat(path).st_size
    return min(total // 1024, FIRST_HOUR_ROOM)


# What the compiled path needs only once an hour closes: the summary format, the reference's
# helpers FastInterval finishes with, and the encoder.
_OUTPUT_MODULES: Final = ("wire.summary", "sensor.core.aggregate", "sensor.fast.pack")


def _load_in_background(modules: Sequence[str]) -> None:
    """Import `modules` on a thread of its own while the caller counts in C.

    Counting a file releases the GIL, so the imports the first closed hour needs (25-30 ms
    of a `teiten replay`) are done meanwhile instead of before the first frame.  The thread
    runs at the lowest priority: on two cores it shares one with the reader thread, which
    the counting waits for.  A module that fails to import is left for the import that
    needs it, which raises the error where it matters.
    """

    def load() -> None:
        if sys.platform == "linux":  # per thread on Linux (elsewhere it would be the process)
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, _thread.get_native_id(), 19)
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:
                return

    if any(name not in sys.modules for name in modules):
        with contextlib.suppress(RuntimeError):  # no thread: imported when needed
            _thread.start_new_thread(load, ())


def _replay_compiled(
    paths: Sequence[str],
    *,
    darknet: Sequence[str],
    sensor_id: str,
    emit: Callable[[Any], None],
    limits: Limits | None = None,
    bucket_seconds: int = HOUR,
    progress: Progress | None = None,
    stats: ReplayStats | None = None,
    encoded: bool = False,
    emit_imports: Sequence[str] = (),
) -> ReplayStats:
    """`replay` on the compiled path: same arguments, summaries and errors."""
    if _fast is None:  # callers check fast.available() first
        raise RuntimeError("sensor.fast._fast is not built")
    if stats is None:
        stats = ReplayStats()
    finish = SummarySink(emit, stats, sensor_id, darknet, encoded=encoded)
    aggregation: FastHourlyAggregation | None = None
    try:
        for path in paths:
            # Same checks, filter decision and warning as the reference path.
            linktype, bpf, warning = capture_filter(path, darknet)
            if warning:
                stats.warnings.append(warning)
            stats.files += 1
            if aggregation is None:
                # What an hour that closes while the file is read needs is made ahead, on
                # the helper thread: its rows for finish(), or its packed tables.
                aggregation = FastHourlyAggregation(linktype, bucket_seconds, limits,
                                                    ahead="pack" if encoded else "rows")
                aggregation.set_size_hint(first_hour_room(paths))
                _load_in_background((*_OUTPUT_MODULES, *emit_imports))
            aggregation.set_linktype(linktype)  # files may differ; hours carry on across them
            try:
                reader = _fast.FileReader(path)
            except _fast.FastError as exc:
                raise not_a_capture(path, str(exc.args[0])) from exc
            try:
                if bpf.strip():
                    try:
                        reader.setfilter(bpf)
                    except _fast.FastError as exc:
                        raise FilterError(bpf, str(exc.args[0])) from exc
                while True:
                    try:
                        n, closed = aggregation.feed_file(reader)
                    except _fast.FastError as exc:
                        message, offset = exc.args
                        raise CaptureFileError(path, int(offset), str(message)) from exc
                    if closed:
                        finish(closed)
                    if n < 0:
                        break
                    stats.frames += n
                    if progress is not None:
                        progress.update(path, stats.frames)
            finally:
                reader.close()
    except CaptureFileError:
        if aggregation is not None:
            finish(aggregation.flush(complete=False))
            stats.uncounted = aggregation.pending_bad_timestamps
        raise
    finally:
        if progress is not None:
            progress.done()
    if aggregation is not None:
        finish(aggregation.flush(complete=False))
        stats.uncounted = aggregation.pending_bad_timestamps
    return stats

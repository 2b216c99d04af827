"""sensor._fast.FileReader reads through its own stdio buffer (open_capture in _fast.c).

The records, their checks and the error texts stay libpcap's: opening a missing, empty,
foreign or truncated file, and reading a file cut inside a record, give the same message
and byte offset as the capture edge's binding (sensor._pcap, pcap_open_offline), and the
same frames before the error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sensor import _pcap, fastpath
from sensor.records import LINKTYPE_ETHERNET

pytestmark = pytest.mark.skipif(not fastpath.available(), reason="sensor._fast is not built")

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample.pcap"


def pcap_side(path: Path) -> tuple[int, str | None, int]:
    """Frames read, then libpcap's error and offset, through sensor._pcap."""
    frames = 0
    try:
        h = _pcap.open_offline(str(path))
    except _pcap.PcapError as exc:
        return 0, exc.message, exc.offset
    try:
        while True:
            batch = h.next_batch(1000, tuple)
            if not batch:
                return frames, None, -1
            frames += len(batch)
    except _pcap.PcapError as exc:
        return frames, exc.message, exc.offset
    finally:
        h.close()


def fast_side(path: Path, pipeline: bool) -> tuple[int, str | None, int]:
    assert fastpath._fast is not None
    fast: Any = fastpath._fast
    try:
        reader = fast.FileReader(str(path), pipeline=pipeline)
    except fast.FastError as exc:
        return 0, exc.args[0], exc.args[1]
    kernel = fastpath.FastHourlyAggregation(LINKTYPE_ETHERNET)
    frames = 0
    try:
        while True:
            n, _ = kernel.feed_file(reader, 777)
            if n < 0:
                return frames, None, -1
            frames += n
    except fast.FastError as exc:
        return frames, exc.args[0], exc.args[1]
    finally:
        reader.close()


def cases(tmp: Path) -> list[Path]:
    data = SAMPLE.read_bytes()
    made = {
        "whole.pcap": data,
        "cut_in_record.pcap": data[: len(data) * 2 // 3 - 7],
        "cut_in_header.pcap": data[:30],
        "short_file_header.pcap": data[:3],
        "empty.pcap": b"",
        "foreign.pcap": b"this is not a capture" * 10,
    }
    for name, content in made.items():
        (tmp / name).write_bytes(content)
    return [tmp / name for name in made] + [tmp / "missing.pcap"]


@pytest.mark.parametrize("pipeline", [False, True], ids=["direct", "pipelined"])
def test_errors_and_frames_are_libpcaps(tmp_path: Path, pipeline: bool) -> None:
    for path in cases(tmp_path):
        expected = pcap_side(path)
        assert fast_side(path, pipeline) == expected, path.name
    assert pcap_side(tmp_path / "whole.pcap")[0] > 1000
    assert pcap_side(tmp_path / "cut_in_record.pcap")[1] is not None

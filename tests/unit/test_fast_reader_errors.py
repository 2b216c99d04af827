"""sensor.fast._fast.FileReader reads through its own stdio buffer (open_capture in _fast.c).

The records, their checks and the error texts stay libpcap's: opening a missing, empty,
foreign or truncated file, and reading a file cut inside a record, give the same message
and byte offset as the capture edge's binding (sensor.edges._pcap, pcap_open_offline), and the
same frames before the error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sensor.core.records import LINKTYPE_ETHERNET
from sensor.edges import _pcap
from sensor.fast import kernel as fastpath

pytestmark = pytest.mark.skipif(not fastpath.available(), reason="sensor.fast._fast is not built")

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample.pcap"


def pcap_side(path: Path) -> tuple[int, str | None, int]:
    """Frames read, then libpcap's error and offset, through sensor.edges._pcap."""
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


def replay_side(path: Path, reference: bool) -> tuple[str | None, int, list[str]]:
    """What `teiten replay` reports for `path`: the error text, its offset, the warnings."""
    from sensor.edges.pcap import CaptureFileError
    from sensor.edges.replay import replay

    try:
        stats = replay([str(path)], darknet=["198.51.100.0/24"], sensor_id="e",
                       emit=lambda s: None, reference=reference)
    except CaptureFileError as exc:
        return str(exc), exc.offset, []
    return None, -1, stats.warnings


def test_replay_errors_are_the_same_on_both_paths_and_point_the_right_way(
    tmp_path: Path, pcap_writer  # type: ignore[no-untyped-def]
) -> None:
    (tmp_path / "a-directory.pcap").mkdir()
    pcap_writer.pcap(tmp_path / "unknown-link.pcap", [(0, 4, b"abcd")], linktype=65535)
    paths = [*cases(tmp_path), tmp_path / "a-directory.pcap", tmp_path / "unknown-link.pcap"]
    seen = {}
    for path in paths:
        seen[path.name] = replay_side(path, reference=True)
        assert replay_side(path, reference=False) == seen[path.name], path.name
    for name in ("missing.pcap", "a-directory.pcap", "foreign.pcap"):
        text, offset, _ = seen[name]
        assert text is not None and offset == -1, name
        assert "pcapfix" not in text and "before that point" not in text, text
    assert "no such file" in str(seen["missing.pcap"][0])
    assert "is a directory" in str(seen["a-directory.pcap"][0])
    cut, offset, _ = seen["cut_in_record.pcap"]
    assert cut is not None and offset > 0 and "pcapfix" in cut  # a cut file: the advice fits
    assert seen["whole.pcap"] == (None, -1, [])
    text, _, warnings = seen["unknown-link.pcap"]
    assert text is None and len(warnings) == 1
    assert "link type 65535" in warnings[0] and "link_unsupported" in warnings[0]

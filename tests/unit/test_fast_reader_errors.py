"""sensor.fast._fast.FileReader reads classic pcap records itself (reader.c, raw_eligible).

The records, their checks and the error texts stay libpcap's: opening a missing, empty,
foreign or truncated file, and reading a file cut inside a record, give the same message
and byte offset as the capture edge's binding (sensor.edges._pcap, pcap_open_offline), and the
same frames before the error.  Records libpcap would check or repair (longer than the
snapshot length, too long for any snapshot, longer than the reader's buffer) are handed to
libpcap where they lie, and the variants libpcap transforms on reading (the other byte
order is read raw; nanosecond stamps, version 2.3, pcapng are libpcap's throughout) give the
same frames and the same summary bytes as the reference path.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from sensor.core.linktypes import LINKTYPE_ETHERNET
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


def records(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(seconds, microseconds, wire length, frame) of each record of a little-endian pcap."""
    out, at = [], 24
    while at < len(data):
        sec, usec, caplen, wire = struct.unpack_from("<IIII", data, at)
        out.append((sec, usec, wire, data[at + 16 : at + 16 + caplen]))
        at += 16 + caplen
    return out


def pcap_bytes(recs: list[tuple[int, int, int, bytes]], order: str = "<", magic: int = 0xA1B2C3D4,
               minor: int = 4, snaplen: int = 262144, linktype: int = LINKTYPE_ETHERNET,
               scale: int = 1) -> bytes:
    out = [struct.pack(order + "IHHiIII", magic, 2, minor, 0, 0, snaplen, linktype)]
    for sec, usec, wire, frame in recs:
        out.append(struct.pack(order + "IIII", sec, usec * scale, len(frame), wire) + frame)
    return b"".join(out)


def variants(tmp: Path) -> dict[str, bool]:
    """Capture files libpcap reads differently; name -> whether FileReader reads it raw."""
    recs = records(SAMPLE.read_bytes())
    mid = len(recs) // 2
    big = (recs[mid][0], recs[mid][1], 200_000, recs[mid][3] + bytes(200_000 - len(recs[mid][3])))
    stamp = [(0x80000000, 5, 60, recs[1][3]), (0xFFFFFFFF, 0xFFFFFFFF, 60, recs[2][3])]
    made: dict[str, tuple[bytes, bool]] = {
        # the other byte order: read raw, each field swapped
        "big_endian.pcap": (pcap_bytes(recs, order=">"), True),
        # every record longer than the snapshot length: libpcap cuts each one to 64 bytes
        "over_snapshot.pcap": (pcap_bytes(recs, snaplen=64), True),
        # one record longer than the reader's buffer, in the middle: libpcap reads it
        "record_over_buffer.pcap": (pcap_bytes([*recs[:mid], big, *recs[mid:]]), True),
        # one record too long for any snapshot: libpcap's error, at its offset
        "bogus_length.pcap": (pcap_bytes(recs[:mid]) + struct.pack("<IIII", 1, 0, 300_000, 300_000)
                              + bytes(1000), True),
        # stamps libpcap reads as signed 32 bits
        "signed_stamps.pcap": (pcap_bytes([*recs[:50], *stamp, *recs[50:100]]), True),
        "nanoseconds.pcap": (pcap_bytes(recs, magic=0xA1B23C4D, scale=1000), False),
        "version_2_3.pcap": (pcap_bytes(recs, minor=3), False),
    }
    for name, (content, _) in made.items():
        (tmp / name).write_bytes(content)
    return {name: raw for name, (_, raw) in made.items()}


@pytest.mark.parametrize("pipeline", [False, True], ids=["direct", "pipelined"])
def test_pcap_variants_read_as_libpcap_reads_them(tmp_path: Path, pipeline: bool) -> None:
    assert fastpath._fast is not None
    for name, raw in variants(tmp_path).items():
        path = tmp_path / name
        reader = fastpath._fast.FileReader(str(path))
        assert reader.raw is raw, name
        reader.close()
        expected = pcap_side(path)
        assert expected[0] > (100 if name == "signed_stamps.pcap" else 1000), name
        assert fast_side(path, pipeline) == expected, name
    assert pcap_side(tmp_path / "bogus_length.pcap")[1] == (
        "invalid packet capture length 300000, bigger than snaplen of 262144")


def summaries(path: Path, reference: bool) -> list[bytes]:
    from sensor.edges.replay import replay
    from sensor.fast.pack import encode_summary
    from wire.summary import encode_summary as encode_reference

    out: list[bytes] = []
    encode = encode_reference if reference else encode_summary
    replay([str(path)], darknet=["198.51.100.0/24", "2001:db8:dead::/48"], sensor_id="v",
           emit=lambda s: out.append(encode(s)), reference=reference)
    return out


def test_pcap_variants_give_the_reference_summaries(tmp_path: Path) -> None:
    names = [n for n in variants(tmp_path) if n != "bogus_length.pcap"]
    for name in names:
        fast = summaries(tmp_path / name, reference=False)
        assert fast and fast == summaries(tmp_path / name, reference=True), name
    assert summaries(tmp_path / "big_endian.pcap", False) == summaries(SAMPLE, False)

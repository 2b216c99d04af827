"""sensor.edges._pcap and its wrapper sensor.edges.pcap on real files read by real libpcap.

Files are written byte by byte by the `pcap_writer` fixture (tests/conftest.py), so every
timestamp, wire length and truncation point is known exactly.  python-libpcap reads the same
files as an independent cross-check.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from sensor.edges import _pcap
from sensor.edges.pcap import CaptureFileError, FilterError, Frame, open_file

T0 = 1_790_000_000_000_000  # an epoch time in microseconds


def eth_ipv4_tcp(dst: str, dport: int, payload: int = 0) -> bytes:
    d = bytes(int(x) for x in dst.split("."))
    tcp = struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 0x50, 0x02, 1024, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + payload, 7, 0, 64, 6, 0,
                     bytes([203, 0, 113, 9]), d)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp + b"\xab" * payload


def packets(n: int, *, snap: int = 64, payload: int = 200) -> list[tuple[int, int, bytes]]:
    out = []
    for i in range(n):
        frame = eth_ipv4_tcp(f"198.51.100.{i % 256}", 23 + i, payload)
        out.append((T0 + i * 1_000_003 + 123_456, len(frame), frame[:snap]))
    return out


@pytest.fixture(params=["pcap", "pcapng"])
def fmt(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def write(pcap_writer, fmt: str, path: Path, pkts, **kw) -> Path:  # type: ignore[no-untyped-def]
    getattr(pcap_writer, fmt)(path, pkts, **kw)
    return path


def drain(h: _pcap.Handle, n: int) -> list[tuple[int, int, bytes]]:
    out: list[tuple[int, int, bytes]] = []
    while (batch := h.next_batch(n)) is not None:
        out += batch
    return out


def test_offline_read_keeps_usec_timestamps_wire_len_and_linktype(
    tmp_path: Path, pcap_writer, fmt: str  # type: ignore[no-untyped-def]
) -> None:
    pkts = packets(50, snap=64)
    path = write(pcap_writer, fmt, tmp_path / f"a.{fmt}", pkts, snaplen=64)
    with _pcap.open_offline(str(path)) as h:
        assert h.datalink() == 1
        assert h.snapshot() == 64
        assert h.fileno() == -1
        got = drain(h, 7)
    assert got == pkts
    assert got[0][0] % 1_000_000 == 123_456  # sub-second part survives
    assert all(wire == 254 and len(data) == 64 for _, wire, data in got)


def test_nanosecond_pcap_is_read_in_microseconds(tmp_path: Path, pcap_writer) -> None:  # type: ignore[no-untyped-def]
    pkts = packets(3)
    pcap_writer.pcap(tmp_path / "ns.pcap", pkts, nanosecond=True)
    with _pcap.open_offline(str(tmp_path / "ns.pcap")) as h:
        assert drain(h, 10) == pkts


def test_batches_respect_max_and_end_with_none(tmp_path: Path, pcap_writer) -> None:  # type: ignore[no-untyped-def]
    pcap_writer.pcap(tmp_path / "b.pcap", packets(10))
    with _pcap.open_offline(str(tmp_path / "b.pcap")) as h:
        sizes = []
        while (b := h.next_batch(3)) is not None:
            sizes.append(len(b))
        assert sizes == [3, 3, 3, 1]
        assert h.next_batch(3) is None  # stays at end
        with pytest.raises(ValueError):
            h.next_batch(0)
        with pytest.raises(_pcap.PcapError):
            h.stats()  # statistics are for live captures only


def test_wrapper_frames_and_linktype(tmp_path: Path, pcap_writer, fmt: str) -> None:  # type: ignore[no-untyped-def]
    pkts = packets(20)
    path = write(pcap_writer, fmt, tmp_path / f"w.{fmt}", pkts)
    with open_file(path) as src:
        assert src.linktype == 1
        batches = list(src.batches(8))
    assert [len(b) for b in batches] == [8, 8, 4]
    frames = [f for b in batches for f in b]
    assert all(isinstance(f, Frame) for f in frames)
    assert frames[5] == Frame(*pkts[5])
    assert frames[5].ts_us == pkts[5][0]


def test_offline_filter(tmp_path: Path, pcap_writer) -> None:  # type: ignore[no-untyped-def]
    pcap_writer.pcap(tmp_path / "f.pcap", packets(30))
    with open_file(tmp_path / "f.pcap", "tcp dst port 30 or tcp dst port 31") as src:
        got = [f for b in src.batches(4) for f in b]
    assert [struct.unpack_from("!H", f.data, 36)[0] for f in got] == [30, 31]


@pytest.mark.parametrize("cut", [10, 100])  # inside packet data; inside a record header
def test_truncated_file_yields_good_packets_then_names_offset(
    tmp_path: Path, pcap_writer, fmt: str, cut: int  # type: ignore[no-untyped-def]
) -> None:
    pkts = packets(10)
    path = write(pcap_writer, fmt, tmp_path / f"t.{fmt}", pkts)
    data = path.read_bytes()
    last = len(data) - (len(pkts[-1][2]) + (16 if fmt == "pcap" else 32))
    cut_at = last + 8 if cut == 100 else len(data) - cut  # header cut / data cut
    path.write_bytes(data[:cut_at])

    h = _pcap.open_offline(str(path))
    got = h.next_batch(100)  # one batch spanning the error: good packets first
    assert got == pkts[:9]
    with pytest.raises(_pcap.PcapError) as info:
        h.next_batch(100)
    assert "truncated" in info.value.message
    assert 0 < info.value.offset <= cut_at
    with pytest.raises(_pcap.PcapError):
        h.next_batch(100)  # sticky
    h.close()

    src = open_file(path)
    seen: list[Frame] = []
    with pytest.raises(CaptureFileError) as err:
        for b in src.batches(4):
            seen += b
    assert [tuple(f) for f in seen] == pkts[:9]
    assert err.value.path == str(path) and err.value.offset == info.value.offset
    msg = str(err.value)
    assert str(path) in msg and f"byte {info.value.offset}" in msg and "re-copy" in msg


def test_garbage_empty_missing_and_directory_give_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "garbage.pcap").write_bytes(b"this is not a capture file at all" * 10)
    (tmp_path / "empty.pcap").write_bytes(b"")
    for name in ("garbage.pcap", "empty.pcap", "missing.pcap", ""):
        path = tmp_path / name
        with pytest.raises(CaptureFileError) as err:
            open_file(path)
        assert str(path) in str(err.value)
        assert err.value.path == str(path)
    with pytest.raises(CaptureFileError, match="not a pcap or pcapng"):
        open_file(tmp_path / "garbage.pcap")
    with pytest.raises(CaptureFileError, match="no such file"):
        open_file(tmp_path / "missing.pcap")
    with pytest.raises(_pcap.PcapError) as raw:
        _pcap.open_offline(str(tmp_path / "garbage.pcap"))
    assert raw.value.offset == -1 and raw.value.message


def test_corrupt_record_length_is_an_error_with_offset(tmp_path: Path, pcap_writer) -> None:  # type: ignore[no-untyped-def]
    pkts = packets(4)
    pcap_writer.pcap(tmp_path / "c.pcap", pkts, snaplen=65535)
    data = bytearray((tmp_path / "c.pcap").read_bytes())
    rec2 = 24 + 2 * (16 + len(pkts[0][2]))
    struct.pack_into("<I", data, rec2 + 8, 0x7FFFFFFF)  # absurd caplen in record 3
    (tmp_path / "c.pcap").write_bytes(bytes(data))
    with pytest.raises(CaptureFileError) as err:
        list(open_file(tmp_path / "c.pcap").batches())
    assert err.value.offset >= rec2


def test_bad_bpf_raises_with_message_and_expression(tmp_path: Path, pcap_writer) -> None:  # type: ignore[no-untyped-def]
    pcap_writer.pcap(tmp_path / "x.pcap", packets(1))
    with _pcap.open_offline(str(tmp_path / "x.pcap")) as h:
        with pytest.raises(_pcap.PcapError) as err:
            h.setfilter("dst net 198.51.100.0/33")
        assert "198.51.100.0/33" in str(err.value)
        assert err.value.message and err.value.message in str(err.value)
        with pytest.raises(_pcap.PcapError):
            h.setfilter("tcp and and")
        h.setfilter("tcp")  # the handle is still usable
        assert len(drain(h, 10)) == 1
    with pytest.raises(FilterError, match="bogus"):
        open_file(tmp_path / "x.pcap", "bogus filter words")


def test_closed_handle_and_file_offset(tmp_path: Path, pcap_writer) -> None:  # type: ignore[no-untyped-def]
    pkts = packets(3)
    pcap_writer.pcap(tmp_path / "o.pcap", pkts)
    h = _pcap.open_offline(str(tmp_path / "o.pcap"))
    assert h.file_offset() == 24
    h.next_batch(1)
    assert h.file_offset() == 24 + 16 + len(pkts[0][2])
    h.close()
    h.close()  # idempotent
    assert h.closed
    with pytest.raises(ValueError, match="closed"):
        h.next_batch(1)
    with pytest.raises(_pcap.PcapError, match=r"(?i)no such device|permission|not permitted"):
        _pcap.open_live("teiten-no-such0", 256, False, 100, 0, False)


def test_cross_check_with_python_libpcap(tmp_path: Path, pcap_writer) -> None:  # type: ignore[no-untyped-def]
    from pylibpcap.pcap import rpcap

    pkts = packets(40, snap=80)
    pcap_writer.pcap(tmp_path / "x.pcap", pkts, snaplen=80)
    theirs = list(rpcap(str(tmp_path / "x.pcap")))
    with _pcap.open_offline(str(tmp_path / "x.pcap")) as h:
        ours = drain(h, 16)
    assert len(theirs) == len(ours) == 40
    for (caplen, sec, data), (ts_us, _wire, our_data) in zip(theirs, ours, strict=True):
        assert data == our_data and caplen == len(our_data)
        assert int(sec) == ts_us // 1_000_000


def test_a_filter_on_an_unsupported_link_type_says_the_link_type_is_the_problem(
    tmp_path: Path, pcap_writer  # type: ignore[no-untyped-def]
) -> None:
    from sensor.edges.pcap import UnsupportedLinkType

    pcap_writer.pcap(tmp_path / "odd.pcap", packets(1), linktype=65535)
    with pytest.raises(UnsupportedLinkType) as err:
        open_file(tmp_path / "odd.pcap", "ip dst net 198.51.100.0/24")
    assert isinstance(err.value, FilterError)  # callers that catch FilterError still do
    assert err.value.linktype == 65535
    text = str(err.value)
    assert "link type 65535" in text and "not supported" in text and "bad BPF" not in text
    assert "link_unsupported" in text
    with open_file(tmp_path / "odd.pcap") as src:  # no filter: readable, frames as they are
        assert src.linktype == 65535 and sum(len(b) for b in src.batches()) == 1

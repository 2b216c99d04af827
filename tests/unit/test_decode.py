"""Decoder: hand-built frames for each layer, and hypothesis over arbitrary bytes."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.core.decode import decode_frame
from sensor.core.linktypes import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)
from sensor.core.records import (
    MALFORMED_REASONS,
    Malformed,
    PacketRecord,
)

SRC = bytes([203, 0, 113, 7])
DST = bytes([198, 51, 100, 9])
LINKTYPES = (0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 9999)


def ipv4(proto: int, payload: bytes, *, ident: int = 1, frag: int = 0, ihl: int = 5,
         total: int | None = None, ttl: int = 64) -> bytes:
    options = bytes((ihl - 5) * 4) if ihl > 5 else b""
    length = total if total is not None else ihl * 4 + len(payload)
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, length, ident, frag, ttl, proto, 0,
                         SRC, DST)
    return header + options + payload


def tcp(dport: int = 23, flags: int = 0x02, seq: int = 0, offset: int = 5) -> bytes:
    return struct.pack("!HHIIBBHHH", 40000, dport, seq, 0, offset << 4, flags, 1024, 0, 0) + bytes(
        max(0, (offset - 5) * 4)
    )


def eth(payload: bytes, ethertype: int = 0x0800, tags: tuple[int, ...] = ()) -> bytes:
    head = bytes(12)
    for tpid in tags:
        head += struct.pack("!HH", tpid, 10)
    return head + struct.pack("!H", ethertype) + payload


def test_ethernet_tcp_syn() -> None:
    rec = decode_frame(5, LINKTYPE_ETHERNET, eth(ipv4(6, tcp(dport=23, seq=77))))
    assert isinstance(rec, PacketRecord)
    assert (rec.version, rec.proto, rec.dport, rec.tcp_flags, rec.tcp_seq) == (4, 6, 23, 2, 77)
    assert rec.dst == int.from_bytes(DST, "big") and rec.ip_len == 40 and rec.ts_us == 5


def test_vlan_and_qinq() -> None:
    for tags in ((0x8100,), (0x88A8, 0x8100), (0x8100, 0x8100)):
        rec = decode_frame(0, LINKTYPE_ETHERNET, eth(ipv4(17, struct.pack("!HHHH", 1, 53, 8, 0)),
                                                     tags=tags))
        assert isinstance(rec, PacketRecord) and rec.dport == 53


def test_cooked_raw_and_loopback() -> None:
    packet = ipv4(6, tcp(dport=80))
    sll = bytes(14) + b"\x08\x00" + packet
    sll2 = b"\x08\x00" + bytes(18) + packet
    frames = {
        LINKTYPE_LINUX_SLL: sll, LINKTYPE_LINUX_SLL2: sll2, LINKTYPE_RAW: packet,
        LINKTYPE_NULL: struct.pack("<I", 2) + packet, LINKTYPE_LOOP: struct.pack("!I", 2) + packet,
    }
    for linktype, frame in frames.items():
        rec = decode_frame(0, linktype, frame)
        assert isinstance(rec, PacketRecord) and rec.dport == 80, linktype


def test_ipv4_options_and_fragments() -> None:
    rec = decode_frame(0, LINKTYPE_RAW, ipv4(6, tcp(dport=22), ihl=7))
    assert isinstance(rec, PacketRecord) and rec.dport == 22
    first = decode_frame(0, LINKTYPE_RAW, ipv4(6, tcp(dport=22), frag=0x2000))
    assert isinstance(first, PacketRecord) and first.dport == 22 and not first.later_fragment
    later = decode_frame(0, LINKTYPE_RAW, ipv4(6, bytes(8), frag=0x0003))
    assert isinstance(later, PacketRecord) and later.later_fragment and later.dport is None


def ipv6(next_header: int, payload: bytes) -> bytes:
    src = bytes.fromhex("20010db8000000000000000000000001")
    dst = bytes.fromhex("20010db8dead00010000000000000002")
    return struct.pack("!IHBB", 0x60000000, len(payload), next_header, 64) + src + dst + payload


def test_ipv6_extension_chain() -> None:
    hop = struct.pack("!BB", 43, 0) + bytes(6)  # hop-by-hop -> routing
    routing = struct.pack("!BB", 60, 0) + bytes(6)  # routing -> destination options
    dest = struct.pack("!BB", 44, 0) + bytes(6)  # destination options -> fragment
    frag = struct.pack("!BBHI", 6, 0, 0x0001, 99)  # fragment (offset 0, M) -> TCP
    rec = decode_frame(0, LINKTYPE_RAW, ipv6(0, hop + routing + dest + frag + tcp(dport=443)))
    assert isinstance(rec, PacketRecord)
    assert (rec.version, rec.proto, rec.dport, rec.ip_id) == (6, 6, 443, 99)
    frag_later = struct.pack("!BBHI", 17, 0, 0x0100, 5) + bytes(8)
    later = decode_frame(0, LINKTYPE_RAW, ipv6(44, frag_later))
    assert isinstance(later, PacketRecord) and later.later_fragment and later.proto == 17


def test_icmp_error_quotes_inner_header() -> None:
    inner = ipv4(6, tcp(dport=8080))
    rec = decode_frame(0, LINKTYPE_RAW, ipv4(1, struct.pack("!BBHI", 3, 1, 0, 0) + inner[:28]))
    assert isinstance(rec, PacketRecord) and rec.icmp_type == 3 and rec.icmp_code == 1
    assert rec.quoted is not None and rec.quoted.proto == 6 and rec.quoted.dport == 8080


def test_malformed_reasons() -> None:
    cases = {
        "link_truncated": (LINKTYPE_ETHERNET, bytes(10)),
        "link_unsupported": (9999, bytes(60)),
        "not_ip": (LINKTYPE_ETHERNET, eth(bytes(40), ethertype=0x0806)),
        "ip_version": (LINKTYPE_ETHERNET, eth(b"\x60" + ipv4(6, tcp())[1:])),
        "ipv4_bad_ihl": (LINKTYPE_RAW, b"\x43" + ipv4(6, tcp())[1:]),
        "ipv4_bad_length": (LINKTYPE_RAW, ipv4(6, tcp(), total=10)),
        "ipv4_truncated": (LINKTYPE_ETHERNET, eth(ipv4(6, b"")[:12])),
        "tcp_truncated": (LINKTYPE_RAW, ipv4(6, tcp()[:10])),
        "tcp_bad_offset": (LINKTYPE_RAW, ipv4(6, tcp(offset=3))),
        "udp_truncated": (LINKTYPE_RAW, ipv4(17, b"\x00\x01")),
        "icmp_truncated": (LINKTYPE_RAW, ipv4(1, b"\x08")),
        "ipv6_truncated": (LINKTYPE_ETHERNET, eth(ipv6(6, b"")[:30], ethertype=0x86DD)),
        "ipv6_ext_truncated": (LINKTYPE_RAW, ipv6(0, b"\x06\x05")),
        "ipv6_ext_chain": (LINKTYPE_RAW, ipv6(60, (struct.pack("!BB", 60, 0) + bytes(6)) * 9)),
    }
    assert set(cases) | {"snaplen_short", "bad_timestamp"} == set(MALFORMED_REASONS)
    for reason, (linktype, frame) in cases.items():
        rec = decode_frame(0, linktype, frame)
        assert isinstance(rec, Malformed) and rec.reason == reason, (reason, rec)


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(LINKTYPES), st.binary(max_size=200))
def test_decode_never_raises(linktype: int, frame: bytes) -> None:
    rec = decode_frame(1, linktype, frame)
    assert isinstance(rec, PacketRecord | Malformed)
    if isinstance(rec, Malformed):
        assert rec.reason in MALFORMED_REASONS


@settings(max_examples=2000, deadline=None)
@given(st.binary(min_size=0, max_size=120), st.sampled_from([0x0800, 0x86DD]))
def test_decode_never_raises_on_ip_shaped_frames(payload: bytes, ethertype: int) -> None:
    first = b"\x45" if ethertype == 0x0800 else b"\x60"
    rec = decode_frame(1, LINKTYPE_ETHERNET, eth(first + payload, ethertype=ethertype))
    assert isinstance(rec, PacketRecord | Malformed)


def test_cut_by_snaplen_is_not_blamed_on_the_sender() -> None:
    frame = ipv4(6, tcp())[:30]
    cut = decode_frame(0, LINKTYPE_RAW, frame, wire_len=60)
    assert isinstance(cut, Malformed) and cut.reason == "snaplen_short"
    whole = decode_frame(0, LINKTYPE_RAW, frame, wire_len=30)
    assert isinstance(whole, Malformed) and whole.reason == "tcp_truncated"


def test_bad_timestamps_are_malformed_at_both_ends_of_the_summary_range() -> None:
    """A frame timed before the epoch (a pcap stamp of 2**31 s or more, read signed by
    libpcap) or after the last hour a summary can hold is `bad_timestamp`, never routed."""
    from sensor.core.decode import TS_MAX_US
    from wire.summary import MAX_HOUR

    frame = eth(ipv4(6, tcp()))
    assert TS_MAX_US == (MAX_HOUR + 1) * 1_000_000 - 1  # 9999-12-30T23:59:59.999999Z
    for ts in (-1, -1_000_000, -(1 << 63), TS_MAX_US + 1, 1 << 63):
        rec = decode_frame(ts, LINKTYPE_ETHERNET, frame)
        assert isinstance(rec, Malformed) and rec.reason == "bad_timestamp", ts
    # Checked before the link layer: a bad time is bad whatever the bytes are.
    assert decode_frame(-1, 9999, b"").reason == "bad_timestamp"  # type: ignore[union-attr]
    for ts in (0, TS_MAX_US):
        assert isinstance(decode_frame(ts, LINKTYPE_ETHERNET, frame), PacketRecord), ts

"""Decode one captured frame into a `PacketRecord` or a `Malformed`.

Strategy: a single pure function, `decode_frame(ts_us, linktype, frame)`, walks the link
layer (Ethernet with 802.1Q/QinQ tags, Linux cooked v1/v2, raw IP, BSD/OpenBSD loopback),
then IPv4 or IPv6 (walking a bounded chain of extension headers), then the transport header
(TCP, UDP, ICMP, ICMPv6; anything else is kept by protocol number).  Every read is checked
against the captured length first, so a truncated or hostile frame yields `Malformed(reason)`
and never an exception.  Only headers are read: the capture is headers-only, and byte counts
come from the IP length fields, not from the captured length.

Rules that shape the counts (see docs/summary-format.md):
- only the first fragment of a fragmented packet carries ports; a later fragment is a
  `PacketRecord` with `later_fragment=True` and no transport fields;
- an ICMP/ICMPv6 error carries a `QuotedHeader` of the packet it quotes, when enough of it
  was captured (a short quote is not malformed: it is simply absent).
"""

from __future__ import annotations

import struct
from typing import Final

from sensor.core.linktypes import (
    DLT_RAW_BSD,
    DLT_RAW_OPENBSD,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)
from sensor.core.records import (
    ICMP_ERROR_TYPES,
    ICMPV6_ERROR_TYPES,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    Malformed,
    PacketRecord,
    QuotedHeader,
)
from wire.summary import MAX_HOUR

ETHERTYPE_IPV4: Final = 0x0800
ETHERTYPE_IPV6: Final = 0x86DD
# 802.1Q, 802.1ad (QinQ service tag) and the pre-standard 0x9100 QinQ tag.
_VLAN_ETHERTYPES: Final = frozenset((0x8100, 0x88A8, 0x9100))
_MAX_VLAN_TAGS: Final = 2  # QinQ; a deeper stack is not something a BPF filter lets through

# IPv6 extension headers walked before the upper layer (RFC 8200 section 4).
_IPV6_HOP_BY_HOP: Final = 0
_IPV6_ROUTING: Final = 43
_IPV6_FRAGMENT: Final = 44
_IPV6_DEST_OPTS: Final = 60
_IPV6_NO_NEXT: Final = 59
_IPV6_EXT_GENERIC: Final = frozenset((_IPV6_HOP_BY_HOP, _IPV6_ROUTING, _IPV6_DEST_OPTS))
_MAX_IPV6_EXT: Final = 8  # bounds the walk; real traffic rarely has more than three

# BSD loopback address-family values for IPv6 on the platforms that write such captures.
_AF_INET: Final = 2
_AF_INET6: Final = frozenset((10, 24, 28, 30))


_U16: Final = struct.Struct("!H")
_IPV4: Final = struct.Struct("!BBHHHBBH4s4s")
_TCP: Final = struct.Struct("!HHIIBBH")


# The times a summary can hold: from the epoch to the end of its last hour, MAX_HOUR
# (9999-12-30T23:59:59.999999Z).  Outside it a frame is `bad_timestamp`: libpcap reads a
# pcap record's seconds as a signed 32-bit number (a stamp of 0xffffffff, or any from
# 2038-01-19 on, comes out before 1970) and a pcapng stamp can be anything up to 2**64
# units.  sensor/fast/src/fast.h (TS_MAX_US) checks the same range.
TS_MAX_US: Final = (MAX_HOUR + 1) * 1_000_000 - 1



_CUT_SHORT: Final = frozenset(
    ("link_truncated", "ipv4_truncated", "ipv6_truncated", "ipv6_ext_truncated",
     "tcp_truncated", "udp_truncated", "icmp_truncated")
)


def decode_frame(
    ts_us: int, linktype: int, frame: bytes, wire_len: int = 0
) -> PacketRecord | Malformed:
    """Decode `frame` captured at `ts_us` (microseconds, UTC) on a link of `linktype`.

    `wire_len` is the frame's length on the wire, when known: a header cut short by the
    snap length (the frame was longer on the wire) is reported as `snaplen_short`, which
    tells an operator to raise the snap length rather than suspect the sender.  A frame
    timed outside what a summary can hold is `bad_timestamp`, whatever its bytes.
    """
    if not 0 <= ts_us <= TS_MAX_US:
        return Malformed(ts_us, "bad_timestamp")
    rec = _decode(ts_us, linktype, frame)
    if type(rec) is Malformed and wire_len > len(frame) and rec.reason in _CUT_SHORT:
        return Malformed(ts_us, "snaplen_short")
    return rec


def _decode(ts_us: int, linktype: int, frame: bytes) -> PacketRecord | Malformed:
    start, ethertype, reason = _link_payload(linktype, frame)
    if start < 0:
        return Malformed(ts_us, reason)
    if ethertype == ETHERTYPE_IPV4:
        return _decode_ipv4(ts_us, frame, start)
    if ethertype == ETHERTYPE_IPV6:
        return _decode_ipv6(ts_us, frame, start)
    if ethertype == 0:  # raw IP: the version nibble decides
        if len(frame) <= start:
            return Malformed(ts_us, "ipv4_truncated")
        version = frame[start] >> 4
        if version == 4:
            return _decode_ipv4(ts_us, frame, start)
        if version == 6:
            return _decode_ipv6(ts_us, frame, start)
        return Malformed(ts_us, "ip_version")
    return Malformed(ts_us, "not_ip")


def _link_payload(linktype: int, frame: bytes) -> tuple[int, int, str]:
    """Return (offset of the network header, ethertype, "") or (-1, 0, reason).

    Ethertype 0 means "raw IP, read the version nibble".
    """
    n = len(frame)
    if linktype == LINKTYPE_ETHERNET:
        if n < 14:
            return -1, 0, "link_truncated"
        ethertype = (frame[12] << 8) | frame[13]
        offset = 14
        tags = 0
        while ethertype in _VLAN_ETHERTYPES:
            if tags == _MAX_VLAN_TAGS:
                return -1, 0, "not_ip"
            if n < offset + 4:
                return -1, 0, "link_truncated"
            ethertype = (frame[offset + 2] << 8) | frame[offset + 3]
            offset += 4
            tags += 1
        return offset, ethertype, ""
    if linktype == LINKTYPE_LINUX_SLL:
        if n < 16:
            return -1, 0, "link_truncated"
        return 16, (frame[14] << 8) | frame[15], ""
    if linktype == LINKTYPE_LINUX_SLL2:
        if n < 20:
            return -1, 0, "link_truncated"
        return 20, (frame[0] << 8) | frame[1], ""
    if linktype in (LINKTYPE_RAW, DLT_RAW_BSD, DLT_RAW_OPENBSD):
        return 0, 0, ""
    if linktype == LINKTYPE_IPV4:
        return 0, ETHERTYPE_IPV4, ""
    if linktype == LINKTYPE_IPV6:
        return 0, ETHERTYPE_IPV6, ""
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if n < 4:
            return -1, 0, "link_truncated"
        family = int.from_bytes(frame[:4], "big" if linktype == LINKTYPE_LOOP else "little")
        if linktype == LINKTYPE_NULL and family > 0xFFFF:
            # Written on a big-endian host: the family sits in the high-order bytes.
            family = int.from_bytes(frame[:4], "big")
        if family == _AF_INET:
            return 4, ETHERTYPE_IPV4, ""
        if family in _AF_INET6:
            return 4, ETHERTYPE_IPV6, ""
        return -1, 0, "not_ip"
    return -1, 0, "link_unsupported"


def _decode_ipv4(ts_us: int, frame: bytes, off: int) -> PacketRecord | Malformed:
    if len(frame) < off + 20:
        return Malformed(ts_us, "ipv4_truncated")
    vihl, _tos, total_len, ip_id, frag, ttl, proto, _csum, src_b, dst_b = _IPV4.unpack_from(
        frame, off
    )
    if vihl >> 4 != 4:
        return Malformed(ts_us, "ip_version")
    ihl = (vihl & 0x0F) * 4
    if ihl < 20:
        return Malformed(ts_us, "ipv4_bad_ihl")
    if total_len < ihl:
        return Malformed(ts_us, "ipv4_bad_length")
    if len(frame) < off + ihl:
        return Malformed(ts_us, "ipv4_truncated")
    src = int.from_bytes(src_b, "big")
    dst = int.from_bytes(dst_b, "big")
    if frag & 0x1FFF:  # fragment offset > 0: no transport header in this fragment
        return PacketRecord(
            ts_us, 4, src, dst, proto, ttl, total_len, ip_id, later_fragment=True
        )
    # Transport bytes are bounded by both the capture and the IP total length.
    end = min(len(frame), off + total_len)
    return _decode_transport(
        ts_us, frame, off + ihl, end, 4, src, dst, proto, ttl, total_len, ip_id
    )


def _decode_ipv6(ts_us: int, frame: bytes, off: int) -> PacketRecord | Malformed:
    n = len(frame)
    if n < off + 40:
        return Malformed(ts_us, "ipv6_truncated")
    if frame[off] >> 4 != 6:
        return Malformed(ts_us, "ip_version")
    payload_len = (frame[off + 4] << 8) | frame[off + 5]
    next_header = frame[off + 6]
    hop_limit = frame[off + 7]
    src = int.from_bytes(frame[off + 8 : off + 24], "big")
    dst = int.from_bytes(frame[off + 24 : off + 40], "big")
    ip_len = payload_len + 40
    end = min(n, off + ip_len)
    pos = off + 40
    frag_id = 0
    for _ in range(_MAX_IPV6_EXT):
        if next_header in _IPV6_EXT_GENERIC:
            if end < pos + 2:
                return Malformed(ts_us, "ipv6_ext_truncated")
            ext_len = (frame[pos + 1] + 1) * 8
            if end < pos + ext_len:
                return Malformed(ts_us, "ipv6_ext_truncated")
            next_header = frame[pos]
            pos += ext_len
        elif next_header == _IPV6_FRAGMENT:
            if end < pos + 8:
                return Malformed(ts_us, "ipv6_ext_truncated")
            frag_field = (frame[pos + 2] << 8) | frame[pos + 3]
            frag_id = int.from_bytes(frame[pos + 4 : pos + 8], "big")
            next_header = frame[pos]
            pos += 8
            if frag_field >> 3:  # offset > 0: a later fragment
                return PacketRecord(
                    ts_us, 6, src, dst, next_header, hop_limit, ip_len, frag_id,
                    later_fragment=True,
                )
        else:
            break
    else:
        return Malformed(ts_us, "ipv6_ext_chain")
    return _decode_transport(
        ts_us, frame, pos, end, 6, src, dst, next_header, hop_limit, ip_len, frag_id
    )


def _decode_transport(
    ts_us: int,
    frame: bytes,
    pos: int,
    end: int,
    version: int,
    src: int,
    dst: int,
    proto: int,
    ttl: int,
    ip_len: int,
    ip_id: int,
) -> PacketRecord | Malformed:
    avail = end - pos
    if proto == PROTO_TCP:
        if avail < 20:
            return Malformed(ts_us, "tcp_truncated")
        sport, dport, seq, ack, data_off, flags, window = _TCP.unpack_from(frame, pos)
        hdr_len = (data_off >> 4) * 4
        if hdr_len < 20:
            return Malformed(ts_us, "tcp_bad_offset")
        return PacketRecord(
            ts_us, version, src, dst, proto, ttl, ip_len, ip_id,
            sport=sport, dport=dport, tcp_flags=flags, tcp_seq=seq, tcp_ack=ack,
            tcp_window=window, tcp_options_len=hdr_len - 20,
        )
    if proto == PROTO_UDP:
        if avail < 8:
            return Malformed(ts_us, "udp_truncated")
        sport = (frame[pos] << 8) | frame[pos + 1]
        dport = (frame[pos + 2] << 8) | frame[pos + 3]
        return PacketRecord(
            ts_us, version, src, dst, proto, ttl, ip_len, ip_id, sport=sport, dport=dport
        )
    if proto in (PROTO_ICMP, PROTO_ICMPV6):
        if avail < 4:
            return Malformed(ts_us, "icmp_truncated")
        icmp_type = frame[pos]
        icmp_code = frame[pos + 1]
        quoted = None
        if proto == PROTO_ICMP and icmp_type in ICMP_ERROR_TYPES:
            quoted = _quoted_ipv4(frame, pos + 8, end)
        elif proto == PROTO_ICMPV6 and icmp_type in ICMPV6_ERROR_TYPES:
            quoted = _quoted_ipv6(frame, pos + 8, end)
        return PacketRecord(
            ts_us, version, src, dst, proto, ttl, ip_len, ip_id,
            icmp_type=icmp_type, icmp_code=icmp_code, quoted=quoted,
        )
    return PacketRecord(ts_us, version, src, dst, proto, ttl, ip_len, ip_id)


def _quoted_ports(frame: bytes, pos: int, end: int, proto: int) -> tuple[int | None, int | None]:
    if proto in (PROTO_TCP, PROTO_UDP) and end >= pos + 4:
        return (frame[pos] << 8) | frame[pos + 1], (frame[pos + 2] << 8) | frame[pos + 3]
    return None, None


def _quoted_ipv4(frame: bytes, pos: int, end: int) -> QuotedHeader | None:
    if end < pos + 20 or frame[pos] >> 4 != 4:
        return None
    ihl = (frame[pos] & 0x0F) * 4
    if ihl < 20:
        return None
    proto = frame[pos + 9]
    src = int.from_bytes(frame[pos + 12 : pos + 16], "big")
    dst = int.from_bytes(frame[pos + 16 : pos + 20], "big")
    frag = ((frame[pos + 6] << 8) | frame[pos + 7]) & 0x1FFF
    sport, dport = (None, None) if frag else _quoted_ports(frame, pos + ihl, end, proto)
    return QuotedHeader(4, proto, src, dst, sport, dport)


def _quoted_ipv6(frame: bytes, pos: int, end: int) -> QuotedHeader | None:
    if end < pos + 40 or frame[pos] >> 4 != 6:
        return None
    proto = frame[pos + 6]
    src = int.from_bytes(frame[pos + 8 : pos + 24], "big")
    dst = int.from_bytes(frame[pos + 24 : pos + 40], "big")
    # The quote is usually cut short; ports only when no extension header is in the way.
    sport, dport = _quoted_ports(frame, pos + 40, end, proto)
    return QuotedHeader(6, proto, src, dst, sport, dport)

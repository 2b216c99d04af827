"""Records that flow through the sans-I/O core.

Strategy: decode turns one captured frame into exactly one of two frozen, slotted
records: a `PacketRecord` for an IP packet it understood, or a `Malformed` naming
why it could not.  Nothing here raises on bad input and nothing does I/O; the
aggregator consumes these records, the capture edge produces their inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# IP protocol numbers the core names; anything else is kept by number.
PROTO_ICMP: Final = 1
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
PROTO_ICMPV6: Final = 58

# ICMP types whose body quotes the offending packet (RFC 792, RFC 4443), and echo replies:
# decode parses the quote of an error, classify counts both as backscatter.
ICMP_ERROR_TYPES: Final = frozenset((3, 4, 5, 11, 12))
ICMPV6_ERROR_TYPES: Final = frozenset((1, 2, 3, 4))
ICMP_ECHO_REPLY: Final = 0
ICMPV6_ECHO_REPLY: Final = 129

# TCP flag bits (RFC 9293 plus ECE/CWR from RFC 3168).
TCP_FIN: Final = 0x01
TCP_SYN: Final = 0x02
TCP_RST: Final = 0x04
TCP_PSH: Final = 0x08
TCP_ACK: Final = 0x10
TCP_URG: Final = 0x20
TCP_ECE: Final = 0x40
TCP_CWR: Final = 0x80


@dataclass(frozen=True, slots=True)
class QuotedHeader:
    """The invoking packet quoted inside an ICMP/ICMPv6 error message."""

    version: int
    proto: int
    src: int
    dst: int
    sport: int | None  # None when the quote is too short or not TCP/UDP
    dport: int | None


@dataclass(frozen=True, slots=True)
class PacketRecord:
    """One IP packet sent to the block, as decoded from its headers.

    Addresses are integers (IPv4 32-bit, IPv6 128-bit) with `version` telling which.
    `ip_len` is the IP length (IPv4 total length; IPv6 payload length + 40), so byte
    counts never depend on the link layer or the snap length.
    """

    ts_us: int  # capture time, microseconds since the Unix epoch (UTC)
    version: int  # 4 or 6
    src: int
    dst: int
    proto: int  # IP protocol number of the upper layer (after IPv6 extension headers)
    ttl: int  # IPv4 TTL or IPv6 hop limit
    ip_len: int
    ip_id: int  # IPv4 identification; IPv6: fragment identification or 0
    # True for a non-first fragment: no transport header, counted as a fragment.
    later_fragment: bool = False
    sport: int | None = None
    dport: int | None = None
    tcp_flags: int = 0
    tcp_seq: int = 0
    tcp_ack: int = 0
    tcp_window: int = 0
    tcp_options_len: int = 0
    icmp_type: int | None = None
    icmp_code: int | None = None
    quoted: QuotedHeader | None = None


@dataclass(frozen=True, slots=True)
class Malformed:
    """A frame the decoder could not turn into a packet; `reason` is a stable key."""

    ts_us: int
    reason: str


# Stable malformed-reason keys (they appear in summaries; add, never rename).
MALFORMED_REASONS: Final = (
    "link_truncated",  # shorter than its link-layer header (incl. VLAN tags)
    "link_unsupported",  # link type the decoder does not know
    "not_ip",  # link layer carries something other than IPv4/IPv6
    "ip_version",  # version nibble disagrees with the link layer's type
    "ipv4_truncated",  # fewer than 20 bytes, or fewer than IHL*4
    "ipv4_bad_ihl",  # IHL < 5
    "ipv4_bad_length",  # total length smaller than the header
    "ipv6_truncated",  # fewer than 40 bytes
    "ipv6_ext_truncated",  # an extension header runs past the captured bytes
    "ipv6_ext_chain",  # too many extension headers (bounded walk)
    "tcp_truncated",  # fewer than 20 bytes of TCP header captured
    "tcp_bad_offset",  # data offset < 5
    "udp_truncated",  # fewer than 8 bytes of UDP header captured
    "icmp_truncated",  # fewer than 4 bytes of ICMP header captured
    "snaplen_short",  # a header ran past the snap length (longer on the wire): raise snaplen
    "bad_timestamp",  # timed before 1970 or after the last hour a summary holds (decode.py)
)

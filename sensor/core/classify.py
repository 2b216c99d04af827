"""Scanner fingerprints and backscatter: pure rules over one `PacketRecord`.

Strategy: each rule is a few integer comparisons on decoded header fields, so it can run
per packet on the board.  The rules and their sources are in docs/classification.md; the
names returned here are stable keys that appear in summaries.

- Mirai: TCP SYN (no ACK) whose sequence number equals the destination IPv4 address
  (Mirai's scanner sets `tcph->seq = iph->daddr`).
- ZMap: IPv4 identification 54321 (ZMap's probe modules set a fixed IP ID of 54321).
- Masscan: TCP SYN (no ACK) whose IPv4 identification equals
  (destination address XOR destination port XOR sequence number) & 0xFFFF.
- Backscatter: replies to spoofed traffic (a DoS victim answering forged sources that
  happen to lie in the dark block): TCP SYN-ACK, TCP RST, ICMP errors, echo replies.
"""

from __future__ import annotations

from typing import Final

from sensor.core.records import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    TCP_ACK,
    TCP_RST,
    TCP_SYN,
    PacketRecord,
)

FP_MIRAI: Final = 0x01
FP_ZMAP: Final = 0x02
FP_MASSCAN: Final = 0x04
FINGERPRINT_NAMES: Final = ((FP_MIRAI, "mirai"), (FP_ZMAP, "zmap"), (FP_MASSCAN, "masscan"))

ZMAP_IP_ID: Final = 54321

# Backscatter kinds (stable summary keys); 0 means "not backscatter".
BS_NONE: Final = 0
BS_TCP_SYNACK: Final = 1
BS_TCP_RST: Final = 2
BS_ICMP_ERROR: Final = 3
BS_ICMP_ECHO_REPLY: Final = 4
BACKSCATTER_NAMES: Final = ("", "tcp_synack", "tcp_rst", "icmp_error", "icmp_echo_reply")

_ICMP_ERRORS: Final = frozenset((3, 4, 5, 11, 12))
_ICMPV6_ERRORS: Final = frozenset((1, 2, 3, 4))
_ICMP_ECHO_REPLY: Final = 0
_ICMPV6_ECHO_REPLY: Final = 129


def fingerprint_bits(rec: PacketRecord) -> int:
    """Bit set of scanner fingerprints (FP_*) this packet matches; several may match."""
    if rec.version != 4 or rec.later_fragment:
        return 0
    bits = FP_ZMAP if rec.ip_id == ZMAP_IP_ID else 0
    if rec.proto == PROTO_TCP and rec.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN:
        seq = rec.tcp_seq
        if seq == rec.dst:
            bits |= FP_MIRAI
        if rec.ip_id == (rec.dst ^ (rec.dport or 0) ^ seq) & 0xFFFF:
            bits |= FP_MASSCAN
    return bits


def fingerprint_names(bits: int) -> list[str]:
    """The stable names of the fingerprints set in `bits`, in a fixed order."""
    return [name for bit, name in FINGERPRINT_NAMES if bits & bit]


def backscatter_kind(rec: PacketRecord) -> int:
    """Which kind of backscatter (BS_*) this packet is, or BS_NONE."""
    if rec.later_fragment:
        return BS_NONE
    proto = rec.proto
    if proto == PROTO_TCP:
        flags = rec.tcp_flags
        if flags & TCP_RST:
            return BS_TCP_RST
        if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK:
            return BS_TCP_SYNACK
        return BS_NONE
    if proto == PROTO_ICMP:
        if rec.icmp_type in _ICMP_ERRORS:
            return BS_ICMP_ERROR
        if rec.icmp_type == _ICMP_ECHO_REPLY:
            return BS_ICMP_ECHO_REPLY
        return BS_NONE
    if proto == PROTO_ICMPV6:
        if rec.icmp_type in _ICMPV6_ERRORS:
            return BS_ICMP_ERROR
        if rec.icmp_type == _ICMPV6_ECHO_REPLY:
            return BS_ICMP_ECHO_REPLY
    return BS_NONE

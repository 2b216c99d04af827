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
    ICMP_ECHO_REPLY,
    ICMP_ERROR_TYPES,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ERROR_TYPES,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    TCP_ACK,
    TCP_RST,
    TCP_SYN,
    PacketRecord,
)
from wire.summary import BACKSCATTER_KINDS, FINGERPRINT_BITS

FP_MIRAI: Final = FINGERPRINT_BITS["mirai"]
FP_ZMAP: Final = FINGERPRINT_BITS["zmap"]
FP_MASSCAN: Final = FINGERPRINT_BITS["masscan"]
FINGERPRINT_NAMES: Final = tuple((bit, name) for name, bit in FINGERPRINT_BITS.items())

ZMAP_IP_ID: Final = 54321

# Backscatter kinds: index i is the summary key BACKSCATTER_NAMES[i]; 0 means "not
# backscatter".  The names are the format's (wire.summary.BACKSCATTER_KINDS).
BACKSCATTER_NAMES: Final = ("", *BACKSCATTER_KINDS)
BS_NONE: Final = 0
BS_TCP_SYNACK: Final = BACKSCATTER_NAMES.index("tcp_synack")
BS_TCP_RST: Final = BACKSCATTER_NAMES.index("tcp_rst")
BS_ICMP_ERROR: Final = BACKSCATTER_NAMES.index("icmp_error")
BSICMP_ECHO_REPLY: Final = BACKSCATTER_NAMES.index("icmp_echo_reply")


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
        if rec.icmp_type in ICMP_ERROR_TYPES:
            return BS_ICMP_ERROR
        if rec.icmp_type == ICMP_ECHO_REPLY:
            return BSICMP_ECHO_REPLY
        return BS_NONE
    if proto == PROTO_ICMPV6:
        if rec.icmp_type in ICMPV6_ERROR_TYPES:
            return BS_ICMP_ERROR
        if rec.icmp_type == ICMPV6_ECHO_REPLY:
            return BSICMP_ECHO_REPLY
    return BS_NONE

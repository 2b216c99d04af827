"""Synthetic darknet capture generator with exact ground truth.

Builds every frame from the protocol specifications with `struct` (RFC 791/793/768/792,
RFC 8200/4443, IEEE 802.1Q/802.1ad, the libpcap link-layer headers) and writes classic
pcap (microsecond) or pcapng.  It deliberately imports nothing from `sensor/` or `uplink/`:
the truth must come from what was *encoded*, never from a decoder that could share a
misreading.  The truth semantics are documented in `docs/synth.md`.

    python -m bench.synth --out cap.pcap --truth cap.truth.json --packets 20000 --hours 3
"""

from __future__ import annotations

import argparse
import bisect
import ipaddress
import json
import struct
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from random import Random
from typing import Any, BinaryIO

Packet = tuple[int, bytes, int]  # (timestamp in µs since the epoch, captured bytes, wire length)

LINKTYPES: dict[str, int] = {"null": 0, "ethernet": 1, "raw": 101, "sll": 113, "sll2": 276}
MALFORMED_REASONS: tuple[str, ...] = (
    "ip_version",
    "ipv4_bad_ihl",
    "ipv4_bad_length",
    "ipv6_ext_truncated",
    "tcp_truncated",
    "tcp_bad_offset",
    "udp_truncated",
    "icmp_truncated",
)
SIZE_BUCKETS: tuple[int, ...] = (0, 40, 60, 80, 128, 256, 512, 1024, 1500)
FINGERPRINTS: tuple[str, ...] = ("mirai", "zmap", "masscan")
BACKSCATTER: tuple[str, ...] = ("tcp_synack", "tcp_rst", "icmp_error", "icmp_echo_reply")
DEFAULT_START = "2026-11-02T00:00:00+00:00"

ETH_IPV4, ETH_IPV6, ETH_ARP, ETH_LLDP = 0x0800, 0x86DD, 0x0806, 0x88CC
TPID_8021Q, TPID_8021AD = 0x8100, 0x88A8
SENSOR_MAC = bytes.fromhex("b827eb0a0b0c")  # the board's NIC
ROUTER_MAC = bytes.fromhex("0019e8123456")  # the upstream router that delivers the block
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
HBH, ROUTING, FRAGMENT, DSTOPTS = 0, 43, 44, 60
PROTO_NAMES: dict[int, str] = {TCP: "tcp", UDP: "udp", ICMP: "icmp", ICMPV6: "icmpv6"}
SYN, RST, ACK = 0x02, 0x04, 0x10
ICMP4_ERRORS = frozenset((3, 4, 5, 11, 12))
ICMP6_ERRORS = frozenset((1, 2, 3, 4))

_LITTLE = sys.byteorder == "little"
_HOUR_US = 3_600_000_000


# --------------------------------------------------------------------------- checksums


def checksum(data: bytes) -> int:
    """Internet checksum (RFC 1071) of `data`, as the integer to pack with ``"!H"``."""
    if len(data) & 1:
        data += b"\x00"
    s = sum(memoryview(data).cast("H"))  # native-order words: the sum is byte-order agnostic
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    s = ~s & 0xFFFF
    if _LITTLE:
        s = ((s & 0xFF) << 8) | (s >> 8)
    return s


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as SCTP uses it (RFC 9260 appendix A)."""
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


# --------------------------------------------------------------------------- header builders


def ipv4(
    src: bytes,
    dst: bytes,
    proto: int,
    payload: bytes,
    *,
    ttl: int,
    ident: int,
    frag: int = 0,
    options: bytes = b"",
    tos: int = 0,
    total_length: int | None = None,
    ver_ihl: int | None = None,
) -> bytes:
    """An IPv4 packet (RFC 791) with a correct header checksum.

    `frag` is the 16-bit flags/fragment-offset field (DF 0x4000, MF 0x2000, offset in 8-byte
    units); `total_length` and `ver_ihl` override the computed fields (malformed frames).
    """
    if len(options) % 4:
        options += b"\x00" * (4 - len(options) % 4)
    ihl = 5 + len(options) // 4
    vi = 0x40 | ihl if ver_ihl is None else ver_ihl
    tl = 4 * ihl + len(payload) if total_length is None else total_length
    hdr = struct.pack("!BBHHHBBH4s4s", vi, tos, tl, ident, frag, ttl, proto, 0, src, dst)
    hdr += options
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + payload


def ipv6(
    src: bytes,
    dst: bytes,
    nh: int,
    payload: bytes,
    *,
    hlim: int,
    tclass: int = 0,
    flow: int = 0,
    plen: int | None = None,
    version: int = 6,
) -> bytes:
    """An IPv6 packet (RFC 8200); `payload` includes any extension headers."""
    first = (version << 28) | (tclass << 20) | flow
    pl = len(payload) if plen is None else plen
    return struct.pack("!IHBB16s16s", first, pl, nh, hlim, src, dst) + payload


def pseudo4(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    return src + dst + struct.pack("!BBH", 0, proto, length)


def pseudo6(src: bytes, dst: bytes, nh: int, length: int) -> bytes:
    return src + dst + struct.pack("!I3xB", length, nh)


def tcp(
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    options: bytes = b"",
    payload: bytes = b"",
    *,
    pseudo: bytes | None = None,
    doff: int | None = None,
) -> bytes:
    """A TCP segment (RFC 9293); checksummed when the pseudo-header prefix is given."""
    if len(options) % 4:
        options += b"\x00" * (4 - len(options) % 4)
    off = 5 + len(options) // 4 if doff is None else doff
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, off << 4, flags, window, 0, 0)
    seg += options + payload
    if pseudo is None:
        return seg
    ck = checksum(pseudo + seg)
    return seg[:16] + struct.pack("!H", ck) + seg[18:]


def udp(sport: int, dport: int, payload: bytes, *, pseudo: bytes | None = None) -> bytes:
    """A UDP datagram (RFC 768); checksummed when the pseudo-header prefix is given."""
    dg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if pseudo is None:
        return dg
    ck = checksum(pseudo + dg) or 0xFFFF
    return dg[:6] + struct.pack("!H", ck) + dg[8:]


def icmp(itype: int, code: int, rest: bytes, data: bytes, *, pseudo: bytes = b"") -> bytes:
    """An ICMP (RFC 792) or, with an IPv6 pseudo-header, ICMPv6 (RFC 4443) message."""
    msg = struct.pack("!BBH", itype, code, 0) + rest + data
    ck = checksum(pseudo + msg)
    return msg[:2] + struct.pack("!H", ck) + msg[4:]


def _pad_options(n: int) -> bytes:
    """IPv6 option padding (Pad1 / PadN) of exactly `n` bytes."""
    if n == 0:
        return b""
    if n == 1:
        return b"\x00"
    return bytes((1, n - 2)) + b"\x00" * (n - 2)


def ext_options(nh: int, units: int, router_alert: bool = False) -> bytes:
    """A Hop-by-Hop or Destination Options header of `units` x 8 bytes (RFC 8200 4.3/4.6)."""
    body = b"\x05\x02\x00\x00" if router_alert else b""
    body += _pad_options(8 * units - 2 - len(body))
    return bytes((nh, units - 1)) + body


def ext_routing(nh: int, addr: bytes, rtype: int = 0) -> bytes:
    """A Routing header with Segments Left 0 and one address (24 bytes, RFC 8200 4.4)."""
    return bytes((nh, 2, rtype, 0)) + b"\x00" * 4 + addr


def ext_fragment(nh: int, offset8: int, more: bool, ident: int) -> bytes:
    """A Fragment header (RFC 8200 4.5): offset in 8-byte units."""
    return struct.pack("!BBHI", nh, 0, (offset8 << 3) | int(more), ident)


# --------------------------------------------------------------------------- config and truth


@dataclass(frozen=True)
class SynthConfig:
    """What to generate.  `packets` counts every frame written (noise and malformed included)."""

    packets: int = 20_000
    hours: float = 3.0
    seed: int = 1
    start: str = DEFAULT_START  # ISO 8601; naive means UTC
    snaplen: int = 65535
    linktype: str = "ethernet"
    darknet4: str = "198.51.100.0/24"
    darknet6: str = "2001:db8:dead::/48"
    noise: float = 0.03  # share of frames not addressed to the darknet
    malformed: float = 0.004  # share of malformed frames (at least one per reason if > 0)
    vlan: float = 0.25  # share of Ethernet frames that carry 802.1Q tags (a third of them QinQ)
    pad_ethernet: bool = True  # pad decodable Ethernet frames to 60 bytes, as a NIC delivers them

    def start_us(self) -> int:
        dt = datetime.fromisoformat(self.start.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return int(dt.timestamp()) * 1_000_000 + dt.microsecond


class _SrcHour:
    __slots__ = ("bytes", "dests", "first", "fps", "last", "packets", "ports", "ttl")

    def __init__(self, ts: int, idx: int, ttl: int) -> None:
        self.packets = 0
        self.bytes = 0
        self.first = (ts, idx)
        self.last = ts
        self.ttl = ttl
        self.ports: set[tuple[int, int]] = set()
        self.dests: set[str] = set()
        self.fps: set[str] = set()


class _PortAcc:
    __slots__ = ("backscatter", "bytes", "packets", "sources")

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0
        self.backscatter = 0
        self.sources: set[str] = set()


@dataclass
class HourTruth:
    """Ground truth of one UTC hour (see docs/synth.md)."""

    hour_start: int
    packets: int = 0
    bytes: int = 0
    fragments: int = 0
    noise: int = 0
    by_port: dict[str, _PortAcc] = field(default_factory=dict)
    icmp_codes: dict[str, int] = field(default_factory=dict)
    sources: dict[str, _SrcHour] = field(default_factory=dict)
    destinations: dict[str, int] = field(default_factory=dict)
    tcp_flags: dict[int, int] = field(default_factory=dict)
    ttl: dict[int, int] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=lambda: [0] * len(SIZE_BUCKETS))
    fingerprints: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINGERPRINTS, 0))
    backscatter: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BACKSCATTER, 0))
    malformed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MALFORMED_REASONS, 0))

    def to_dict(self) -> dict[str, Any]:
        by_port = {
            k: {"packets": a.packets, "bytes": a.bytes, "backscatter": a.backscatter,
                "sources": len(a.sources)}
            for k, a in sorted(self.by_port.items())
        }
        sources = {
            k: {"packets": s.packets, "bytes": s.bytes, "first_seen_us": s.first[0],
                "last_seen_us": s.last, "ports": len(s.ports), "destinations": len(s.dests),
                "ttl": s.ttl, "fingerprints": sorted(s.fps)}
            for k, s in sorted(self.sources.items())
        }
        bs = dict(self.backscatter)
        return {
            "hour_start": self.hour_start,
            "packets": self.packets,
            "bytes": self.bytes,
            "fragments": self.fragments,
            "by_port": by_port,
            "icmp_codes": dict(sorted(self.icmp_codes.items())),
            "sources": sources,
            "destinations": dict(sorted(self.destinations.items())),
            "tcp_flags": {str(k): v for k, v in sorted(self.tcp_flags.items())},
            "ttl": {str(k): v for k, v in sorted(self.ttl.items())},
            "sizes": {str(b): n for b, n in zip(SIZE_BUCKETS, self.sizes, strict=True)},
            "fingerprints": dict(self.fingerprints),
            "backscatter": {"total": sum(bs.values()), **bs},
            "malformed": dict(self.malformed),
            "noise": self.noise,
        }


@dataclass
class Truth:
    """Ground truth of a whole capture: one `HourTruth` per UTC hour it spans."""

    darknet: list[str]
    linktype: int
    hours: dict[int, HourTruth]
    generator: dict[str, Any] = field(default_factory=dict)
    # (0-based frame index in the file, reason) of every malformed frame, in file order
    malformed_frames: list[tuple[int, str]] = field(default_factory=list)

    def hour(self, ts_us: int) -> HourTruth:
        hs = ts_us // _HOUR_US * 3600
        h = self.hours.get(hs)
        if h is None:
            h = self.hours[hs] = HourTruth(hs)
        return h


def truth_to_dict(truth: Truth) -> dict[str, Any]:
    return {
        "darknet": list(truth.darknet),
        "linktype": truth.linktype,
        "generator": dict(truth.generator),
        "malformed_frames": [[i, r] for i, r in truth.malformed_frames],
        "hours": [truth.hours[k].to_dict() for k in sorted(truth.hours)],
    }


def truth_to_json(truth: Truth, path: str | Path | None = None) -> str:
    """The truth as JSON text, one hour per line, keys sorted (deterministic).

    Written to `path` too if given.  Compact on purpose: the C encoder keeps a million-packet
    truth to a second or two, where an indented dump takes many.
    """
    d = truth_to_dict(truth)
    hours = d.pop("hours")
    head = json.dumps(d, sort_keys=True)[:-1]
    lines = ",\n".join(json.dumps(h, sort_keys=True) for h in hours)
    text = f'{head}, "hours": [\n{lines}\n]}}\n' if hours else f'{head}, "hours": []}}\n'
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


# --------------------------------------------------------------------------- the generator

# Destination ports, most popular first (Zipf weights); plus random ports.
TCP_PORTS = (23, 80, 22, 443, 8080, 445, 3389, 5555, 37215, 52869, 2323, 81, 8443, 21, 25,
             1433, 3306, 6379, 5900, 8088, 7547, 9200, 5432, 110, 143, 8000, 8888, 60001, 139,
             135, 1723, 2375, 9000, 4567, 49152, 5985, 11211, 27017, 7001, 10000)
UDP_PORTS = (53, 123, 161, 1900, 5060, 137, 11211, 69, 5353, 3702, 389, 500, 1194, 19, 111,
             520, 10001, 27015, 4500, 17185)
_UDP_PAYLOAD = {53: 29, 123: 48, 161: 40, 1900: 94, 5060: 420, 137: 50, 11211: 15, 69: 20,
                5353: 46, 3702: 570, 389: 52, 500: 260, 1194: 14, 19: 1, 111: 40, 520: 24,
                10001: 4, 27015: 25, 4500: 1, 17185: 60}
LINUX_SYN_OPTS = (b"\x02\x04\x05\xb4\x04\x02\x08\x0a" + b"\x00\x3a\x61\x8f\x00\x00\x00\x00"
                  + b"\x01\x03\x03\x07")
WINDOWS_SYN_OPTS = b"\x02\x04\x05\xb4\x01\x03\x03\x08\x01\x01\x04\x02"
MSS_OPT = b"\x02\x04\x05\xb4"
IPV4_OPTIONS = (
    b"\x94\x04\x00\x00",  # Router Alert
    b"\x01\x01\x01\x00",  # NOP NOP NOP EOL
    b"\x44\x0c\x05\x00" + b"\x00" * 8,  # Timestamp
    b"\x07\x27\x04" + b"\x00" * 36 + b"\x00",  # Record Route, 9 slots, + EOL (IHL 15)
)
# (category, share of darknet frames, Pareto scale, Pareto alpha, activity window / duration)
CATEGORIES: tuple[tuple[str, float, float, float, float], ...] = (
    ("mirai", 0.22, 2.0, 1.3, 0.5),
    ("zmap", 0.07, 30.0, 1.2, 0.1),
    ("masscan", 0.07, 30.0, 1.2, 0.1),
    ("scan", 0.20, 1.0, 1.1, 0.3),
    ("udp", 0.10, 1.0, 1.2, 0.3),
    ("icmp", 0.04, 2.0, 1.3, 0.2),
    ("backscatter", 0.14, 20.0, 1.1, 0.05),
    ("v6", 0.09, 2.0, 1.2, 0.3),
    ("frag", 0.05, 3.0, 1.5, 0.2),
    ("other", 0.02, 3.0, 1.5, 0.3),
)


class _Src:
    """A traffic source: address, its canonical string, and a base TTL."""

    __slots__ = ("addr", "key", "ttl", "v6")

    def __init__(self, addr: bytes, ttl: int) -> None:
        self.addr = addr
        self.v6 = len(addr) == 16
        self.key = str(ipaddress.ip_address(addr))
        self.ttl = ttl


def _zipf_cum(n: int, s: float = 1.1) -> list[float]:
    acc, out = 0.0, []
    for r in range(1, n + 1):
        acc += 1.0 / r**s
        out.append(acc)
    return out


class _Gen:
    def __init__(self, cfg: SynthConfig, progress: Callable[[int, int], None] | None) -> None:
        if cfg.linktype not in LINKTYPES:
            raise ValueError(f"unknown linktype {cfg.linktype!r}; use one of {sorted(LINKTYPES)}")
        self.cfg = cfg
        self.rng = Random(cfg.seed)
        self.lt = LINKTYPES[cfg.linktype]
        self.start = cfg.start_us()
        self.dur = max(1, int(cfg.hours * _HOUR_US))
        self.net4 = ipaddress.IPv4Network(cfg.darknet4)
        self.net6 = ipaddress.IPv6Network(cfg.darknet6)
        self.progress = progress
        self.out: list[Packet] = []
        hours = {}
        for hs in range(self.start // _HOUR_US * 3600, (self.start + self.dur - 1) // _HOUR_US
                        * 3600 + 1, 3600):
            hours[hs] = HourTruth(hs)
        self.truth = Truth([str(self.net4), str(self.net6)], self.lt, hours)
        self._dst4: dict[bytes, str] = {}
        self._dst6: dict[bytes, str] = {}
        self._tcp_cum = _zipf_cum(len(TCP_PORTS))
        self._udp_cum = _zipf_cum(len(UDP_PORTS))
        self._srcs: set[bytes] = set()
        self._malformed: dict[int, str] = {}
        self._keys: dict[tuple[int, int | None], tuple[str, str]] = {}
        self.noise4 = [ipaddress.IPv4Network("192.0.2.0/24"), ipaddress.IPv4Network(
            "203.0.113.0/24"), self._adjacent(self.net4)]
        self.noise4 = [n for n in self.noise4 if not n.overlaps(self.net4)]
        self.noise6 = [ipaddress.IPv6Network("2001:db8:beef::/48"), self._adjacent(self.net6)]
        self.noise6 = [n for n in self.noise6 if not n.overlaps(self.net6)]

    @staticmethod
    def _adjacent(net: Any) -> Any:
        """The block right after `net` (or right before, at the top of the space)."""
        size = net.num_addresses
        base = int(net.network_address)
        other = base + size if base + size + size <= (1 << net.max_prefixlen) else base - size
        return ipaddress.ip_network((other, net.prefixlen))

    # ----- random helpers

    def ts(self, t0: int, t1: int) -> int:
        return t0 + int(self.rng.random() * (t1 - t0 + 1))

    def window(self, frac: float) -> tuple[int, int]:
        rng = self.rng
        t0 = self.start + int(rng.random() * self.dur)
        length = int(rng.expovariate(1.0 / max(1.0, frac * self.dur)))
        t1 = min(t0 + length, self.start + self.dur - 1)
        return t0, max(t0, t1)

    def tcp_port(self) -> int:
        rng = self.rng
        if rng.random() < 0.2:
            return rng.randint(1, 65535)
        return TCP_PORTS[bisect.bisect_left(self._tcp_cum, rng.random() * self._tcp_cum[-1])]

    def udp_port(self) -> int:
        rng = self.rng
        if rng.random() < 0.2:
            return rng.randint(1, 65535)
        return UDP_PORTS[bisect.bisect_left(self._udp_cum, rng.random() * self._udp_cum[-1])]

    def dst4(self) -> bytes:
        net = self.net4
        host = self.rng.getrandbits(32 - net.prefixlen) if net.prefixlen < 32 else 0
        return (int(net.network_address) | host).to_bytes(4, "big")

    def dst6(self) -> bytes:
        rng, net = self.rng, self.net6
        free = 128 - net.prefixlen
        r = rng.random()
        if free > 64:
            subnet = rng.randrange(256) if rng.random() < 0.7 else rng.getrandbits(free - 64)
            if r < 0.3:
                iid = 1
            elif r < 0.6:
                iid = rng.randrange(256)
            else:
                iid = rng.getrandbits(64)
            host = (subnet << 64) | iid
        else:
            host = 1 if r < 0.3 else rng.getrandbits(free)
        return (int(net.network_address) | host).to_bytes(16, "big")

    def public4(self) -> bytes:
        rng = self.rng
        while True:
            a = rng.getrandbits(32)
            o = a >> 24
            if o in (0, 10, 127) or o >= 224 or (a >> 16) in (0xC0A8, 0xA9FE):
                continue
            if (a >> 20) == 0xAC1 or (a >> 22) == 0x191 or (a >> 17) == 0x6309:  # 172.16/12 ...
                continue
            if (a >> 8) in (0xC00000, 0xC00002, 0xC63364, 0xCB0071):  # 192.0.0/24, TEST-NETs
                continue
            b = a.to_bytes(4, "big")
            if ipaddress.IPv4Address(b) in self.net4:
                continue
            return b

    def public6(self) -> bytes:
        rng = self.rng
        prefixes = (0x2001, 0x2400, 0x2401, 0x2404, 0x2406, 0x240E, 0x2600, 0x2602, 0x2604,
                    0x2607, 0x2800, 0x2A00, 0x2A01, 0x2A02, 0x2A03, 0x2C0F)
        while True:
            a = (rng.choice(prefixes) << 112) | rng.getrandbits(112)
            if (a >> 96) == 0x20010DB8:
                continue
            return a.to_bytes(16, "big")

    def source(self, v6: bool, ttl: int | None = None) -> _Src:
        while True:
            addr = self.public6() if v6 else self.public4()
            if addr not in self._srcs:
                self._srcs.add(addr)
                break
        if ttl is None:
            ttl = self.rng.choice((64, 64, 64, 128, 128, 255)) - self.rng.randint(3, 28)
        return _Src(addr, ttl)

    def hops_ttl(self, src: _Src) -> int:
        """Per-packet TTL: the source's, occasionally one less (route change)."""
        return src.ttl - 1 if self.rng.random() < 0.05 else src.ttl

    @staticmethod
    def pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
        return pseudo6(src, dst, proto, length) if len(src) == 16 else pseudo4(src, dst, proto,
                                                                                length)

    def v4_options(self, p: float) -> bytes:
        return self.rng.choice(IPV4_OPTIONS) if self.rng.random() < p else b""

    # ----- output

    def frame(self, l3: bytes, ethertype: int, pad: bool, dst_mac: bytes = SENSOR_MAC) -> bytes:
        lt = self.lt
        if lt == 1:
            rng = self.rng
            tags = b""
            r = rng.random()
            if r < self.cfg.vlan:
                tci = rng.choice((10, 100, 200, 4000)) | (rng.randrange(8) << 13)
                if r < self.cfg.vlan / 3:
                    outer = TPID_8021AD if rng.random() < 0.7 else TPID_8021Q
                    tags = struct.pack("!HH", outer, rng.choice((300, 301, 2000)))
                tags += struct.pack("!HH", TPID_8021Q, tci)
            f = dst_mac + ROUTER_MAC + tags + struct.pack("!H", ethertype) + l3
            if pad and len(f) < 60:
                f += b"\x00" * (60 - len(f))
            return f
        if lt == 113:
            return struct.pack("!HHH8sH", 0, 1, 6, ROUTER_MAC, ethertype) + l3
        if lt == 276:
            return struct.pack("!HHIHBB8s", ethertype, 0, 2, 1, 0, 6, ROUTER_MAC) + l3
        if lt == 101:
            return l3
        fam = 2 if ethertype == ETH_IPV4 else self.rng.choice((24, 28, 30))
        return struct.pack("<I", fam) + l3

    def put(self, ts: int, frame: bytes) -> None:
        self.out.append((ts, frame[: self.cfg.snaplen], len(frame)))
        if self.progress is not None and len(self.out) % 100_000 == 0:
            self.progress(len(self.out), self.cfg.packets)

    def emit(
        self,
        ts: int,
        src: _Src,
        dst: bytes,
        l3: bytes,
        *,
        proto: int,
        port: int | None,
        nonfirst: bool = False,
        flags: int | None = None,
        icmp_tc: tuple[int, int] | None = None,
        ip_id: int = 0,
        seq: int = 0,
    ) -> None:
        """Write a decodable darknet packet and account for it.

        The arguments are the header field values that were encoded into `l3`; the rules of
        docs/synth.md are evaluated on them here, whatever the generator meant to send.
        """
        idx = len(self.out)
        v6 = src.v6
        self.put(ts, self.frame(l3, ETH_IPV6 if v6 else ETH_IPV4, self.cfg.pad_ethernet))
        if v6:
            ip_len = ((l3[4] << 8) | l3[5]) + 40
            ttl = l3[7]
            pfx = dst[:8]
            dkey = self._dst6.get(pfx)
            if dkey is None:
                dkey = self._dst6[pfx] = str(ipaddress.IPv6Network((pfx + bytes(8), 64)))
        else:
            ip_len = (l3[2] << 8) | l3[3]
            ttl = l3[8]
            dkey = self._dst4.get(dst)
            if dkey is None:
                dkey = self._dst4[dst] = str(ipaddress.IPv4Address(dst))
        h = self.truth.hour(ts)
        h.packets += 1
        h.bytes += ip_len
        if nonfirst:
            h.fragments += 1
            port = None
            flags = None
            icmp_tc = None
        names = self._keys.get((proto, port))
        if names is None:
            pname = PROTO_NAMES.get(proto) or str(proto)
            pkey = f"{pname}/{'null' if port is None else port}"
            names = self._keys[(proto, port)] = (pname, pkey)
        pname, key = names
        # fingerprints (IPv4 only)
        fps: list[str] = []
        if not v6:
            ip_id = (l3[4] << 8) | l3[5]  # as encoded, whatever the caller meant
            dst_int = int.from_bytes(dst, "big")
            if not nonfirst and ip_id == 54321:
                fps.append("zmap")
            if flags is not None and flags & SYN and not flags & ACK:
                if seq == dst_int:
                    fps.append("mirai")
                if ip_id == (dst_int ^ (port or 0) ^ seq) & 0xFFFF:
                    fps.append("masscan")
            for f in fps:
                h.fingerprints[f] += 1
        # backscatter
        bs: str | None = None
        if flags is not None:
            if flags & RST:
                bs = "tcp_rst"
            elif flags & (SYN | ACK) == SYN | ACK:
                bs = "tcp_synack"
        elif icmp_tc is not None:
            t = icmp_tc[0]
            if proto == ICMP:
                bs = "icmp_error" if t in ICMP4_ERRORS else "icmp_echo_reply" if t == 0 else None
            elif proto == ICMPV6:
                bs = "icmp_error" if t in ICMP6_ERRORS else "icmp_echo_reply" if t == 129 else None
        if bs is not None:
            h.backscatter[bs] += 1
        pa = h.by_port.get(key)
        if pa is None:
            pa = h.by_port[key] = _PortAcc()
        pa.packets += 1
        pa.bytes += ip_len
        pa.sources.add(src.key)
        if bs is not None:
            pa.backscatter += 1
        if icmp_tc is not None:
            ck = f"{pname}/{icmp_tc[0]}/{icmp_tc[1]}"
            h.icmp_codes[ck] = h.icmp_codes.get(ck, 0) + 1
        if flags is not None:
            h.tcp_flags[flags] = h.tcp_flags.get(flags, 0) + 1
        h.ttl[ttl] = h.ttl.get(ttl, 0) + 1
        h.sizes[bisect.bisect_right(SIZE_BUCKETS, ip_len) - 1] += 1
        h.destinations[dkey] = h.destinations.get(dkey, 0) + 1
        s = h.sources.get(src.key)
        if s is None:
            s = h.sources[src.key] = _SrcHour(ts, idx, ttl)
        elif (ts, idx) < s.first:
            s.first = (ts, idx)
            s.ttl = ttl
        s.packets += 1
        s.bytes += ip_len
        s.last = max(s.last, ts)
        if port is not None and proto in (TCP, UDP):
            s.ports.add((proto, port))
        s.dests.add(dkey)
        s.fps.update(fps)

    def emit_noise(self, ts: int, l3: bytes, ethertype: int, dst_mac: bytes = SENSOR_MAC) -> None:
        self.put(ts, self.frame(l3, ethertype, True, dst_mac))
        self.truth.hour(ts).noise += 1

    def emit_malformed(self, ts: int, l3: bytes, ethertype: int, reason: str) -> None:
        self.put(ts, self.frame(l3, ethertype, False))
        self.truth.hour(ts).malformed[reason] += 1
        self._malformed[id(self.out[-1][1])] = reason  # the frame object stays alive in out

    # ----- IPv4 packet helpers (build + emit)

    def send_tcp4(self, ts: int, src: _Src, dst: bytes, sport: int, dport: int, seq: int,
                  ack: int, flags: int, window: int, *, ident: int, ttl: int,
                  opts: bytes = b"", payload: bytes = b"", df: bool = False,
                  ipopts: bytes = b"") -> None:
        seg = tcp(sport, dport, seq, ack, flags, window, opts, payload,
                  pseudo=pseudo4(src.addr, dst, TCP, 20 + len(opts) + len(payload)))
        l3 = ipv4(src.addr, dst, TCP, seg, ttl=ttl, ident=ident, frag=0x4000 if df else 0,
                  options=ipopts)
        self.emit(ts, src, dst, l3, proto=TCP, port=dport, flags=flags, ip_id=ident, seq=seq)

    def send_udp4(self, ts: int, src: _Src, dst: bytes, sport: int, dport: int,
                  payload: bytes, *, ident: int, ttl: int, ipopts: bytes = b"") -> None:
        dg = udp(sport, dport, payload, pseudo=pseudo4(src.addr, dst, UDP, 8 + len(payload)))
        l3 = ipv4(src.addr, dst, UDP, dg, ttl=ttl, ident=ident, options=ipopts)
        self.emit(ts, src, dst, l3, proto=UDP, port=dport, ip_id=ident)

    def send_icmp4(self, ts: int, src: _Src, dst: bytes, itype: int, code: int, rest: bytes,
                   data: bytes, *, ident: int, ttl: int, ipopts: bytes = b"") -> None:
        l3 = ipv4(src.addr, dst, ICMP, icmp(itype, code, rest, data), ttl=ttl, ident=ident,
                  options=ipopts)
        self.emit(ts, src, dst, l3, proto=ICMP, port=itype, icmp_tc=(itype, code), ip_id=ident)

    def send6(self, ts: int, src: _Src, dst: bytes, upper: int, l4: bytes, *, hlim: int,
              chain: Sequence[int] = (), port: int | None = None, flags: int | None = None,
              icmp_tc: tuple[int, int] | None = None) -> None:
        """An IPv6 packet with extension headers `chain` (HBH/DST/ROUTING) before `l4`."""
        nh, ext = self.ext_chain(chain, upper, dst)
        l3 = ipv6(src.addr, dst, nh, ext + l4, hlim=hlim, flow=self.rng.getrandbits(20))
        self.emit(ts, src, dst, l3, proto=upper, port=port, flags=flags, icmp_tc=icmp_tc)

    def ext_chain(self, chain: Sequence[int], upper: int, dst: bytes) -> tuple[int, bytes]:
        """Extension headers in `chain` order ending with Next Header `upper`.

        A Routing header lists the packet's own destination as its last (only) address with
        Segments Left 0: the packet has arrived, and the checksum pseudo-header's final
        destination (RFC 8200 8.1) is the same whichever of the two a checker uses.
        """
        out = b""
        nh = upper
        for kind in reversed(chain):
            if kind == ROUTING:
                out = ext_routing(nh, dst, self.rng.choice((0, 2))) + out
            elif kind == FRAGMENT:  # an atomic fragment (RFC 6946): offset 0, M clear
                out = ext_fragment(nh, 0, False, self.rng.getrandbits(32)) + out
            else:
                out = ext_options(nh, self.rng.choice((1, 1, 2)),
                                  router_alert=kind == HBH and self.rng.random() < 0.5) + out
            nh = kind
        return nh, out

    def random_chain(self) -> list[int]:
        """A legal order of extension headers (RFC 8200 4.1), non-empty."""
        rng = self.rng
        choices = ([HBH], [DSTOPTS], [ROUTING], [HBH, ROUTING], [HBH, DSTOPTS],
                   [DSTOPTS, ROUTING, DSTOPTS], [HBH, DSTOPTS, ROUTING, DSTOPTS],
                   [ROUTING, DSTOPTS])
        chain = list(rng.choice(choices))
        if rng.random() < 0.1:
            chain.append(FRAGMENT)  # atomic fragment: a whole packet, ports and all
        return chain

    # ----- categories: each emits exactly `n` frames for one source

    def cat_mirai(self, n: int, t0: int, t1: int) -> None:
        rng = self.rng
        src = self.source(False, rng.choice((64, 64, 128)) - rng.randint(6, 25))
        ports = (23,) * 9 + (2323,) if rng.random() < 0.7 else (
            23, 23, 2323, 37215, 52869, 5555, 80, 8080, 81, 7547)
        for _ in range(n):
            dst = self.dst4()
            self.send_tcp4(self.ts(t0, t1), src, dst, rng.randint(1024, 65535), rng.choice(ports),
                           int.from_bytes(dst, "big"), 0, SYN, rng.getrandbits(16),
                           ident=rng.getrandbits(16), ttl=self.hops_ttl(src))

    def cat_zmap(self, n: int, t0: int, t1: int) -> None:
        rng = self.rng
        src = self.source(False, 255 - rng.randint(0, 20))
        ports = [self.tcp_port() for _ in range(rng.choice((1, 1, 1, 2, 3)))]
        opts = MSS_OPT if rng.random() < 0.5 else b""
        for _ in range(n):
            self.send_tcp4(self.ts(t0, t1), src, self.dst4(), rng.randint(32768, 61000),
                           rng.choice(ports), rng.getrandbits(32), 0, SYN, 65535, ident=54321,
                           ttl=self.hops_ttl(src), opts=opts)

    def cat_masscan(self, n: int, t0: int, t1: int) -> None:
        rng = self.rng
        src = self.source(False, 255 - rng.randint(0, 20))
        sport = rng.randint(40000, 65535)
        for _ in range(n):
            dst = self.dst4()
            dport = self.tcp_port()
            seq = rng.getrandbits(32)
            ident = (int.from_bytes(dst, "big") ^ dport ^ seq) & 0xFFFF
            self.send_tcp4(self.ts(t0, t1), src, dst, sport, dport, seq, 0, SYN, 1024,
                           ident=ident, ttl=self.hops_ttl(src))

    def cat_scan(self, n: int, t0: int, t1: int) -> None:
        rng = self.rng
        src = self.source(False)
        opts = rng.choice((LINUX_SYN_OPTS, WINDOWS_SYN_OPTS, MSS_OPT, b""))
        odd = rng.random() < 0.15  # a stealth scanner: unusual flag combinations
        ipopt_p = 0.3 if rng.random() < 0.1 else 0.0
        fixed_port = self.tcp_port() if rng.random() < 0.5 else None
        for _ in range(n):
            flags = SYN
            payload = b""
            if odd:
                flags = rng.choice((0x00, 0x01, 0x29, 0x10, 0xC2, 0x12, 0x03, 0x06, 0x3F))
            elif rng.random() < 0.02:
                flags, payload = 0x18, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
            self.send_tcp4(self.ts(t0, t1), src, self.dst4(), rng.randint(1024, 65535),
                           fixed_port or self.tcp_port(), rng.getrandbits(32),
                           rng.getrandbits(32) if flags & ACK else 0, flags,
                           rng.choice((64240, 29200, 8192, 65535, 1024)),
                           ident=rng.getrandbits(16) if rng.random() < 0.8 else 0,
                           ttl=self.hops_ttl(src), opts=opts if flags & SYN else b"",
                           payload=payload, df=rng.random() < 0.6,
                           ipopts=self.v4_options(ipopt_p))

    def cat_udp(self, n: int, t0: int, t1: int) -> None:
        rng = self.rng
        src = self.source(False)
        ipopt_p = 0.3 if rng.random() < 0.1 else 0.0
        for _ in range(n):
            dport = self.udp_port()
            size = _UDP_PAYLOAD.get(dport)
            if size is None:
                size = rng.choice((0, 1, 12, 32, 100, 300, 700, 1200, 1472))
            self.send_udp4(self.ts(t0, t1), src, self.dst4(), rng.randint(1024, 65535), dport,
                           rng.randbytes(size), ident=rng.getrandbits(16),
                           ttl=self.hops_ttl(src), ipopts=self.v4_options(ipopt_p))

    def cat_icmp(self, n: int, t0: int, t1: int) -> None:
        rng = self.rng
        src = self.source(False)
        size = rng.choice((56, 56, 32, 0, 8, 1472, 100))
        ident = rng.getrandbits(16)
        for i in range(n):
            r = rng.random()
            if r < 0.9:
                itype, rest, data = 8, struct.pack("!HH", ident, i & 0xFFFF), rng.randbytes(size)
            elif r < 0.95:
                itype, rest, data = 13, struct.pack("!HH", ident, i & 0xFFFF), bytes(12)
            else:
                itype, rest, data = 17, struct.pack("!HH", ident, i & 0xFFFF), bytes(4)
            self.send_icmp4(self.ts(t0, t1), src, self.dst4(), itype, 0, rest, data,
                            ident=rng.getrandbits(16), ttl=self.hops_ttl(src),
                            ipopts=self.v4_options(0.02))

    def quoted4(self, inner_src: bytes, inner_dst: bytes) -> bytes:
        """The invoking IPv4 datagram an ICMP error quotes: header + 8 (or more) bytes."""
        rng = self.rng
        if rng.random() < 0.5:
            sport, dport = rng.randint(1024, 65535), rng.choice((53, 123, 80, 443))
            l4 = udp(sport, dport, rng.randbytes(rng.choice((20, 40))))
            inner = ipv4(inner_src, inner_dst, UDP, l4, ttl=rng.randint(1, 64),
                         ident=rng.getrandbits(16))
        else:
            l4 = tcp(rng.randint(1024, 65535), rng.choice((80, 443, 22)), rng.getrandbits(32), 0,
                     SYN, 65535, WINDOWS_SYN_OPTS)
            inner = ipv4(inner_src, inner_dst, TCP, l4, ttl=rng.randint(1, 64),
                         ident=rng.getrandbits(16))
        return inner[: 20 + rng.choice((8, 8, 8, 20))]

    def cat_backscatter(self, n: int, t0: int, t1: int) -> None:
        """A DoS victim (or a router near it) answering packets spoofed from the darknet."""
        rng = self.rng
        src = self.source(False)
        kind = rng.choice(("tcp", "tcp", "tcp", "icmp", "echo"))
        svc = rng.choice((80, 443, 53, 22, 25, 3389, 8080, 27015))
        t0 = max(t0, t1 - 600_000_000) if rng.random() < 0.8 else t0  # most floods are short
        for _ in range(n):
            ts, dst = self.ts(t0, t1), self.dst4()
            ttl = self.hops_ttl(src)
            ident = rng.getrandbits(16)
            if kind == "tcp":
                r = rng.random()
                flags = 0x12 if r < 0.7 else 0x14 if r < 0.9 else 0x04
                self.send_tcp4(ts, src, dst, svc, rng.randint(1024, 65535), rng.getrandbits(32),
                               rng.getrandbits(32) if flags & ACK else 0, flags,
                               rng.choice((65535, 29200, 0)) if flags != 0x12 else 65535,
                               ident=ident, ttl=ttl, opts=MSS_OPT if flags == 0x12 else b"",
                               df=True, ipopts=self.v4_options(0.01))
            elif kind == "icmp":
                itype, code = rng.choice(((3, 0), (3, 1), (3, 3), (3, 3), (3, 10), (3, 13),
                                          (3, 4), (11, 0), (11, 0), (11, 1), (4, 0), (5, 1),
                                          (12, 0)))
                rest = bytes(4)
                if itype == 3 and code == 4:
                    rest = struct.pack("!HH", 0, rng.choice((1400, 1280, 576)))
                elif itype == 5:
                    rest = src.addr
                elif itype == 12:
                    rest = bytes((20, 0, 0, 0))
                self.send_icmp4(ts, src, dst, itype, code, rest,
                                self.quoted4(dst, self.public4()), ident=ident, ttl=ttl)
            else:
                self.send_icmp4(ts, src, dst, 0, 0, struct.pack("!HH", rng.getrandbits(16),
                                rng.getrandbits(16)), rng.randbytes(rng.choice((56, 32, 0))),
                                ident=ident, ttl=ttl)

    def cat_v6(self, n: int, t0: int, t1: int) -> None:
        rng = self.rng
        src = self.source(True)
        kind = rng.choice(("tcp", "tcp", "udp", "echo", "bs_tcp", "bs_icmp", "echo_reply"))
        ext_p = rng.choice((0.0, 0.1, 0.5, 1.0))
        svc = rng.choice((80, 443, 53))
        for _ in range(n):
            ts, dst = self.ts(t0, t1), self.dst6()
            hl = self.hops_ttl(src)
            chain = self.random_chain() if rng.random() < ext_p else []
            if kind in ("tcp", "bs_tcp"):
                if kind == "tcp":
                    sport, dport, flags, opts = rng.randint(1024, 65535), self.tcp_port(), SYN, (
                        MSS_OPT)
                else:
                    sport, dport, opts = svc, rng.randint(1024, 65535), b""
                    flags = rng.choice((0x12, 0x12, 0x14, 0x04))
                seg = tcp(sport, dport, rng.getrandbits(32),
                          rng.getrandbits(32) if flags & ACK else 0, flags, 65535, opts,
                          pseudo=pseudo6(src.addr, dst, TCP, 20 + len(opts)))
                self.send6(ts, src, dst, TCP, seg, hlim=hl, chain=chain, port=dport, flags=flags)
            elif kind == "udp":
                dport = self.udp_port()
                pl = rng.randbytes(_UDP_PAYLOAD.get(dport, 20))
                dg = udp(rng.randint(1024, 65535), dport, pl,
                         pseudo=pseudo6(src.addr, dst, UDP, 8 + len(pl)))
                self.send6(ts, src, dst, UDP, dg, hlim=hl, chain=chain, port=dport)
            elif kind in ("echo", "echo_reply"):
                itype = 128 if kind == "echo" else 129
                data = rng.randbytes(rng.choice((56, 0, 16)))
                msg = icmp(itype, 0, rng.randbytes(4), data,
                           pseudo=pseudo6(src.addr, dst, ICMPV6, 8 + len(data)))
                self.send6(ts, src, dst, ICMPV6, msg, hlim=hl, chain=chain, port=itype,
                           icmp_tc=(itype, 0))
            else:
                itype, code = rng.choice(((1, 0), (1, 1), (1, 3), (1, 4), (2, 0), (3, 0),
                                          (3, 1), (4, 0), (4, 1)))
                rest = struct.pack("!I", 1280 if itype == 2 else 40 if itype == 4 else 0)
                il4 = udp(rng.randint(1024, 65535), 53, rng.randbytes(30))
                inner = ipv6(dst, self.public6(), UDP, il4, hlim=rng.randint(1, 64))
                quote = inner[: 40 + rng.choice((8, 8, 38))]
                msg = icmp(itype, code, rest, quote,
                           pseudo=pseudo6(src.addr, dst, ICMPV6, 8 + len(quote)))
                self.send6(ts, src, dst, ICMPV6, msg, hlim=hl, chain=chain, port=itype,
                           icmp_tc=(itype, code))

    def cat_frag(self, n: int, t0: int, t1: int) -> None:
        """Fragment trains: the first fragment carries the transport header, later ones not."""
        rng = self.rng
        v6 = rng.random() < 0.3
        src = self.source(v6)
        while n > 0:
            ts = self.ts(t0, t1)
            dst = self.dst6() if v6 else self.dst4()
            proto = rng.choice((UDP, UDP, UDP, ICMP if not v6 else ICMPV6, TCP))
            size = rng.randint(1600, 4000)
            dport = self.udp_port() if proto == UDP else self.tcp_port()
            body = rng.randbytes(size)
            flags: int | None = None
            icmp_tc: tuple[int, int] | None = None
            port: int | None = dport
            if proto == UDP:
                l4 = udp(rng.randint(1024, 65535), dport, body,
                         pseudo=self.pseudo(src.addr, dst, UDP, 8 + size))
            elif proto == TCP:
                flags = 0x18
                l4 = tcp(rng.randint(1024, 65535), dport, rng.getrandbits(32),
                         rng.getrandbits(32), flags, 65535, b"", body,
                         pseudo=self.pseudo(src.addr, dst, TCP, 20 + size))
            else:
                itype = 128 if v6 else 8
                port, icmp_tc = itype, (itype, 0)
                l4 = icmp(itype, 0, rng.randbytes(4), body,
                          pseudo=pseudo6(src.addr, dst, ICMPV6, 8 + size) if v6 else b"")
            mtu_payload = 1400 if v6 else 1480  # 8-byte multiples
            pieces = [l4[i : i + mtu_payload] for i in range(0, len(l4), mtu_payload)]
            order = list(range(len(pieces)))
            r = rng.random()
            if r < 0.1:
                order.reverse()
            elif r < 0.2:
                order = order[1:]  # the first fragment was lost upstream
            ident = rng.getrandbits(32 if v6 else 16)
            hl = self.hops_ttl(src)
            chain = rng.choice(([], [], [HBH], [DSTOPTS, ROUTING])) if v6 else []
            for k in order:
                if n == 0:
                    break
                off8 = k * mtu_payload // 8
                more = k < len(pieces) - 1
                nonfirst = k > 0
                if v6:
                    nh, ext = self.ext_chain(chain, FRAGMENT, dst)
                    payload = ext + ext_fragment(proto, off8, more, ident) + pieces[k]
                    l3 = ipv6(src.addr, dst, nh, payload, hlim=hl)
                else:
                    l3 = ipv4(src.addr, dst, proto, pieces[k], ttl=hl, ident=ident,
                              frag=(0x2000 if more else 0) | off8)
                self.emit(ts, src, dst, l3, proto=proto, port=port, nonfirst=nonfirst,
                          flags=flags, icmp_tc=icmp_tc, ip_id=0 if v6 else ident,
                          seq=struct.unpack_from("!I", l4, 4)[0] if proto == TCP else 0)
                ts = min(ts + rng.randint(1, 400), self.start + self.dur - 1)
                n -= 1

    def cat_other(self, n: int, t0: int, t1: int) -> None:
        """GRE, ESP and SCTP: counted under their protocol number with port null."""
        rng = self.rng
        v6 = rng.random() < 0.2
        src = self.source(v6)
        proto = rng.choice((47, 47, 50, 132))
        for _ in range(n):
            ts, dst = self.ts(t0, t1), self.dst6() if v6 else self.dst4()
            if proto == 47:  # GRE carrying an IPv4 packet (RFC 2784)
                inner = ipv4(self.public4(), self.public4(), UDP, udp(1234, 53, bytes(20)),
                             ttl=64, ident=0)
                body = struct.pack("!HH", 0, ETH_IPV4) + inner
            elif proto == 50:  # ESP: SPI, sequence number, opaque data
                body = struct.pack("!II", rng.getrandbits(32), rng.randint(1, 1000))
                body += rng.randbytes(rng.choice((48, 96, 128)))
            else:  # SCTP INIT (RFC 9260), CRC-32C stored little-endian-first as Linux does
                init = struct.pack("!BBHIIHHI", 1, 0, 20, rng.getrandbits(32), 65535, 10, 10,
                                   rng.getrandbits(32))
                common = struct.pack("!HHII", rng.randint(1024, 65535), rng.choice((2905, 3868,
                                     38412, 36412)), 0, 0) + init
                body = common[:8] + struct.pack("<I", crc32c(common)) + common[12:]
            if v6:
                self.send6(ts, src, dst, proto, body, hlim=self.hops_ttl(src))
            else:
                l3 = ipv4(src.addr, dst, proto, body, ttl=self.hops_ttl(src),
                          ident=rng.getrandbits(16))
                self.emit(ts, src, dst, l3, proto=proto, port=None,
                          ip_id=struct.unpack_from("!H", l3, 4)[0])

    # ----- malformed and noise

    def malformed(self, reason: str) -> None:
        """One malformed frame that a BPF `dst net` filter still accepts."""
        rng = self.rng
        ts = self.start + int(rng.random() * self.dur)
        s4, d4 = self.public4(), self.dst4()
        s6, d6 = self.public6(), self.dst6()
        v6 = rng.random() < 0.4
        syn = tcp(rng.randint(1024, 65535), self.tcp_port(), rng.getrandbits(32), 0, SYN, 1024)
        ident, ttl = rng.getrandbits(16), rng.randint(30, 250)
        if reason == "ip_version":  # never on raw IP: see run()
            if v6:
                l3 = ipv6(s6, d6, TCP, syn, hlim=ttl, version=rng.choice((0, 4, 5, 7, 15)))
                self.emit_malformed(ts, l3, ETH_IPV6, reason)
            else:
                ver = rng.choice((0, 5, 6, 7, 15))
                l3 = ipv4(s4, d4, TCP, syn, ttl=ttl, ident=ident, ver_ihl=(ver << 4) | 5)
                self.emit_malformed(ts, l3, ETH_IPV4, reason)
        elif reason == "ipv4_bad_ihl":
            l3 = ipv4(s4, d4, TCP, syn, ttl=ttl, ident=ident, ver_ihl=0x40 | rng.randrange(5))
            self.emit_malformed(ts, l3, ETH_IPV4, reason)
        elif reason == "ipv4_bad_length":
            l3 = ipv4(s4, d4, TCP, syn, ttl=ttl, ident=ident, total_length=rng.randrange(20))
            self.emit_malformed(ts, l3, ETH_IPV4, reason)
        elif reason == "ipv6_ext_truncated":
            r = rng.random()
            if r < 0.3:  # the header announced by Next Header is not there at all
                nh, payload = rng.choice((HBH, DSTOPTS, ROUTING, FRAGMENT)), b""
            elif r < 0.5:  # only part of its first two bytes
                nh, payload = HBH, b"\x06"
            else:  # its length field runs past the end (alone, or second in a chain)
                kind = DSTOPTS if rng.random() < 0.5 else ROUTING
                full = ext_options(TCP, 3) if kind == DSTOPTS else ext_routing(TCP, d6)
                part = full[: rng.randint(2, len(full) - 1)]
                if rng.random() < 0.5:
                    nh, payload = HBH, part
                else:
                    nh, payload = HBH, ext_options(kind, 1) + part
            l3 = ipv6(s6, d6, nh, payload, hlim=ttl)
            self.emit_malformed(ts, l3, ETH_IPV6, reason)
        else:
            cut = {"tcp_truncated": 19, "tcp_bad_offset": 20, "udp_truncated": 7,
                   "icmp_truncated": 3}[reason]
            if reason == "tcp_bad_offset":
                l4 = tcp(rng.randint(1024, 65535), self.tcp_port(), rng.getrandbits(32), 0, SYN,
                         1024, doff=rng.randrange(5))
                proto = TCP
            elif reason == "tcp_truncated":
                l4, proto = syn[: rng.randint(0, cut)], TCP
            elif reason == "udp_truncated":
                l4 = udp(rng.randint(1024, 65535), self.udp_port(), b"")[: rng.randint(0, cut)]
                proto = UDP
            else:
                proto = ICMPV6 if v6 else ICMP
                l4 = icmp(128 if v6 else 8, 0, b"", b"")[: rng.randint(0, cut)]
            if v6:
                self.emit_malformed(ts, ipv6(s6, d6, proto, l4, hlim=ttl), ETH_IPV6, reason)
            else:
                l3 = ipv4(s4, d4, proto, l4, ttl=ttl, ident=ident)
                self.emit_malformed(ts, l3, ETH_IPV4, reason)

    def noise(self) -> None:
        """A frame the sensor's `dst net` filter must drop."""
        rng = self.rng
        ts = self.start + int(rng.random() * self.dur)
        r = rng.random()
        link_l2 = self.lt in (1, 113, 276)
        if link_l2 and r < 0.2:  # ARP who-has on the LAN side (target outside the block)
            n2 = self.noise4[0]
            spa = (int(n2.network_address) + 1).to_bytes(4, "big")
            tpa = (int(n2.network_address) + rng.randint(2, 254)).to_bytes(4, "big")
            arp = struct.pack("!HHBBH6s4s6s4s", 1, ETH_IPV4, 6, 4, 1, ROUTER_MAC, spa,
                              bytes(6), tpa)
            self.emit_noise(ts, arp, ETH_ARP, b"\xff" * 6)
        elif self.lt == 1 and r < 0.25:  # LLDP
            lldp = b"\x02\x07\x04" + ROUTER_MAC + b"\x04\x04\x05eth1\x06\x02\x00\x78\x00\x00"
            self.emit_noise(ts, lldp, ETH_LLDP, bytes.fromhex("0180c200000e"))
        elif r < 0.7:
            if r < 0.55:
                net = rng.choice(self.noise4)
                s = self.public4()
                d = (int(net.network_address) + rng.randrange(net.num_addresses)).to_bytes(4, "big")
            else:  # from the darknet block outwards: src matches, dst does not
                s, d = self.dst4(), self.public4()
            seg = tcp(rng.randint(1024, 65535), self.tcp_port(), rng.getrandbits(32), 0, SYN,
                      65535, pseudo=pseudo4(s, d, TCP, 20))
            self.emit_noise(ts, ipv4(s, d, TCP, seg, ttl=rng.randint(30, 250),
                                     ident=rng.getrandbits(16)), ETH_IPV4)
        else:
            s = self.public6()
            if r < 0.85:
                net6 = rng.choice(self.noise6)
                d = (int(net6.network_address) | rng.getrandbits(64)).to_bytes(16, "big")
                dg = udp(rng.randint(1024, 65535), 53, bytes(20), pseudo=pseudo6(s, d, UDP, 28))
                self.emit_noise(ts, ipv6(s, d, UDP, dg, hlim=rng.randint(30, 250)), ETH_IPV6)
            else:  # neighbour solicitation for a darknet address, to its solicited-node group
                target = self.dst6()
                d = bytes.fromhex("ff0200000000000000000001ff") + target[13:]
                s = bytes.fromhex("fe80000000000000") + rng.randbytes(8)
                msg = icmp(135, 0, bytes(4), target + b"\x01\x01" + ROUTER_MAC,
                           pseudo=pseudo6(s, d, ICMPV6, 32))
                self.emit_noise(ts, ipv6(s, d, ICMPV6, msg, hlim=255), ETH_IPV6)

    # ----- driver

    def run(self) -> tuple[list[Packet], Truth]:
        cfg, rng = self.cfg, self.rng
        total = cfg.packets
        n_mal = 0
        if cfg.malformed > 0 and total >= 50:
            n_mal = min(max(len(MALFORMED_REASONS), round(total * cfg.malformed)), total // 10)
        n_noise = min(round(total * cfg.noise), total - n_mal)
        rest = total - n_mal - n_noise
        weights = [c[1] for c in CATEGORIES]
        shares = [int(rest * w / sum(weights)) for w in weights]
        shares[0] += rest - sum(shares)
        for (name, _w, xm, alpha, frac), budget in zip(CATEGORIES, shares, strict=True):
            fn = getattr(self, "cat_" + name)
            cap = max(1, total // 40)
            while budget > 0:
                k = min(budget, cap, max(1, int(xm * rng.paretovariate(alpha))))
                t0, t1 = self.window(frac)
                fn(k, t0, t1)
                budget -= k
        # libpcap tells IPv4 from IPv6 on raw IP by the version nibble, so a frame with a
        # wrong one cannot pass the filter there: no `ip_version` frames on raw IP.
        reasons = [r for r in MALFORMED_REASONS if self.lt != 101 or r != "ip_version"]
        for i in range(n_mal):
            self.malformed(reasons[i % len(reasons)])
        for _ in range(n_noise):
            self.noise()
        assert len(self.out) == total, (len(self.out), total)
        self.out.sort(key=lambda p: p[0])  # stable: ties keep generation order, as accounted
        mal = self._malformed
        self.truth.malformed_frames = [
            (i, mal[id(p[1])]) for i, p in enumerate(self.out) if id(p[1]) in mal
        ]
        self.truth.generator = {
            "name": "bench.synth", "version": 1, "seed": cfg.seed, "packets": total,
            "hours": cfg.hours, "start": cfg.start, "snaplen": cfg.snaplen,
            "linktype_name": cfg.linktype,
        }
        if self.progress is not None:
            self.progress(total, total)
        return self.out, self.truth


def generate(
    config: SynthConfig, progress: Callable[[int, int], None] | None = None
) -> tuple[list[Packet], Truth]:
    """Generate `config.packets` frames (sorted by time) and their exact ground truth."""
    return _Gen(config, progress).run()


# --------------------------------------------------------------------------- file writers


def _write_chunks(fh: BinaryIO, chunks: Iterable[bytes]) -> None:
    buf: list[bytes] = []
    size = 0
    for c in chunks:
        buf.append(c)
        size += len(c)
        if size > 1 << 20:
            fh.write(b"".join(buf))
            buf, size = [], 0
    fh.write(b"".join(buf))


def write_pcap(path: str | Path, packets: Iterable[Packet], linktype: int, snaplen: int) -> None:
    """Classic libpcap format, microsecond timestamps, little-endian (magic a1b2c3d4)."""
    rec = struct.Struct("<IIII")

    def chunks() -> Iterable[bytes]:
        yield struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)
        for ts, data, wire in packets:
            yield rec.pack(ts // 1_000_000, ts % 1_000_000, len(data), wire)
            yield data

    with open(path, "wb") as fh:
        _write_chunks(fh, chunks())


def _pcapng_option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\x00" * (-len(value) % 4)


def write_pcapng(path: str | Path, packets: Iterable[Packet], linktype: int, snaplen: int) -> None:
    """pcapng: one Section Header, one Interface Description (if_tsresol 6), Enhanced Packets."""

    def block(btype: int, body: bytes) -> bytes:
        length = 12 + len(body)
        return struct.pack("<II", btype, length) + body + struct.pack("<I", length)

    def chunks() -> Iterable[bytes]:
        shb_opts = _pcapng_option(4, b"teiten bench.synth") + _pcapng_option(0, b"")
        yield block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + shb_opts)
        idb_opts = (_pcapng_option(2, b"synth0") + _pcapng_option(9, b"\x06")
                    + _pcapng_option(0, b""))
        yield block(1, struct.pack("<HHI", linktype, 0, snaplen) + idb_opts)
        epb = struct.Struct("<IIIIIII")
        for ts, data, wire in packets:
            pad = -len(data) % 4
            length = 32 + len(data) + pad
            yield epb.pack(6, length, 0, ts >> 32, ts & 0xFFFFFFFF, len(data), wire)
            yield data + b"\x00" * pad + struct.pack("<I", length)

    with open(path, "wb") as fh:
        _write_chunks(fh, chunks())


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.synth",
        description="Write a synthetic darknet capture and its exact ground truth (docs/synth.md).",
    )
    p.add_argument("--out", required=True, help="capture file (.pcap or .pcapng)")
    p.add_argument("--truth", required=True, help="ground-truth JSON file")
    p.add_argument("--packets", type=int, default=20_000, help="frames in total (default 20000)")
    p.add_argument("--hours", type=float, default=3.0, help="time span in hours (default 3)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--start", default=DEFAULT_START,
                   help=f"ISO 8601 start time (default {DEFAULT_START})")
    p.add_argument("--snaplen", type=int, default=65535)
    p.add_argument("--linktype", choices=sorted(LINKTYPES), default="ethernet")
    p.add_argument("--format", choices=("pcap", "pcapng"), default=None,
                   help="default: from the --out suffix")
    p.add_argument("--darknet4", default="198.51.100.0/24")
    p.add_argument("--darknet6", default="2001:db8:dead::/48")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    a = p.parse_args(argv)
    if a.packets < 1 or a.hours <= 0 or a.snaplen < 1:
        p.error("--packets, --hours and --snaplen must be positive")
    fmt = a.format or ("pcapng" if str(a.out).endswith(".pcapng") else "pcap")
    try:
        cfg = SynthConfig(packets=a.packets, hours=a.hours, seed=a.seed, start=a.start,
                          snaplen=a.snaplen, linktype=a.linktype, darknet4=a.darknet4,
                          darknet6=a.darknet6)
        cfg.start_us()
    except ValueError as e:
        p.error(f"{e} (use e.g. --start 2026-11-02T00:00:00Z, --darknet4 198.51.100.0/24)")
    t0 = time.monotonic()
    show = not a.quiet and a.packets >= 200_000

    def progress(done: int, total: int) -> None:
        print(f"synth: {done:,}/{total:,} frames ({time.monotonic() - t0:.1f}s)", file=sys.stderr)

    packets, truth = generate(cfg, progress if show else None)
    writer = write_pcapng if fmt == "pcapng" else write_pcap
    writer(a.out, packets, LINKTYPES[a.linktype], a.snaplen)
    truth.generator["format"] = fmt
    truth_to_json(truth, a.truth)
    if show:
        print(f"synth: wrote {a.out} and {a.truth} in {time.monotonic() - t0:.1f}s",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

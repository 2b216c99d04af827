"""The `onlink` ARP/NDP responder: claim the dark block's addresses on the local segment.

Strategy: when the dark block sits on the local segment (`onlink` topology) the router
ARPs (or sends IPv6 neighbour solicitations) for each dark address before it forwards a
packet there; somebody must answer, or nothing reaches the sensor.  The board's kernel must
not (it has no such addresses and `arp_ignore`/`disable_ipv6` keep it quiet, see
sensor/edges/netsetup.py), so this responder does, with the capture interface's MAC, and nothing
else: an ARP reply for an ARP request whose target is in a dark IPv4 block, a neighbour
advertisement for a solicitation whose target is in a dark IPv6 block (not DAD probes), at
most `rate_per_s` replies per second (token bucket, `burst` deep).  It is the only code in
Teiten that sends on the capture interface, and it runs only in the `onlink` topology.

The packet logic (`reply_for`) is pure; `Responder` is the AF_PACKET edge, with a classic
BPF program attached so the kernel hands it ARP and neighbour solicitations only.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import socket
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any, Final

log = logging.getLogger("teiten.responder")

ETH_P_ALL: Final = 0x0003
ETH_P_ARP: Final = 0x0806
ETH_P_IPV6: Final = 0x86DD
SO_ATTACH_FILTER: Final = 26
PACKET_OUTGOING: Final = 4
ICMPV6_NS: Final = 135
ICMPV6_NA: Final = 136

# ARP, or IPv6 whose next header is ICMPv6 and whose type is 135 (neighbour solicitation).
_BPF: Final = (
    (0x28, 0, 0, 12),  # ldh [12]         ethertype
    (0x15, 5, 0, ETH_P_ARP),  # jeq ARP -> accept
    (0x15, 0, 5, ETH_P_IPV6),  # jeq IPv6, else drop
    (0x30, 0, 0, 20),  # ldb [20]         next header
    (0x15, 0, 3, 58),  # jeq ICMPv6, else drop
    (0x30, 0, 0, 54),  # ldb [54]         ICMPv6 type
    (0x15, 0, 1, ICMPV6_NS),  # jeq NS, else drop
    (0x06, 0, 0, 0x40000),  # ret accept
    (0x06, 0, 0, 0),  # ret drop
)

Nets = Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]


def _in_block(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, blocks: Nets,
              exclude: Nets) -> bool:
    return any(addr in n for n in blocks) and not any(addr in n for n in exclude)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def reply_for(frame: bytes, mac: bytes, blocks: Nets, exclude: Nets = ()) -> bytes | None:
    """The reply frame for an ARP request or neighbour solicitation for a dark address."""
    if len(frame) < 14:
        return None
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    src_mac = frame[6:12]
    if ethertype == ETH_P_ARP and len(frame) >= 42:
        htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", frame, 14)
        if (htype, ptype, hlen, plen, op) != (1, 0x0800, 6, 4, 1):
            return None
        sha, spa, tpa = frame[22:28], frame[28:32], frame[38:42]
        if not _in_block(ipaddress.IPv4Address(tpa), blocks, exclude):
            return None
        arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + mac + tpa + sha + spa
        return sha + mac + struct.pack("!H", ETH_P_ARP) + arp
    if ethertype == ETH_P_IPV6 and len(frame) >= 14 + 40 + 24:
        nh, hlim = frame[20], frame[21]
        if nh != 58 or hlim != 255 or frame[54] != ICMPV6_NS or frame[55] != 0:
            return None
        src = frame[22:38]
        target = frame[62:78]
        if src == bytes(16):  # a DAD probe: someone wants the address; do not fight it
            return None
        if not _in_block(ipaddress.IPv6Address(target), blocks, exclude):
            return None
        body = struct.pack("!BBHB3x", ICMPV6_NA, 0, 0, 0x60) + target + b"\x02\x01" + mac
        pseudo = target + src + struct.pack("!I3xB", len(body), 58)
        body = body[:2] + struct.pack("!H", _checksum(pseudo + body)) + body[4:]
        ip6 = struct.pack("!IHBB", 0x60000000, len(body), 58, 255) + target + src
        return src_mac + mac + struct.pack("!H", ETH_P_IPV6) + ip6 + body
    return None


class TokenBucket:
    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.last = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Responder:
    """A thread answering ARP/NDP for the dark block on one interface."""

    def __init__(self, iface: str, blocks: Nets, exclude: Nets = (), *,
                 rate_per_s: float = 20.0, burst: int = 40) -> None:
        self.iface = iface
        self.blocks = list(blocks)
        self.exclude = list(exclude)
        self.bucket = TokenBucket(rate_per_s, burst, time.monotonic())
        self.arp_replies = 0
        self.na_replies = 0
        self.rate_limited = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Protocol 0 receives nothing until bind: attach the filter first, then bind to the
        # interface, then drain, so no frame from another interface or from before the
        # filter is ever answered.
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        program = b"".join(struct.pack("HBBI", *ins) for ins in _BPF)
        self._prog = ctypes.create_string_buffer(program)
        fprog = struct.pack("HL", len(_BPF), ctypes.addressof(self._prog))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        self.sock.bind((iface, ETH_P_ALL))
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self.sock.recv(65536)
        self.sock.settimeout(0.5)
        self.mac: bytes = self.sock.getsockname()[4][:6]

    @classmethod
    def from_config(cls, cfg: Any) -> Responder:
        nets = [ipaddress.ip_network(b) for b in cfg.capture.darknet]
        ex = [ipaddress.ip_network(b) for b in cfg.capture.exclude]
        return cls(cfg.capture.interface, nets, ex, rate_per_s=cfg.responder.rate_per_s,
                   burst=cfg.responder.burst)

    def handle(self, frame: bytes) -> bool:
        reply = reply_for(frame, self.mac, self.blocks, self.exclude)
        if reply is None:
            return False
        with self._lock:
            if not self.bucket.take(time.monotonic()):
                self.rate_limited += 1
                return False
            if reply[12:14] == b"\x08\x06":
                self.arp_replies += 1
            else:
                self.na_replies += 1
        self.sock.send(reply)
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                frame, addr = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                log.warning("responder on %s: %s; retrying", self.iface, exc)
                time.sleep(1)
                continue
            if addr[2] == PACKET_OUTGOING:
                continue
            try:
                self.handle(frame)
            except OSError as exc:
                log.warning("responder on %s cannot send: %s", self.iface, exc)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="responder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.sock.close()

    def take_counters(self) -> dict[str, int]:
        """Replies and refusals since the last call (for a summary's health map)."""
        with self._lock:
            out = {"responder_arp_replies": self.arp_replies,
                   "responder_na_replies": self.na_replies,
                   "responder_rate_limited": self.rate_limited}
            self.arp_replies = self.na_replies = self.rate_limited = 0
        return out

"""Packet sender for the virtual board's `scanner` namespace (raw sockets, no scapy).

Run inside the namespace: `ip netns exec SCANNER python hil/send.py mix` prints a JSON
"truth" of exactly what it sent, in the units a summary counts: packets per
"proto/port" key, fingerprints, malformed frames.  `syn --port P --count N` sends plain
SYNs (for phases of a scenario).  IPv4 and IPv6 packets go through IPPROTO_RAW sockets
(the header is ours: spoofed sources, fixed IP IDs, Mirai's sequence numbers), so the
kernel still routes them and resolves the next hop (ARP/NDP in the onlink topology).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import struct
import sys
import time
from collections import Counter

DARK4 = "198.51.100."
DARK6 = "2001:db8:dead::"


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ip_id: int = 4242,
         ttl: int = 64, ihl: int = 5) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", (4 << 4) | ihl, 0, 20 + len(payload), ip_id, 0,
                         ttl, proto, 0, socket.inet_aton(src), socket.inet_aton(dst))
    return header + payload


def ipv6(src: str, dst: str, nh: int, payload: bytes, hlim: int = 64) -> bytes:
    return (struct.pack("!IHBB", 0x60000000, len(payload), nh, hlim)
            + socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            + payload)


def tcp(sport: int, dport: int, seq: int, flags: int = 0x02, window: int = 1024) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, window, 0, 0)


def udp(sport: int, dport: int, body: bytes = b"teiten") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body


def icmp_echo(ident: int, seq: int) -> bytes:
    return struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"ping"


class Sender:
    def __init__(self) -> None:
        self.s4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.s6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.ports: Counter[str] = Counter()
        self.fp: Counter[str] = Counter()
        self.malformed = 0
        self.packets = 0

    def v4(self, pkt: bytes, dst: str, key: str | None) -> None:
        self._send(self.s4, pkt, dst, key)

    def v6(self, pkt: bytes, dst: str, key: str | None) -> None:
        self._send(self.s6, pkt, dst, key)

    def _send(self, sock: socket.socket, pkt: bytes, dst: str, key: str | None) -> None:
        """Send one raw packet; count it under `key` (None: a malformed one)."""
        sock.sendto(pkt, (dst, 0))
        if key is None:
            self.malformed += 1
        else:
            self.ports[key] += 1
            self.packets += 1
        time.sleep(0.0005)

    def truth(self) -> dict[str, object]:
        return {"packets": self.packets, "ports": dict(self.ports),
                "fingerprints": dict(self.fp), "malformed": self.malformed}


def _not_masscan(dst: str, dport: int, seq: int, ip_id: int) -> None:
    d = int(ipaddress.IPv4Address(dst))
    assert ip_id != (d ^ dport ^ seq) & 0xFFFF, "probe would look like masscan"
    assert seq != d, "probe would look like mirai"


def mix(src: str, src6: str) -> dict[str, object]:
    s = Sender()
    k = 0
    for port in (22, 23, 80, 443, 445, 3389, 8080):
        for _ in range(3):
            k += 1
            dst = f"{DARK4}{10 + k}"
            seq, ip_id = 0x1000 + k, 4000 + k
            _not_masscan(dst, port, seq, ip_id)
            s.v4(ipv4(src, dst, 6, tcp(40000 + k, port, seq), ip_id=ip_id), dst, f"tcp/{port}")
    for port in (53, 123, 1900, 5060):
        for _ in range(2):
            k += 1
            dst = f"{DARK4}{100 + k}"
            s.v4(ipv4(f"203.0.113.{k}", dst, 17, udp(50000 + k, port), ip_id=5000 + k), dst,
                 f"udp/{port}")
    for i in range(4):
        dst = f"{DARK4}{200 + i}"
        s.v4(ipv4(src, dst, 1, icmp_echo(77, i), ip_id=6000 + i), dst, "icmp/8")
    for i in range(5):  # Mirai: sequence number = destination address
        dst = f"{DARK4}{150 + i}"
        seq = int(ipaddress.IPv4Address(dst))
        s.v4(ipv4("203.0.113.200", dst, 6, tcp(41000 + i, 23, seq), ip_id=7000 + i), dst,
             "tcp/23")
        s.fp["mirai"] += 1
    for i in range(5):  # ZMap: IP ID 54321, TTL 255, window 65535
        dst = f"{DARK4}{160 + i}"
        seq = 0x2000 + i
        _not_masscan(dst, 80, seq, 54321)
        s.v4(ipv4("203.0.113.201", dst, 6, tcp(42000 + i, 80, seq, window=65535),
                  ip_id=54321, ttl=255), dst, "tcp/80")
        s.fp["zmap"] += 1
    for port in (22, 80):
        for i in range(3):
            dst = f"{DARK6}{10 + i:x}"
            s.v6(ipv6(src6, dst, 6, tcp(43000 + i, port, 0x3000 + i)), dst, f"tcp/{port}")
    for i in range(2):
        dst = f"{DARK6}{20 + i:x}"
        s.v6(ipv6(src6, dst, 17, udp(44000 + i, 53)), dst, "udp/53")
    # malformed: transport headers cut short (the IP header itself is valid)
    for i in range(2):
        dst = f"{DARK4}{220 + i}"
        s.v4(ipv4(src, dst, 6, tcp(45000 + i, 80, 1)[:8], ip_id=8000 + i), dst, None)
    for i in range(2):
        dst = f"{DARK4}{230 + i}"
        s.v4(ipv4(src, dst, 17, b"\x01\x02\x03\x04", ip_id=8100 + i), dst, None)
    dst = f"{DARK6}ff"
    s.v6(ipv6(src6, dst, 6, b"\x00" * 10), dst, None)
    return s.truth()


def masscan(src: str, count: int = 6) -> dict[str, object]:
    """Masscan's probes: IP ID = (destination XOR destination port XOR sequence) & 0xFFFF."""
    s = Sender()
    for i in range(count):
        dst = f"{DARK4}{170 + i}"
        port, seq = (23, 80, 8080)[i % 3], 0x6000_0000 + 7919 * i
        ip_id = (int(ipaddress.IPv4Address(dst)) ^ port ^ seq) & 0xFFFF
        s.v4(ipv4("203.0.113.202", dst, 6, tcp(61000, port, seq), ip_id=ip_id), dst,
             f"tcp/{port}")
        s.fp["masscan"] += 1
    return s.truth()


def vlan(iface: str, dst_mac: str, port: int, count: int, qinq: bool) -> dict[str, object]:
    """802.1Q (or QinQ) tagged SYNs as Ethernet frames on a packet socket: a trunk port."""
    s = Sender()
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((iface, 0))
    src_mac = sock.getsockname()[4]
    tags = (struct.pack("!HH", 0x88A8, 200) + struct.pack("!HH", 0x8100, 100) if qinq
            else struct.pack("!HH", 0x8100, 100))
    for i in range(count):
        dst = f"{DARK4}{(i % 200) + 30}"
        seq, ip_id = 0x7000 + i, 12000 + i
        _not_masscan(dst, port, seq, ip_id)
        frame = (bytes.fromhex(dst_mac.replace(":", "")) + src_mac + tags
                 + struct.pack("!H", 0x0800)
                 + ipv4("192.0.2.1", dst, 6, tcp(47000 + i % 1000, port, seq), ip_id=ip_id))
        sock.send(frame)
        s.ports[f"tcp/{port}"] += 1
        s.packets += 1
        time.sleep(0.0005)
    return s.truth()


def syns(src: str, src6: str, port: int, count: int, v6: bool) -> dict[str, object]:
    s = Sender()
    for i in range(count):
        if v6:
            dst = f"{DARK6}{(i % 200) + 1:x}"
            s.v6(ipv6(src6, dst, 6, tcp(46000 + i % 1000, port, 0x4000 + i)), dst,
                 f"tcp/{port}")
        else:
            dst = f"{DARK4}{(i % 250) + 1}"
            seq, ip_id = 0x5000 + i, 9000 + i % 1000
            _not_masscan(dst, port, seq, ip_id)
            s.v4(ipv4(src, dst, 6, tcp(46000 + i % 1000, port, seq), ip_id=ip_id), dst,
                 f"tcp/{port}")
    return s.truth()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["mix", "syn", "masscan", "vlan"])
    p.add_argument("--src", default="192.0.2.1")
    p.add_argument("--src6", default="2001:db8:1::1")
    p.add_argument("--port", type=int, default=9999)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--v6", action="store_true")
    p.add_argument("--iface", default="sc0", help="vlan: the interface to send frames on")
    p.add_argument("--dst-mac", default="", help="vlan: the board's capture MAC")
    p.add_argument("--qinq", action="store_true", help="vlan: two tags (802.1ad + 802.1Q)")
    a = p.parse_args(argv)
    if a.what == "mix":
        truth = mix(a.src, a.src6)
    elif a.what == "masscan":
        truth = masscan(a.src, a.count)
    elif a.what == "vlan":
        truth = vlan(a.iface, a.dst_mac, a.port, a.count, a.qinq)
    else:
        truth = syns(a.src, a.src6, a.port, a.count, a.v6)
    json.dump(truth, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

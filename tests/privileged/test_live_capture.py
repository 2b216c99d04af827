"""Live capture with sensor.edges.pcap on a veth inside fresh network namespaces.

The sensor end of the veth (`if_a` in `ns_a`) captures; the peer namespace sends
hand-built Ethernet frames with python-libpcap's `send_packet` or an AF_PACKET socket,
from a subprocess run with `ip netns exec`.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from sensor.core.bpf import darknet_filter
from sensor.edges import _pcap
from sensor.edges.pcap import CaptureError, Frame, LiveSource, open_interface

pytestmark = pytest.mark.privileged

DARK = ["198.51.100.0/24"]


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def udp_frame(dst_mac: str, dst: str, sport: int, *, vlan: int | None = None,
              payload: int = 18) -> bytes:
    udp = struct.pack("!HHHH", sport, 53, 8 + payload, 0) + b"\x5a" * payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), sport, 0, 64, 17, 0,
                     bytes([203, 0, 113, 9]), bytes(int(x) for x in dst.split(".")))
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    return mac_bytes(dst_mac) + b"\x02\x00\x00\x00\x00\x09" + tag + b"\x08\x00" + ip + udp


def send_frames(pair, frames: list[bytes], *, via: str = "socket") -> None:  # type: ignore[no-untyped-def]
    """Send `frames` out of `if_b` from inside `ns_b` (a subprocess under `ip netns exec`)."""
    if via == "libpcap":
        code = textwrap.dedent(f"""
            import sys
            from pylibpcap import send_packet
            for line in sys.stdin:
                send_packet({pair.if_b!r}, bytes.fromhex(line.strip()))
        """)
    else:
        code = textwrap.dedent(f"""
            import socket, sys
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            s.bind(({pair.if_b!r}, 0))
            for line in sys.stdin:
                s.send(bytes.fromhex(line.strip()))
        """)
    pair.run("b", sys.executable, "-c", code, input="\n".join(f.hex() for f in frames) + "\n")


def collect(src: LiveSource, want: int, deadline_s: float = 5.0) -> list[Frame]:
    got: list[Frame] = []
    end = time.monotonic() + deadline_s
    while len(got) < want and time.monotonic() < end:
        got += src.next_batch(256)
    # one more read: nothing beyond `want` may arrive
    got += src.next_batch(256)
    return got


def test_idle_interface_returns_empty_within_timeout(netns_pair) -> None:  # type: ignore[no-untyped-def]
    for immediate in (False, True):
        with netns_pair.inside("a"):
            src = open_interface(netns_pair.if_a, darknet_filter(DARK), timeout_ms=200,
                                 immediate=immediate)
        with src:
            assert src.warning is None
            assert src.linktype == 1
            assert src.fileno() >= 0
            for _ in range(3):
                t = time.monotonic()
                assert src.next_batch(64) == []
                assert 0.15 <= time.monotonic() - t < 1.0


def test_filtered_capture_of_packets_from_the_peer(netns_pair) -> None:  # type: ignore[no-untyped-def]
    with netns_pair.inside("a"):
        src = open_interface(netns_pair.if_a, darknet_filter(DARK), timeout_ms=100,
                             buffer_size=4 << 20)
    dark = [udp_frame(netns_pair.mac_a, f"198.51.100.{i}", 1000 + i) for i in range(1, 21)]
    tagged = [udp_frame(netns_pair.mac_a, f"198.51.100.{i}", 2000 + i, vlan=42)
              for i in range(1, 6)]
    light = [udp_frame(netns_pair.mac_a, f"198.51.101.{i}", 3000 + i) for i in range(1, 11)]
    t0 = time.time_ns() // 1000
    with src:
        send_frames(netns_pair, dark + light + tagged, via="libpcap")
        got = collect(src, len(dark) + len(tagged))
        t1 = time.time_ns() // 1000
        sent = {f for f in dark + tagged}
        assert len(got) == len(dark) + len(tagged)
        assert {f.data for f in got} == sent  # nothing outside the block, none lost
        for f in got:
            assert f.wire_len == len(f.data)
            assert t0 - 1_000_000 <= f.ts_us <= t1 + 1_000_000  # microseconds since the epoch
        received, dropped, _ = src.stats()
        assert received >= len(got) and dropped == 0


def test_snaplen_truncates_but_wire_length_is_kept(netns_pair) -> None:  # type: ignore[no-untyped-def]
    with netns_pair.inside("a"):
        src = open_interface(netns_pair.if_a, "udp", snaplen=64, timeout_ms=100)
    with src:
        send_frames(netns_pair, [udp_frame(netns_pair.mac_a, "198.51.100.9", 5, payload=600)])
        (f,) = collect(src, 1)
        assert len(f.data) == 64 and f.wire_len == 14 + 20 + 8 + 600


def test_breakloop_from_another_thread_ends_a_long_wait(netns_pair) -> None:  # type: ignore[no-untyped-def]
    with netns_pair.inside("a"):
        h = _pcap.open_live(netns_pair.if_a, 256, True, 0, 0, False)  # 0: wait forever
    h.setfilter("udp")
    threading.Timer(0.3, h.breakloop).start()
    t = time.monotonic()
    assert h.next_batch(10) == []
    assert 0.2 < time.monotonic() - t < 3
    with pytest.raises(RuntimeError):  # closing while another thread reads is refused
        done = threading.Event()

        def reader() -> None:
            h.next_batch(10)
            done.set()

        th = threading.Thread(target=reader)
        th.start()
        time.sleep(0.2)
        try:
            h.close()
        finally:
            h.breakloop()
            th.join(3)
            assert done.is_set()
    h.close()


def test_nonblocking_read_returns_at_once(netns_pair) -> None:  # type: ignore[no-untyped-def]
    with netns_pair.inside("a"):
        h = _pcap.open_live(netns_pair.if_a, 256, True, 1000, 0, False)
    with h:
        h.set_nonblock(True)
        t = time.monotonic()
        assert h.next_batch(10) == []
        assert time.monotonic() - t < 0.1


def drops_for_buffer(pair, buffer_size: int, n: int) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    """Flood `n` frames at a capture that does not read; return (captured, ps_recv, ps_drop)."""
    with pair.inside("a"):
        h = _pcap.open_live(pair.if_a, 1514, True, 100, buffer_size, False)
    with h:
        frames = [udp_frame(pair.mac_a, "198.51.100.7", i % 60000, payload=1000)
                  for i in range(n)]
        send_frames(pair, frames)
        time.sleep(0.3)
        captured = 0
        while batch := h.next_batch(4096):
            captured += len(batch)
        received, dropped, _ = h.stats()
        return captured, received, dropped


def test_buffer_size_applies(netns_pair) -> None:  # type: ignore[no-untyped-def]
    n = 3000  # ~3 MB of 1 KB frames
    small = drops_for_buffer(netns_pair, 256 << 10, n)
    large = drops_for_buffer(netns_pair, 32 << 20, n)
    assert large[0] == n and large[2] == 0, large
    assert small[0] < n and small[2] > 0, small  # the small ring overflowed, and said so


def test_missing_interface_is_a_clear_error() -> None:
    with pytest.raises(CaptureError, match=r"no-such-if0.*ip link"):
        open_interface("no-such-if0")


def test_sender_subprocess_really_runs_in_the_peer_namespace(netns_pair) -> None:  # type: ignore[no-untyped-def]
    out = netns_pair.run("b", "ip", "-br", "link").stdout
    assert netns_pair.if_b in out and netns_pair.if_a not in out
    assert subprocess.run(["ip", "link", "show", netns_pair.if_a],
                          capture_output=True).returncode != 0  # not in the root namespace

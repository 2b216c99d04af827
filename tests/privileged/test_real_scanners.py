"""Debian's real masscan and zmap, captured by sensor.edges._pcap, classified by core.classify.

A scanner namespace (192.0.2.1/30, route for the darknet 198.51.100.0/24 via the sensor
side) sends through a veth into a sensor namespace (192.0.2.2/30, no forwarding, so the
probes are dropped there unanswered).  The sensor side captures with the darknet filter;
every probe must carry its scanner's fingerprint and not the other's.  The scanners aim
only at addresses inside these two namespaces.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from sensor.core.bpf import darknet_filter
from sensor.core.classify import FP_MASSCAN, FP_MIRAI, FP_ZMAP, fingerprint_bits
from sensor.core.decode import decode_frame
from sensor.core.records import TCP_ACK, TCP_SYN, PacketRecord
from sensor.edges import _pcap

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

DARK = "198.51.100.0/24"


@pytest.fixture
def scan_lab(netns_pair):  # type: ignore[no-untyped-def]
    """ns_b = scanner (192.0.2.1), ns_a = sensor (192.0.2.2); darknet routed to the sensor."""
    netns_pair.add_addr("b", "192.0.2.1/30")
    netns_pair.add_addr("a", "192.0.2.2/30")
    netns_pair.ip("b", "route", "add", DARK, "via", "192.0.2.2")
    netns_pair.run("a", "sysctl", "-qw", "net.ipv4.ip_forward=0")
    return netns_pair


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:  # never skip: a missing tool is a broken test machine
        pytest.fail(f"{tool} is not installed; `apt-get install {tool}` (make system-deps does)")
    return path


def capture_while(lab, cmd: list[str], timeout_s: float = 60) -> list[PacketRecord]:  # type: ignore[no-untyped-def]
    """Run `cmd` in the scanner namespace while capturing on the sensor side.

    masscan's receive thread blocks in a libpcap read and only notices the end of the scan
    when a frame arrives; on a veth with IPv6 off nothing ever does, so masscan would count
    "waiting -N-secs" for ever.  Once a second, a frame of the local-experimental ethertype
    0x88b5 is sent from the sensor side to wake it (not IP: it never reaches the capture).
    """
    with lab.inside("a"):
        h = _pcap.open_live(lab.if_a, 256, True, 100, 4 << 20, False)
        waker = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    waker.bind((lab.if_a, 0))
    wake_frame = b"\xff" * 6 + bytes.fromhex(lab.mac_a.replace(":", "")) + b"\x88\xb5" + bytes(46)
    next_wake = time.monotonic() + 1
    frames: list[tuple[int, int, bytes]] = []
    with h:
        h.setfilter(darknet_filter([DARK]))
        linktype = h.datalink()
        proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.ns_b, *cmd],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            frames += h.next_batch(1024) or []
            if time.monotonic() > next_wake:
                waker.send(wake_frame)
                next_wake += 1
        if proc.poll() is None:
            proc.kill()
            pytest.fail(f"{cmd[0]} did not finish in {timeout_s}s: {proc.communicate()[0]}")
        out = proc.communicate()[0]
        assert proc.returncode == 0, f"{cmd[0]} failed ({proc.returncode}):\n{out}"
        while batch := h.next_batch(1024):  # drain until one idle timeout
            frames += batch
        assert h.stats()[1] == 0  # no drops
    waker.close()
    records = []
    for ts, _, data in frames:
        rec = decode_frame(ts, linktype, data)
        assert isinstance(rec, PacketRecord), rec
        records.append(rec)
    return records


def addr(rec: PacketRecord) -> str:
    return str(ipaddress.IPv4Address(rec.dst))


def assert_syn_probes(records: list[PacketRecord], targets: set[tuple[str, int]]) -> None:
    assert {(addr(r), r.dport) for r in records} == targets
    for r in records:
        assert r.version == 4 and str(ipaddress.IPv4Address(r.src)) == "192.0.2.1"
        assert r.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN


def test_masscan_probes_classify_as_masscan(scan_lab) -> None:  # type: ignore[no-untyped-def]
    records = capture_while(scan_lab, [
        need("masscan"), "198.51.100.0/28", "-p23,80", "--rate", "1000",
        "--router-mac", scan_lab.mac_a, "--adapter", scan_lab.if_b,
        "--adapter-ip", "192.0.2.1", "--wait", "1",
    ])
    targets = {(f"198.51.100.{i}", p) for i in range(16) for p in (23, 80)}
    assert len(records) == len(targets)
    assert_syn_probes(records, targets)
    for r in records:
        bits = fingerprint_bits(r)
        assert bits & FP_MASSCAN, r
        assert not bits & (FP_ZMAP | FP_MIRAI), r


def test_zmap_probes_classify_as_zmap(scan_lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    empty_blacklist = tmp_path / "blacklist.conf"
    empty_blacklist.write_text("")  # zmap's default blacklist excludes documentation ranges
    records = capture_while(scan_lab, [
        need("zmap"), "-p", "23", "198.51.100.16/28", "-i", scan_lab.if_b,
        "-S", "192.0.2.1", "-G", scan_lab.mac_a, "-r", "1000", "-c", "1",
        "-b", str(empty_blacklist), "-o", "/dev/null",
    ])
    targets = {(f"198.51.100.{i}", 23) for i in range(16, 32)}
    assert len(records) == len(targets)
    assert_syn_probes(records, targets)
    for r in records:
        assert (r.ip_id, r.ttl, r.tcp_window) == (54321, 255, 65535)
        bits = fingerprint_bits(r)
        assert bits & FP_ZMAP, r
        assert not bits & (FP_MASSCAN | FP_MIRAI), r

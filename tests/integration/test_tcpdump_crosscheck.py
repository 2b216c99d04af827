"""Cross-check per-port packet counts against tcpdump reading the same file.

tcpdump is an independent decoder: if our per-port counts agree with its BPF counts on a
generated capture (with VLAN and QinQ tags), neither the filter nor the decoder drifted.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sensor.edges.replay import replay
from tests.integration.test_replay_truth import DARKNET, generate
from wire.summary import Summary


def tcpdump_count(pcap: Path, clause: str) -> int:
    f = f"(({' or '.join(('ip6' if ':' in b else 'ip') + ' dst net ' + b for b in DARKNET)})" \
        f" and {clause})"
    expr = f"{f} or (vlan and ({f} or (vlan and {f})))"
    out = subprocess.run(
        ["tcpdump", "-n", "-r", str(pcap), "-w", "/dev/null", "--count", expr],
        capture_output=True, text=True, check=True,
    )
    # "N packets" is printed on stdout with --count (tcpdump >= 4.99).
    for line in (out.stdout + out.stderr).splitlines():
        if line.endswith("packets"):
            return int(line.split()[0])
    raise AssertionError(f"no count in tcpdump output: {out.stdout!r} {out.stderr!r}")


def tcpdump_select(pcap: Path, out: Path, clause: str) -> Path:
    expr = f"{clause} or (vlan and ({clause} or (vlan and {clause})))"
    subprocess.run(["tcpdump", "-n", "-r", str(pcap), "-w", str(out), expr],
                   capture_output=True, check=True)
    return out


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Summary]]:
    """IPv4 frames of a generated capture (tcpdump's `tcp dst port` cannot walk IPv6
    extension headers, so an exact per-port comparison is made on IPv4)."""
    tmp = tmp_path_factory.mktemp("xcheck")
    full, _ = generate(tmp, "--packets", "20000", "--hours", "2", "--seed", "11")
    pcap = tcpdump_select(full, tmp / "v4.pcap", "ip")
    out: list[Summary] = []
    replay([str(pcap)], darknet=DARKNET, sensor_id="x", emit=out.append)
    return pcap, out


def ports_total(summaries: list[Summary], proto: int, port: int) -> int:
    return sum(r.packets for s in summaries for r in s.ports if (r.proto, r.port) == (proto, port))


@pytest.mark.parametrize(("proto", "port"), [(6, 23), (6, 80), (6, 22), (6, 445), (17, 53),
                                             (17, 123)])
def test_tcp_udp_ports_agree_with_tcpdump(capture: tuple[Path, list[Summary]], proto: int,
                                          port: int) -> None:
    pcap, summaries = capture
    name = {6: "tcp", 17: "udp"}[proto]
    # A non-first fragment has no ports: tcpdump's "tcp dst port" skips it too.
    # Malformed frames (truncated or bad TCP headers) are excluded on our side; tcpdump
    # still reads their port bytes, so compare only frames with a well-formed header.
    # Frames we report as malformed (bad version nibble, IHL or length) are left out too.
    clause = (
        f"{name} dst port {port} and (ip[6:2] & 0x1fff) == 0 and (ip[0] & 0xf0) == 0x40"
        " and (ip[0] & 0x0f) >= 5"
        # the IP length must hold the transport header: padding after it is not TCP/UDP
        f" and ip[2:2] >= (ip[0] & 0x0f) * 4 + {20 if proto == 6 else 8}"
    )
    if proto == 6:
        clause += " and tcp[12] >= 0x50"
    expected = tcpdump_count(pcap, clause)
    assert expected > 0
    assert ports_total(summaries, proto, port) == expected


def test_total_frames_agree_with_tcpdump(capture: tuple[Path, list[Summary]]) -> None:
    pcap, summaries = capture
    ours = sum(s.packets + s.malformed_total for s in summaries)
    assert ours == tcpdump_count(pcap, "(ip or ip6)")


def test_ipv6_ports_at_least_what_tcpdump_sees(tmp_path: Path) -> None:
    """On IPv6, tcpdump sees only TCP right after the fixed header; we also walk
    extension headers, so we count at least as many and exactly as many without them."""
    full, _ = generate(tmp_path, "--packets", "20000", "--hours", "2", "--seed", "12")
    v6 = tcpdump_select(full, tmp_path / "v6.pcap", "ip6")
    plain = tcpdump_select(v6, tmp_path / "plain.pcap", "(ip6 and ip6[6] == 6)")
    for pcap, exact in ((v6, False), (plain, True)):
        out: list[Summary] = []
        replay([str(pcap)], darknet=DARKNET, sensor_id="x", emit=out.append)
        for port in (23, 80, 22):
            want = tcpdump_count(
                pcap, f"tcp dst port {port} and ip6[40+12] >= 0x50 and ip6[4:2] >= 20"
                " and (ip6[0] & 0xf0) == 0x60"
            )
            got = ports_total(out, 6, port)
            assert (got == want) if exact else (got >= want), (pcap.name, port, got, want)

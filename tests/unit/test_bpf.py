"""sensor.bpf: the expression text, its validation, and what it matches when real libpcap
compiles it and runs it over real frames (untagged, 802.1Q, QinQ with a 0x88a8 outer tag,
IPv6) written to an offline capture."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor import _pcap
from sensor.bpf import base_filter, darknet_filter, parse_block

BLOCKS = ["198.51.100.0/24", "2001:db8:dead::/48"]


def ipv4(dst: str) -> tuple[int, bytes]:
    tcp = struct.pack("!HHIIBBHHH", 40000, 23, 1, 0, 0x50, 0x02, 1024, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0,
                     ipaddress.IPv4Address("203.0.113.9").packed,
                     ipaddress.IPv4Address(dst).packed)
    return 0x0800, ip + tcp


def ipv6(dst: str) -> tuple[int, bytes]:
    udp = struct.pack("!HHHH", 5353, 53, 8, 0)
    ip = struct.pack("!IHBB16s16s", 0x60000000, 8, 17, 64,
                     ipaddress.IPv6Address("2001:db8:1::9").packed,
                     ipaddress.IPv6Address(dst).packed)
    return 0x86DD, ip + udp


def frame(payload: tuple[int, bytes], tags: tuple[int, ...] = ()) -> bytes:
    """Ethernet frame; `tags` are outer-to-inner TPIDs (0x8100, 0x88a8) with VLAN ids 10, 11.."""
    ethertype, body = payload
    out = b"\x02" * 6 + b"\x04" * 6
    for i, tpid in enumerate(tags):
        out += struct.pack("!HH", tpid, 10 + i)
    return out + struct.pack("!H", ethertype) + body


def arp() -> bytes:
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, b"\x04" * 6,
                       bytes([198, 51, 100, 1]), b"\0" * 6, bytes([198, 51, 100, 7]))
    return frame((0x0806, body))


def matches(tmp_path: Path, expr: str, frames: list[bytes]) -> list[bool]:
    """Which of `frames` pass `expr`, as compiled and run by libpcap on an offline file.

    Frame i is stamped i+1 seconds, so the timestamps of what passes name the frames."""
    path = tmp_path / "f.pcap"
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, data in enumerate(frames):
            f.write(struct.pack("<IIII", i + 1, 0, len(data), len(data)) + data)
    with _pcap.open_offline(str(path)) as h:
        h.setfilter(expr)
        passed: set[int] = set()
        while (batch := h.next_batch(64)) is not None:
            passed |= {ts // 1_000_000 - 1 for ts, _, _ in batch}
    return [i in passed for i in range(len(frames))]


def test_expression_shape() -> None:
    f = "((ip dst net 198.51.100.0/24))"
    assert darknet_filter(["198.51.100.0/24"]) == f"{f} or (vlan and ({f} or (vlan and {f})))"
    assert base_filter(BLOCKS, ["198.51.100.128/25"], "tcp") == (
        "((ip dst net 198.51.100.0/24 or ip6 dst net 2001:db8:dead::/48)"
        " and not ip dst net 198.51.100.128/25 and (tcp))"
    )


@pytest.mark.parametrize(
    ("blocks", "exclude", "message"),
    [
        (["198.51.100.1/24"], [], "host bits set; write it as 198.51.100.0/24"),
        (["2001:db8::1/32"], [], "host bits set; write it as 2001:db8::/32"),
        (["198.51.100.0/33"], [], "not a CIDR block"),
        (["dark"], [], "'dark' is not a CIDR block"),
        ([], [], "no darknet blocks"),
        (["198.51.100.0/24"], ["203.0.113.0/25"], "not inside any darknet block"),
        (["198.51.100.0/24"], ["198.51.100.1/25"], "excluded block '198.51.100.1/25' has host"),
    ],
)
def test_validation(blocks: list[str], exclude: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        darknet_filter(blocks, exclude)


def test_one_string_is_not_a_list_of_blocks() -> None:
    with pytest.raises(TypeError):
        darknet_filter("198.51.100.0/24")


def test_parse_block_accepts_whitespace() -> None:
    assert str(parse_block(" 198.51.100.0/24 ")) == "198.51.100.0/24"


def test_untagged_8021q_qinq_and_ipv6_match_only_the_block(tmp_path: Path) -> None:
    expr = darknet_filter(BLOCKS, exclude=["198.51.100.128/25"])
    cases = [
        (frame(ipv4("198.51.100.7")), True),
        (frame(ipv4("198.51.101.7")), False),
        (frame(ipv4("198.51.100.200")), False),  # excluded sub-block
        (frame(ipv4("198.51.100.7"), (0x8100,)), True),
        (frame(ipv4("198.51.101.7"), (0x8100,)), False),
        (frame(ipv4("198.51.100.7"), (0x88A8, 0x8100)), True),
        (frame(ipv4("198.51.100.7"), (0x8100, 0x8100)), True),
        (frame(ipv4("198.51.101.7"), (0x88A8, 0x8100)), False),
        (frame(ipv4("198.51.100.200"), (0x88A8, 0x8100)), False),
        (frame(ipv6("2001:db8:dead::1")), True),
        (frame(ipv6("2001:db8:beef::1")), False),
        (frame(ipv6("2001:db8:dead:ffff::1"), (0x8100,)), True),
        (frame(ipv6("2001:db8:dead::1"), (0x88A8, 0x8100)), True),
        (arp(), False),  # ARP for a dark address is not an IP packet to the block
    ]
    assert matches(tmp_path, expr, [f for f, _ in cases]) == [want for _, want in cases]


def test_plain_dst_net_misses_tagged_frames_and_matches_arp(tmp_path: Path) -> None:
    """Why the expression has vlan terms and ip/ip6 qualifiers."""
    frames = [frame(ipv4("198.51.100.7")), frame(ipv4("198.51.100.7"), (0x8100,)), arp()]
    assert matches(tmp_path, "dst net 198.51.100.0/24", frames) == [True, False, True]


def test_extra_applies_at_every_tagging_depth(tmp_path: Path) -> None:
    expr = darknet_filter(["198.51.100.0/24"], extra="tcp")
    frames = [
        frame(ipv4("198.51.100.7")),
        frame(ipv4("198.51.100.7"), (0x8100,)),
        frame(ipv4("198.51.100.7"), (0x88A8, 0x8100)),
        frame(ipv6("2001:db8:dead::1")),  # UDP, outside the block anyway
    ]
    assert matches(tmp_path, expr, frames) == [True, True, True, False]


@settings(max_examples=40, deadline=None)
@given(
    host=st.integers(0, 2**32 - 1),
    prefix=st.integers(8, 30),
    depth=st.sampled_from([(), (0x8100,), (0x88A8, 0x8100)]),
)
def test_property_in_block_iff_match(
    tmp_path_factory: pytest.TempPathFactory, host: int, prefix: int, depth: tuple[int, ...]
) -> None:
    block = ipaddress.IPv4Network((host, prefix), strict=False)
    inside = block.network_address + (block.num_addresses - 1) // 2
    outside = block.broadcast_address + 1 if int(block.broadcast_address) < 2**32 - 1 \
        else block.network_address - 1
    frames = [frame(ipv4(str(inside)), depth), frame(ipv4(str(outside)), depth)]
    got = matches(tmp_path_factory.mktemp("p"), darknet_filter([str(block)]), frames)
    assert got == [True, False]

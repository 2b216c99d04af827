"""sensor.core.bpf: the expression text, its validation, and what it matches when real libpcap
compiles it and runs it over real frames (untagged, 802.1Q, QinQ with a 0x88a8 outer tag,
IPv6) written to an offline capture."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sensor.core.bpf import base_filter, check_extra, darknet_filter, parse_block
from sensor.edges import _pcap
from sensor.edges.filtercheck import filter_problems

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


# ------------------------------------------------------------------ extra_bpf cannot widen it
# Issue 11: the config check passed an extra_bpf that escapes its parentheses, one that
# shifts libpcap's offsets, and one that does not compile.

DARK4 = ipaddress.IPv4Network("198.51.100.0/24")
DARK6 = ipaddress.IPv6Network("2001:db8:dead::/48")
EXCLUDED = ipaddress.IPv4Network("198.51.100.128/25")
TAGS = (0x8100, 0x88A8, 0x9100)  # the TPIDs libpcap's `vlan` accepts


def in_darknet(data: bytes) -> bool:
    """Ground truth, generous: skip any number of tags, then an IP packet whose destination
    is in a dark block and not excluded.  A frame for which this is False is outside."""
    off = 12
    while off + 2 <= len(data) and int.from_bytes(data[off:off + 2], "big") in TAGS:
        off += 4
    if off + 2 > len(data):
        return False
    ethertype, ip = int.from_bytes(data[off:off + 2], "big"), off + 2
    if ethertype == 0x0800 and len(data) >= ip + 20:
        a4 = ipaddress.IPv4Address(data[ip + 16:ip + 20])
        return a4 in DARK4 and a4 not in EXCLUDED
    if ethertype == 0x86DD and len(data) >= ip + 40:
        return ipaddress.IPv6Address(data[ip + 24:ip + 40]) in DARK6
    return False


def unchecked_filter(extra: str) -> str:
    """The filter as sensor.core.bpf builds it, without check_extra: what today's main built."""
    f = (f"((ip dst net {DARK4} or ip6 dst net {DARK6}) and not ip dst net {EXCLUDED}"
         f" and ({extra}))")
    return f"{f} or (vlan and ({f} or (vlan and {f})))"


def bait_frame() -> bytes:
    """Untagged IPv4 to 203.0.113.9 (outside) whose other header bytes read, 4 or 8 bytes
    further on, as a VLAN tag, an IPv4 ethertype and a dark destination."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 23, int(ipaddress.IPv4Address("198.51.100.7")),
                      0, 0x50, 0x02, 1024, 0, 0)
    out = ipaddress.IPv4Address("203.0.113.9").packed
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0x8100, 1, 0x0800, 64, 6, 0, out, out)
    return frame((0x0800, ip + tcp))


def test_compile_filter_returns_the_program_or_libpcap_s_error() -> None:
    prog = _pcap.compile_filter("tcp", 1, 256)
    assert len(prog) > 1 and all(len(insn) == 4 for insn in prog)
    assert _pcap.compile_filter("1=1", 1, 256) == [(0x06, 0, 0, 256)]  # ret #snaplen
    with pytest.raises(_pcap.PcapError) as info:
        _pcap.compile_filter("tcp and", 1, 256)
    assert "syntax error" in info.value.message and "tcp and" in str(info.value)
    with pytest.raises(_pcap.PcapError, match="rejects all packets"):
        _pcap.compile_filter("ip and ip6", 1, 256)
    with pytest.raises(_pcap.PcapError):
        _pcap.compile_filter("vlan", 101, 256)  # no VLAN tags on raw IP (DLT_RAW)
    with pytest.raises(ValueError):
        _pcap.compile_filter("tcp", 1, 0)
    with pytest.raises(ValueError):
        _pcap.compile_filter("tcp\0 or 1=1", 1, 256)


def test_escaping_extra_matched_every_packet_and_is_now_refused(tmp_path: Path) -> None:
    escape = "1=1) or (1=1"
    outside = [frame(ipv4("203.0.113.9")), frame(ipv6("2001:db8:beef::1")), arp()]
    today = f"((ip dst net {DARK4}) and ({escape}))"  # main's base filter, untagged
    assert matches(tmp_path, today, outside) == [True, True, True]
    with pytest.raises(ValueError, match="closes a parenthesis it did not open"):
        darknet_filter([str(DARK4)], extra=escape)
    assert filter_problems([str(DARK4)], [], escape)[0][0] == "extra_bpf"


def test_vlan_in_extra_shifts_the_darknet_terms_and_is_refused(tmp_path: Path) -> None:
    """Why check_extra refuses vlan/mpls/pppoe/geneve: balanced and compiling, "(vlan or
    1=1)" moves the offsets of the tagged branches' darknet terms onto header bytes a
    sender chooses, and a packet to another address matches."""
    bait = bait_frame()
    assert not in_darknet(bait)
    assert matches(tmp_path, unchecked_filter("tcp"), [bait]) == [False]
    assert matches(tmp_path, unchecked_filter("(vlan or 1=1)"), [bait]) == [True]
    for extra in ("(vlan or 1=1)", "not vlan", "mpls or 1=1", "pppoes", "geneve",
                  "VLAN", "host ::1vlan"):
        with pytest.raises(ValueError, match="shifted offsets"):
            check_extra(extra)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("tcp and", "does not compile"),
        ("port httpx", "does not compile"),
        ("ip[0", "does not compile"),
        ("(tcp", "parenthesis(es) open"),
        ("tcp)", "did not open"),
        ("tcp\x01", "control character"),
        ("ip and ip6", "matches no packet at all"),
        ("1=0", "matches no packet at all"),
        ("ip6", f"hides every packet to darknet block {DARK4}"),
    ],
)
def test_filter_problems_name_extra_bpf(extra: str, words: str) -> None:
    found = filter_problems([str(DARK4), str(DARK6)], [str(EXCLUDED)], extra)
    assert found and found[0][0] == "extra_bpf" and words in found[0][1], found


def test_a_clause_that_hides_the_only_block_is_refused() -> None:
    found = filter_problems([str(DARK4)], [], "ip6")
    assert found == [("extra_bpf", "'ip6' hides every packet to the darknet: the sensor "
                      "would capture nothing; fix it or remove extra_bpf")]


@pytest.mark.parametrize("extra", ["", "tcp", "not udp port 5353", "tcp or udp",
                                   "not (src net 203.0.113.0/24 or udp port 123)",
                                   "greater 40 and (icmp or icmp6 or tcp or udp)"])
def test_filter_problems_pass_ordinary_clauses(extra: str) -> None:
    assert filter_problems([str(DARK4), str(DARK6)], [str(EXCLUDED)], extra) == []


_ATOMS = ["1=1", "1=0", "tcp", "udp", "ip", "ip6", "arp", "icmp6", "port 23", "len>0",
          "vlan", "vlan 10", "mpls", "pppoes", "geneve", "\\vlan", "ether[12:2]=0x8100",
          "ip[2:2]=0x8100", "net 0.0.0.0/0", "ip6 dst net ::/0", "dst net 203.0.113.0/24",
          "src net 198.51.100.0/24", "ether broadcast", "ether proto 0x86dd"]
# True whatever the packet, but every later offset shifted (refused by check_extra).
_SHIFTERS = ["(vlan or 1=1)", "(not vlan or 1=1)", "(mpls or 1=1)", "(1=1 or pppoes)",
             "(vlan and vlan or 1=1)", "(geneve or 1=1)", "(vlan 10 or tcp or 1=1)"]
_OPS = st.sampled_from(["and", "or", "&&", "||"])
_EXPR = st.recursive(
    st.sampled_from(_ATOMS + _SHIFTERS),
    lambda e: st.one_of(st.tuples(e, _OPS, e).map(" ".join), e.map("not {}".format),
                        e.map("({})".format)),
    max_leaves=5,
)
# Well-formed clauses, shifting tautologies, escapes ("a) or (b"), and token soup.
_EXTRA = st.one_of(
    _EXPR,
    st.sampled_from(_SHIFTERS),
    st.tuples(_EXPR, _OPS, _EXPR).map(lambda t: f"{t[0]}) {t[1]} ({t[2]}"),
    st.tuples(_EXPR, _OPS, _EXPR).map(lambda t: f"{t[0]}) {t[1]} {t[2]} and (1=1"),
    st.lists(st.sampled_from([*_ATOMS, "(", ")", "or", "and", "not", "1=1)", "(1=1"]),
             min_size=1, max_size=7).map(" ".join),
)
_BAIT = [b"\x81\x00", b"\x88\xa8", b"\x91\x00", b"\x08\x00", b"\x86\xdd", b"\x00\x00",
         b"\xff\xff", DARK4.network_address.packed, bytes([198, 51, 100, 7]),
         DARK6.network_address.packed, (DARK6.network_address + 7).packed]


@st.composite
def dark_frame(draw: st.DrawFn) -> bytes:
    """A frame the sensor must capture: to a dark address, untagged, 802.1Q or QinQ."""
    tags = tuple(draw(st.lists(st.sampled_from(TAGS), max_size=2)))
    if draw(st.booleans()):
        host = draw(st.integers(0, EXCLUDED.network_address.packed[3] - 1))
        return frame(ipv4(str(DARK4.network_address + host)), tags)
    return frame(ipv6(str(DARK6.network_address + draw(st.integers(0, 2**80 - 1)))), tags)


@st.composite
def adversarial_frame(draw: st.DrawFn) -> bytes:
    """Mostly frames outside the darknet that read as a dark frame from 4, 8 or 12 bytes
    further on (a term at a shifted offset finds what it looks for), laid with tags,
    ethertypes and dark addresses; also plain frames to other addresses."""
    kind = draw(st.sampled_from(["shifted", "shifted", "chunks", "plain"]))
    if kind == "shifted":
        dark = draw(dark_frame())
        shift = draw(st.sampled_from([4, 8, 12]))
        # an ethertype first (so the frame is not just one more tag deep), then bait
        first = draw(st.sampled_from([b"\x08\x00", b"\x86\xdd", b"\x08\x06"]))
        pad = draw(st.lists(st.sampled_from([b for b in _BAIT if len(b) == 2]),
                            min_size=shift // 2 - 1, max_size=shift // 2 - 1))
        return dark[:12] + first + b"".join(pad) + dark[12:]
    if kind == "chunks":
        tags = tuple(draw(st.lists(st.sampled_from(TAGS), max_size=3)))
        ethertype = draw(st.sampled_from([0x0800, 0x86DD, 0x0806, 0x8847, 0x8864, 0x1234]))
        body = b"".join(draw(st.lists(st.sampled_from(_BAIT), min_size=6, max_size=30)))
        return frame((ethertype, body), tags)
    return draw(st.sampled_from([frame(ipv4("203.0.113.9")), frame(ipv6("2001:db8:beef::1")),
                                 arp(), frame(ipv4("198.51.100.200"), (0x8100,)), bait_frame()]))


@settings(max_examples=400, deadline=None)
@given(extra=_EXTRA, frames=st.lists(adversarial_frame(), min_size=4, max_size=16))
@example(extra="1=1) or (1=1", frames=[frame(ipv4("203.0.113.9"))])
@example(extra="(vlan or 1=1)", frames=[frame(ipv4("203.0.113.9"))])
def test_no_packet_outside_the_darknet_matches_whatever_extra_says(
    tmp_path_factory: pytest.TempPathFactory, extra: str, frames: list[bytes]
) -> None:
    try:
        expr = darknet_filter([str(DARK4), str(DARK6)], [str(EXCLUDED)], extra)
        _pcap.compile_filter(expr, 1, 256)
    except (ValueError, _pcap.PcapError):
        return  # refused: the config check names extra_bpf and the daemon never gets it
    frames = [bait_frame(), *frames]
    got = matches(tmp_path_factory.mktemp("x"), expr, frames)
    wrong = [f.hex() for f, m in zip(frames, got, strict=True) if m and not in_darknet(f)]
    assert not wrong, (extra, wrong)

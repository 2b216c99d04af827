"""Build the sensor's BPF capture expression from the darknet's address blocks.

Pure: no I/O, no libpcap.  The expression matches IP packets
whose destination is inside one of the dark blocks (minus excluded sub-blocks), whether the frame is
untagged, 802.1Q-tagged or QinQ (two tags, e.g. 0x88a8 outer).  Terms are
`ip dst net X` / `ip6 dst net X`: a bare `dst net X` also matches ARP for dark
addresses (measured in tests/unit/test_bpf.py).  A plain `dst net X` does not match
tagged frames (see the field notes), and libpcap's
`vlan` keyword shifts the offsets of everything after it, so the base filter F is
repeated once per tagging depth:  F or (vlan and (F or (vlan and F))).

`extra` (the config's `extra_bpf`) can only narrow that: in every F the darknet term comes
first and the extra clause is ANDed after it inside its own parentheses, and `check_extra`
refuses the two ways a clause could reach outside them (measured in
tests/unit/test_bpf.py): parentheses that close what they did not open
("1=1) or (1=1"), and the libpcap keywords that move the offsets of everything after them
in the expression (`vlan`, `mpls`, `pppoes`, `geneve`, `vxlan`): "(vlan or 1=1)" makes the
darknet terms of the tagged branches read the wrong bytes, and match packets to other
addresses.  Whether the clause and the whole filter compile, and whether the clause leaves
every darknet block visible, is libpcap's call: `sensor.edges.filtercheck.filter_problems`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

# typing for type checkers only (start-up time: sensor/core/tuples.py says why).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# libpcap keywords after which every later term of the expression is read at other offsets
# (pcap-filter(7): "changes the decoding offsets for the remainder of the expression").
# Refused anywhere in an extra clause, even inside a longer word, rather than found by
# tokenising the way libpcap's lexer would (its rules for addresses, names and backslash
# escapes make word boundaries subtle; a false refusal is cheap, a miss widens the filter).
# `pppoe` also covers pppoed; `vxlan` is a keyword from libpcap 1.11.
SHIFTING_WORDS: Final = ("vlan", "mpls", "pppoe", "geneve", "vxlan")
_SHIFTING: Final = re.compile("|".join(SHIFTING_WORDS), re.IGNORECASE)
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def parse_block(block: str, what: str = "darknet block") -> IPNetwork:
    """Parse one CIDR block; reject typos and host bits with a message saying what to fix."""
    text = block.strip()
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(
                f"{what} {block!r} is not a CIDR block (expected e.g. 198.51.100.0/24 "
                f"or 2001:db8::/32): {exc}"
            ) from None
        raise ValueError(
            f"{what} {block!r} has host bits set; write it as {loose} "
            f"(or fix the prefix length)"
        ) from None


def check_extra(extra: str) -> None:
    """Refuse an extra clause that could reach outside its parentheses (ValueError saying
    what to fix).  Whether it compiles is libpcap's call: see `sensor.edges.filtercheck`."""
    if m := _CONTROL.search(extra):
        raise ValueError(f"{extra!r} contains the control character {m.group()!r} at "
                         f"position {m.start()}; write the expression on plain lines")
    depth = 0
    for i, ch in enumerate(extra):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(
                    f"{extra!r} closes a parenthesis it did not open (position {i}): it "
                    "would reach outside the darknet filter; balance the parentheses")
    if depth:
        raise ValueError(f"{extra!r} leaves {depth} parenthesis(es) open; balance them")
    if m := _SHIFTING.search(extra):
        raise ValueError(
            f"{extra!r} contains {m.group()!r}: libpcap reads every term after "
            "vlan/mpls/pppoe/geneve/vxlan at shifted offsets, so the darknet terms that "
            "follow would match other addresses; the filter already matches untagged, "
            "802.1Q and QinQ frames: drop it (and any host name containing those letters)")


def _net_term(net: IPNetwork) -> str:
    # `dst net X` alone also matches ARP/RARP whose target is in X (libpcap expands it to
    # ip, arp and rarp); the proto qualifier keeps ARP for dark addresses out of the capture.
    return f"{'ip' if net.version == 4 else 'ip6'} dst net {net}"


def base_filter(
    blocks: Sequence[str], exclude: Sequence[str] = (), extra: str | None = None
) -> str:
    """The untagged expression F: destination in a block, not in an excluded one, and `extra`."""
    if isinstance(blocks, str) or isinstance(exclude, str):
        raise TypeError("blocks and exclude are sequences of CIDR strings, not one string")
    if not blocks:
        raise ValueError("no darknet blocks given: the sensor needs at least one CIDR block")
    nets = [parse_block(b) for b in blocks]
    excluded = [parse_block(b, "excluded block") for b in exclude]
    for ex in excluded:
        if not any(ex.version == n.version and ex.subnet_of(n) for n in nets):  # type: ignore[arg-type]
            raise ValueError(
                f"excluded block {ex} is not inside any darknet block "
                f"({', '.join(str(n) for n in nets)}); remove it or fix the prefix"
            )
    # The darknet term first, then the exclusions, then the extra clause in its own
    # parentheses: checked first, so nothing in it can widen the expression.
    expr = "(" + " or ".join(_net_term(n) for n in nets) + ")"
    for ex in excluded:
        expr += f" and not {_net_term(ex)}"
    if extra is not None and extra.strip():
        check_extra(extra)
        expr += f" and ({extra.strip()})"
    return f"({expr})"


def darknet_filter(
    blocks: Sequence[str],
    exclude: Sequence[str] = (),
    extra: str | None = None,
    *,
    vlan: bool = True,
) -> str:
    """Capture expression for the dark blocks, matching untagged, 802.1Q and QinQ frames.

    >>> darknet_filter(["198.51.100.0/24"])
    '((ip dst net 198.51.100.0/24)) or (vlan and (((ip dst net 198.51.100.0/24)) or (vlan and ((ip dst net 198.51.100.0/24)))))'
    """  # noqa: E501
    f = base_filter(blocks, exclude, extra)
    if not vlan:  # only Ethernet carries tags; libpcap rejects `vlan` on other link types
        return f
    return f"{f} or (vlan and ({f} or (vlan and {f})))"

"""Build the sensor's BPF capture expression from the darknet's address blocks.

Pure: no I/O, no libpcap.  The expression matches IP packets whose destination is
inside one of the dark blocks (minus excluded sub-blocks), whether the frame is
untagged, 802.1Q-tagged or QinQ (two tags, e.g. 0x88a8 outer).  Terms are
`ip dst net X` / `ip6 dst net X`: a bare `dst net X` also matches ARP for dark
addresses (measured in tests/unit/test_bpf.py).  A plain `dst net X` does not match
tagged frames (see the field notes), and libpcap's
`vlan` keyword shifts the offsets of everything after it, so the base filter F is
repeated once per tagging depth:  F or (vlan and (F or (vlan and F))).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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
    expr = "(" + " or ".join(_net_term(n) for n in nets) + ")"
    for ex in excluded:
        expr += f" and not {_net_term(ex)}"
    if extra is not None and extra.strip():
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

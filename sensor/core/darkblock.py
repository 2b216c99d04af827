"""What counts as a dark block: the one rule `teiten config check` and `teiten firewall` share.

Pure: no I/O.  A darknet block is an address block that the Internet routes to the board and
that nobody uses, so everything sent to it is unsolicited.  A block is refused when it cannot
be that (loopback, link-local, multicast, "this network", limited broadcast, reserved space,
IPv4-mapped IPv6, protocol and service assignments), and when it is so large that it
covers a real part of the Internet: the board would capture (and `teiten firewall` would drop
the board's own traffic to) addresses that are in use.  Private-use space passes with a
warning: a lab may route it to the board, the Internet never does.  The documentation blocks
pass silently: the examples, the tests and the virtual board use them.

The reference is IANA's special-purpose address registries (RFC 6890):

- IPv4 Special-Purpose Address Registry,
  https://www.iana.org/assignments/iana-ipv4-special-registry/
- IPv6 Special-Purpose Address Registry,
  https://www.iana.org/assignments/iana-ipv6-special-registry/
- IPv4 and IPv6 Multicast Address Space Registries (224.0.0.0/4, ff00::/8), and the
  IPv6 Address Space registry (global unicast is 2000::/3; fc00::/7 and fe80::/10 aside,
  the rest of IPv6 is reserved by the IETF):
  https://www.iana.org/assignments/ipv6-address-space/

`SPECIAL` below is that table, each entry with the action Teiten takes.  The standard
library's `ipaddress` properties (`is_multicast`, `is_loopback`, `is_link_local`,
`is_unspecified`, `is_reserved`, `is_site_local`) are checked as well, as a second opinion.
docs/deployment.md ("Which blocks are dark") states the rule for operators.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

Action = Literal["refuse", "warn", "allow"]

# The largest dark block accepted: a /8 of IPv4 (1/256 of the space; the largest telescopes,
# e.g. UCSD's, watch a /8) and a /12 of IPv6 (an RIR-sized covering prefix, the largest
# announced for IPv6 telescope studies).  Anything larger covers address space in use.
LARGEST_PREFIX: Final = {4: 8, 6: 12}

_GLOBAL_UNICAST6: Final = ipaddress.IPv6Network("2000::/3")
_MAPPED6: Final = ipaddress.IPv6Network("::ffff:0:0/96")


@dataclass(frozen=True, slots=True)
class Special:
    """One special-purpose block: the registry's name for it, its RFC, what Teiten does."""

    net: IPNetwork
    name: str
    rfc: str
    action: Action

    def __str__(self) -> str:
        return f"{self.net} ({self.name}, {self.rfc})"


def _s(net: str, name: str, rfc: str, action: Action) -> Special:
    return Special(ipaddress.ip_network(net), name, rfc, action)


SPECIAL: Final[tuple[Special, ...]] = (
    # IANA IPv4 Special-Purpose Address Registry (and the IPv4 multicast registry)
    _s("0.0.0.0/8", '"this network"', "RFC 791", "refuse"),
    _s("10.0.0.0/8", "private-use", "RFC 1918", "warn"),
    _s("100.64.0.0/10", "shared address space (carrier-grade NAT)", "RFC 6598", "warn"),
    _s("127.0.0.0/8", "loopback", "RFC 1122", "refuse"),
    _s("169.254.0.0/16", "link-local", "RFC 3927", "refuse"),
    _s("172.16.0.0/12", "private-use", "RFC 1918", "warn"),
    _s("192.0.0.0/24", "IETF protocol assignments", "RFC 6890", "refuse"),
    _s("192.0.2.0/24", "documentation TEST-NET-1", "RFC 5737", "allow"),
    _s("192.31.196.0/24", "AS112-v4 DNS service", "RFC 7535", "refuse"),
    _s("192.52.193.0/24", "AMT relay anycast", "RFC 7450", "refuse"),
    _s("192.88.99.0/24", "deprecated 6to4 relay anycast", "RFC 7526", "refuse"),
    _s("192.168.0.0/16", "private-use", "RFC 1918", "warn"),
    _s("192.175.48.0/24", "AS112 direct delegation DNS service", "RFC 7534", "refuse"),
    _s("198.18.0.0/15", "benchmarking", "RFC 2544", "warn"),
    _s("198.51.100.0/24", "documentation TEST-NET-2", "RFC 5737", "allow"),
    _s("203.0.113.0/24", "documentation TEST-NET-3", "RFC 5737", "allow"),
    _s("224.0.0.0/4", "multicast", "RFC 5771", "refuse"),
    _s("240.0.0.0/4", "reserved", "RFC 1112", "refuse"),
    _s("255.255.255.255/32", "limited broadcast", "RFC 919", "refuse"),
    # IANA IPv6 Special-Purpose Address Registry (and the IPv6 multicast registry)
    _s("::/128", "unspecified address", "RFC 4291", "refuse"),
    _s("::1/128", "loopback", "RFC 4291", "refuse"),
    _s("::ffff:0:0/96", "IPv4-mapped addresses", "RFC 4291", "refuse"),
    _s("64:ff9b::/96", "IPv4/IPv6 translation (NAT64)", "RFC 6052", "refuse"),
    _s("64:ff9b:1::/48", "local-use IPv4/IPv6 translation", "RFC 8215", "refuse"),
    _s("100::/64", "discard-only", "RFC 6666", "refuse"),
    _s("2001::/23", "IETF protocol assignments", "RFC 2928", "refuse"),
    _s("2001::/32", "Teredo", "RFC 4380", "refuse"),
    _s("2001:2::/48", "benchmarking", "RFC 5180", "warn"),
    _s("2001:3::/32", "AMT", "RFC 7450", "refuse"),
    _s("2001:4:112::/48", "AS112-v6 DNS service", "RFC 7535", "refuse"),
    _s("2001:20::/28", "ORCHIDv2", "RFC 7343", "refuse"),
    _s("2001:db8::/32", "documentation", "RFC 3849", "allow"),
    _s("2002::/16", "6to4", "RFC 3056", "refuse"),
    _s("2620:4f:8000::/48", "AS112 direct delegation DNS service", "RFC 7534", "refuse"),
    _s("3fff::/20", "documentation", "RFC 9637", "allow"),
    _s("5f00::/16", "segment routing (SRv6) SIDs", "RFC 9602", "refuse"),
    _s("fc00::/7", "unique-local", "RFC 4193", "warn"),
    _s("fe80::/10", "link-local unicast", "RFC 4291", "refuse"),
    _s("ff00::/8", "multicast", "RFC 4291", "refuse"),
)

_WHY: Final[dict[Action, str]] = {
    "refuse": "not an unused block that the Internet routes to a board",
    "warn": "the Internet does not route it, so only a lab network that routes it to the "
            "board sends anything; fine for a lab, not for a telescope",
    "allow": "",
}

_STDLIB_KINDS: Final = ("is_multicast", "is_loopback", "is_link_local", "is_unspecified",
                        "is_reserved", "is_site_local")


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a block is not dark ("error": refused) or may not be ("warning")."""

    severity: Literal["error", "warning"]
    reason: str


def _fraction(net: IPNetwork) -> str:
    return "all" if net.prefixlen == 0 else f"1/{2 ** net.prefixlen:,}"


def judge(net: IPNetwork) -> list[Problem]:
    """The problems with `net` as a dark block: at most one error, else any warnings."""
    largest = LARGEST_PREFIX[net.version]
    space = f"IPv{net.version}"
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED6):
        v4 = net.network_address.ipv4_mapped
        return [Problem("error", f"{net} is IPv4-mapped IPv6 (::ffff:0:0/96, RFC 4291): no "
                        f"packet on the wire carries such a destination; write the IPv4 "
                        f"block {v4}/{net.prefixlen - 96} instead")]
    same = [s for s in SPECIAL if s.net.version == net.version]
    within = [s for s in same if net.subnet_of(s.net)]  # type: ignore[arg-type]
    home = max(within, key=lambda s: s.net.prefixlen) if within else None
    if home is not None and home.action == "refuse":
        return [Problem("error", f"{net} lies in {home}: {_WHY['refuse']}; "
                        "list the dark blocks you were assigned")]
    if net.prefixlen < largest:
        return [Problem("error", f"{net} covers {_fraction(net)} of the {space} address "
                        f"space, addresses in use included; a dark block is at most a "
                        f"/{largest}; list the unused blocks you were assigned")]
    if home is not None:
        if home.action == "warn":
            return [Problem("warning", f"{net} lies in {home}: {_WHY['warn']}")]
        return []  # documentation: passes, and nothing special sits inside it
    inside = [s for s in same if s.net.subnet_of(net)]  # type: ignore[arg-type]
    refused = [s for s in inside if s.action == "refuse"]
    if refused:
        return [Problem("error", f"{net} contains {', '.join(map(str, refused[:3]))}"
                        f"{' and more' if len(refused) > 3 else ''}: not dark; list only "
                        "the unused blocks the Internet routes to the board")]
    if (isinstance(net, ipaddress.IPv6Network) and not net.subnet_of(_GLOBAL_UNICAST6)):
        return [Problem("error", f"{net} is outside the IPv6 global unicast space 2000::/3 "
                        "(IANA IPv6 Address Space registry): reserved by the IETF, routed "
                        "nowhere; use the unused block the Internet routes to the board")]
    for kind in _STDLIB_KINDS:  # second opinion; the table above already covers these
        for end in (net.network_address, net.broadcast_address):
            if getattr(end, kind, False):
                return [Problem("error", f"{net}: {end} {kind.removeprefix('is_')} "
                                "(Python ipaddress); not a dark block")]
    return [Problem("warning", f"{net} contains {s}: {_WHY['warn']}")
            for s in inside if s.action == "warn"]


def fully_excluded(net: IPNetwork, exclude: Sequence[IPNetwork]) -> bool:
    """Whether the excluded blocks together cover all of `net` (nothing left to capture)."""
    if isinstance(net, ipaddress.IPv4Network):
        v4 = [e for e in exclude if isinstance(e, ipaddress.IPv4Network) and e.subnet_of(net)]
        return net in ipaddress.collapse_addresses(v4)
    v6 = [e for e in exclude if isinstance(e, ipaddress.IPv6Network) and e.subnet_of(net)]
    return net in ipaddress.collapse_addresses(v6)


def require_dark(blocks: Sequence[str]) -> list[IPNetwork]:
    """Parse CIDR strings and refuse any that is not a dark block (ValueError naming each)."""
    if isinstance(blocks, str):
        raise TypeError("blocks is a sequence of CIDR strings, not one string")
    nets = [ipaddress.ip_network(b.strip(), strict=True) for b in blocks]
    errors = [p.reason for n in nets for p in judge(n) if p.severity == "error"]
    if errors:
        raise ValueError("not a dark block: " + "; ".join(errors))
    return nets

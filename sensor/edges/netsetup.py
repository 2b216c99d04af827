"""Network set-up for the capture interface (pyroute2), run as root before capture starts.

Strategy: the capture process needs only CAP_NET_RAW, so everything that changes the
network runs once, earlier, as root (`teiten netsetup`, the oneshot
`teiten-netsetup.service`).  Per topology (docs/deployment.md):

| step                                    | routed | dedicated | onlink |
|-----------------------------------------|--------|-----------|--------|
| link up                                 | yes    | yes       | yes    |
| promiscuous                             | no     | yes       | yes    |
| IPv6 off on the capture interface       | no     | yes       | if it has no address |
| accept_ra = 0, autoconf = 0             | no     | yes       | if it has no address |
| arp_ignore (kernel ARP replies)         | 1      | 8 (never) | 1 (8 without address) |
| no redirects, no source routes          | yes    | yes       | yes    |
| IPv4/IPv6 forwarding off (board-wide)   | yes    | yes       | yes    |
| blackhole route for every dark block    | yes    | yes       | yes    |

Forwarding off matters most: a packet for a non-local address is then dropped silently by
the kernel, where a forwarding board would route it or answer with ICMP.  After the changes
`netsetup` runs the doctor's checks (sensor/edges/doctor.py) and fails if any of them fails.

The blackhole routes close the last hole, measured on the virtual board: a board with IPv6
on the capture interface and no route for a dark IPv6 block answers every packet to it with
an ICMPv6 "no route" error, forwarding or not.  A blackhole route drops silently, and
capture (AF_PACKET) sees the packet before routing does.

`Sysctl` reads and writes `/proc/sys/net/...` of the current network namespace; it is a
class so tests can point it at another tree.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sensor.edges.config import SensorConfig


class NetSetupError(Exception):
    """A set-up step failed; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Action:
    what: str
    changed: bool
    detail: str = ""


class Sysctl:
    def __init__(self, root: Path = Path("/proc/sys")) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / key.replace(".", "/")

    def get(self, key: str) -> str | None:
        try:
            return self.path(key).read_text().strip()
        except OSError:
            return None

    def set(self, key: str, value: str) -> bool:
        """Set `key`; True if it changed.  Raises NetSetupError when it cannot."""
        if self.get(key) == value:
            return False
        try:
            self.path(key).write_text(value)
        except OSError as exc:
            raise NetSetupError(
                f"cannot set {key} = {value}: {exc.strerror}; run `teiten netsetup` as root"
            ) from None
        return True


def iface_key(family: int, iface: str, name: str) -> str:
    # interface names may contain dots (VLAN subinterfaces): sysctl paths keep them
    return f"net/ipv{family}/conf/{iface}/{name}"


def has_address(ipr: Any, index: int) -> tuple[bool, bool]:
    """(has IPv4 address, has a global IPv6 address) on the link `index`."""
    v4 = v6 = False
    for a in ipr.get_addr(index=index):
        if a["family"] == 2:
            v4 = True
        elif a["family"] == 10 and a.get("scope", 0) == 0:
            v6 = True
    return v4, v6


def has_blackhole(ipr: Any, block: str) -> bool:
    """True if a blackhole route in the main table covers all of `block`."""
    net = ipaddress.ip_network(block)
    for r in ipr.get_routes(family=10 if net.version == 6 else 2, table=254):
        if r["type"] != 6:  # RTN_BLACKHOLE
            continue
        dst = r.get_attr("RTA_DST") or ("::" if net.version == 6 else "0.0.0.0")
        route = ipaddress.ip_network(f"{dst}/{r['dst_len']}", strict=False)
        if route.version == net.version and net.subnet_of(route):  # type: ignore[arg-type]
            return True
    return False


def plan_sysctls(topology: str, iface: str, *, has_v4: bool, has_v6: bool) -> list[tuple[str, str]]:
    """The sysctl values the topology needs (pure, so it is unit-testable)."""
    out = [
        ("net/ipv4/ip_forward", "0"),
        ("net/ipv6/conf/all/forwarding", "0"),
        (iface_key(4, iface, "send_redirects"), "0"),
        (iface_key(4, iface, "accept_redirects"), "0"),
        (iface_key(4, iface, "accept_source_route"), "0"),
        (iface_key(4, iface, "proxy_arp"), "0"),
        (iface_key(4, iface, "arp_announce"), "2"),
        ("net/ipv4/conf/all/send_redirects", "0"),
    ]
    silent = topology == "dedicated" or (topology == "onlink" and not has_v4)
    out.append((iface_key(4, iface, "arp_ignore"), "8" if silent else "1"))
    if topology == "dedicated" or (topology == "onlink" and not has_v6):
        out += [
            (iface_key(6, iface, "accept_ra"), "0"),
            (iface_key(6, iface, "autoconf"), "0"),
            (iface_key(6, iface, "router_solicitations"), "0"),
            (iface_key(6, iface, "disable_ipv6"), "1"),
        ]
    else:
        out += [(iface_key(6, iface, "accept_redirects"), "0"),
                (iface_key(6, iface, "proxy_ndp"), "0")]
    return out


def setup(cfg: SensorConfig, *, sysctl: Sysctl | None = None) -> list[Action]:
    """Bring the capture interface into the topology's state; returns what was done."""
    # pyroute2 costs about 0.5 s to import: only the commands that touch netlink pay it.
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    sc = sysctl or Sysctl()
    iface = cfg.capture.interface
    actions: list[Action] = []
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=iface)
        if not found:
            raise NetSetupError(
                f"interface {iface!r} not found; check [capture] interface (`ip link` lists "
                "the interfaces; a USB adapter may need plugging in)"
            )
        index = found[0]
        # The silent state before the link comes up: an interface brought up with IPv6 on
        # sends an MLD report at once (seen on the SD image's capture NIC under qemu).
        has_v4, has_v6 = has_address(ipr, index)
        for key, value in plan_sysctls(cfg.topology, iface, has_v4=has_v4, has_v6=has_v6):
            actions.append(Action(f"{key.replace('/', '.')} = {value}", sc.set(key, value)))
        link = ipr.get_links(index)[0]
        flags = int(link["flags"])
        try:
            if not flags & 1:  # IFF_UP
                ipr.link("set", index=index, state="up")
                actions.append(Action("link up", True))
            else:
                actions.append(Action("link up", False))
            want_promisc = cfg.topology != "routed"
            if bool(flags & 0x100) != want_promisc:  # IFF_PROMISC
                ipr.link("set", index=index, flags=0x100 if want_promisc else 0, change=0x100)
                actions.append(Action(f"promiscuous {'on' if want_promisc else 'off'}", True))
        except NetlinkError as exc:
            if exc.code == errno.EPERM:
                raise NetSetupError(f"changing {iface}: permission denied; run as root") from None
            raise NetSetupError(f"changing {iface}: {exc}") from None
        for block in cfg.capture.darknet:
            family = 10 if ":" in block else 2
            if has_blackhole(ipr, block):
                actions.append(Action(f"blackhole route {block}", False))
                continue
            try:
                ipr.route("replace", dst=block, type="blackhole", family=family)
            except NetlinkError as exc:
                raise NetSetupError(f"adding blackhole route {block}: {exc}") from None
            actions.append(Action(f"blackhole route {block}", True))
    return actions

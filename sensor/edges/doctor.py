"""`teiten doctor`: look at the board and say, in a field technician's words, what is wrong.

Strategy: every check is a small function that returns `Check`s with a stable `code`
(tests create each fault and look for its code), what was found, and what to do.  Checks
read only: links, addresses and routes through pyroute2, sysctls from `/proc/sys` of the
current network namespace, the files the config names, the kernel's clock state, and a
capture handle opened and closed at once.  `teiten netsetup` runs the same checks after
changing things, so "set-up done" and "doctor happy" mean the same thing.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import asdict, dataclass
from typing import Any

from sensor.edges.clock import Clock, SystemClock
from sensor.edges.config import SensorConfig
from sensor.edges.netsetup import Sysctl, has_address, has_blackhole, plan_sysctls

OK = "ok"
WARN = "warning"
ERROR = "error"


@dataclass(frozen=True, slots=True)
class Check:
    code: str
    severity: str  # ok | warning | error
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


NETSETUP = "run `sudo teiten netsetup --config /etc/teiten/sensor.toml` (or `sudo systemctl " \
    "restart teiten-netsetup`), then `teiten doctor` again"

# sysctl name -> (code, what it means when wrong)
_SYSCTL_MEANING = {
    "ip_forward": ("forwarding", "IPv4 forwarding is on: the board would route dark-block "
                   "packets onwards or answer them with ICMP errors"),
    "forwarding": ("forwarding", "IPv6 forwarding is on: the board would route dark-block "
                   "packets onwards or answer them with ICMPv6 errors"),
    "send_redirects": ("redirects", "ICMP redirects are enabled: the board could answer "
                       "traffic with redirect messages"),
    "accept_redirects": ("redirects", "the board accepts ICMP redirects on the capture "
                         "interface"),
    "accept_source_route": ("redirects", "source-routed packets are accepted"),
    "proxy_arp": ("proxy_arp", "proxy ARP is on: the kernel may answer ARP for addresses "
                  "that are not its own, dark ones included"),
    "proxy_ndp": ("proxy_arp", "proxy NDP is on: the kernel may answer neighbour "
                  "solicitations for dark IPv6 addresses"),
    "arp_ignore": ("arp_ignore", "the kernel answers ARP more widely than the topology "
                   "allows"),
    "arp_announce": ("arp_announce", "ARP announcements may use an address of another "
                     "interface"),
    "accept_ra": ("ipv6_autoconf", "the capture interface accepts IPv6 router "
                  "advertisements: it could configure an address and start talking"),
    "autoconf": ("ipv6_autoconf", "IPv6 autoconfiguration is on for the capture interface"),
    "router_solicitations": ("ipv6_autoconf", "the capture interface sends IPv6 router "
                             "solicitations"),
    "disable_ipv6": ("ipv6_autoconf", "IPv6 is on for an interface that must stay silent: "
                     "it has a link-local address and would send neighbour discovery"),
}


def _blocks(cfg: SensorConfig) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(b) for b in cfg.capture.darknet]


def check_network(cfg: SensorConfig, sysctl: Sysctl | None = None) -> list[Check]:
    # pyroute2 costs about 0.5 s to import: only the network checks pay it.
    from pyroute2 import IPRoute

    sc = sysctl or Sysctl()
    iface = cfg.capture.interface
    out: list[Check] = []
    blocks = _blocks(cfg)
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=iface)
        if not found:
            names = sorted(str(link.get("ifname")) for link in ipr.get_links())
            return [Check("interface_missing", ERROR,
                          f"capture interface {iface} does not exist (this board has: "
                          f"{', '.join(names)})",
                          "check the cable or USB adapter, and [capture] interface in "
                          "sensor.toml")]
        index = found[0]
        link = ipr.get_links(index)[0]
        flags = int(link["flags"])
        oper = str(link.get("operstate") or "UNKNOWN")
        if not flags & 1:
            out.append(Check("interface_down", ERROR,
                             f"{iface} is switched off (administratively down)", NETSETUP))
        elif oper not in ("UP", "UNKNOWN"):
            out.append(Check("no_carrier", ERROR,
                             f"{iface} is on but has no link ({oper.lower()}): no cable, a "
                             "dead switch port, or the peer is down",
                             "check the cable and the switch port's link light; the sensor "
                             "resumes by itself when the link returns"))
        else:
            out.append(Check("interface", OK, f"{iface} is up with a link"))
        promisc = bool(flags & 0x100)
        if cfg.topology != "routed" and not promisc:
            out.append(Check("promisc_off", ERROR,
                             f"{iface} is not in promiscuous mode: frames for other MAC "
                             "addresses never reach the sensor", NETSETUP))
        has_v4, has_v6 = has_address(ipr, index)
        any_v6 = any(a["family"] == 10 for a in ipr.get_addr(index=index))
        if cfg.topology == "dedicated" and (has_v4 or any_v6):
            addrs = ", ".join(str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(index=index))
            out.append(Check("address_on_silent_interface", ERROR,
                             f"{iface} has addresses ({addrs}) but in the dedicated topology "
                             "it must have none: with an address the board talks on it",
                             f"remove them (`sudo ip addr flush dev {iface}`) and switch "
                             "off DHCP for this interface"))
        if cfg.topology == "routed" and not has_v4 and not has_v6:
            out.append(Check("routed_without_address", WARN,
                             f"{iface} has no address, but in the routed topology the "
                             "router sends the dark block to this board's address",
                             "check DHCP or the static address of the board"))
        for a in ipr.get_addr():
            addr = ipaddress.ip_address(str(a.get_attr("IFA_ADDRESS")).split("%")[0])
            if any(addr in n for n in blocks):
                name = ipr.get_links(a["index"])[0].get_attr("IFLA_IFNAME")
                out.append(Check("block_address_assigned", ERROR,
                                 f"dark address {addr} is configured on {name}: the board "
                                 "answers packets sent to it",
                                 f"remove it: `sudo ip addr del {addr}/{a['prefixlen']} dev "
                                 f"{name}`; a dark address must belong to nobody"))
        for family in (2, 10):
            for r in ipr.get_routes(family=family, table=255):
                dst = r.get_attr("RTA_DST")
                if dst is None or r["type"] != 2:  # RTN_LOCAL
                    continue
                net = ipaddress.ip_network(f"{dst}/{r['dst_len']}", strict=False)
                if any(net.version == b.version and net.overlaps(b) for b in blocks):
                    out.append(Check("block_route_local", ERROR,
                                     f"a local route covers dark addresses ({net}): the "
                                     "board treats them as its own and answers",
                                     f"remove it: `sudo ip route del local {net} table "
                                     "local`, and find what added it"))
        for block in cfg.capture.darknet:
            if not has_blackhole(ipr, block):
                out.append(Check("no_blackhole_route", ERROR,
                                 f"no blackhole route for {block}: the board answers packets "
                                 "for dark addresses it has no route to with ICMP 'no route' "
                                 "errors (IPv6 does, even with forwarding off)", NETSETUP))
    plan = plan_sysctls(cfg.topology, iface, has_v4=has_v4, has_v6=has_v6)
    bad_codes: set[str] = set()
    for key, want in plan:
        have = sc.get(key)
        if have is None:
            continue
        name = key.rsplit("/", 1)[1]
        if name == "arp_ignore":
            have_all = sc.get("net/ipv4/conf/all/arp_ignore") or "0"
            effective = max(int(have), int(have_all))
            wrong = effective < int(want)
            have = str(effective)
        elif name in ("proxy_arp",):
            wrong = have != "0" or (sc.get("net/ipv4/conf/all/proxy_arp") or "0") != "0"
        else:
            wrong = have != want
        if wrong:
            code, meaning = _SYSCTL_MEANING.get(name, (name, f"{name} is {have}"))
            bad_codes.add(code)
            out.append(Check(code, ERROR if code not in ("arp_announce", "redirects") else WARN,
                             f"{meaning} ({key.replace('/', '.')} = {have}, want {want})",
                             NETSETUP))
    if not bad_codes:
        out.append(Check("kernel_settings", OK,
                         "kernel settings keep the board silent for the dark block"))
    return out


def check_files(cfg: SensorConfig) -> list[Check]:
    out = [Check("files", ERROR, f"{f.field}: {f.reason}") for f in cfg.check_files()]
    for i, c in enumerate(out):
        if c.message.startswith("sensor.key"):
            out[i] = Check("key_missing", ERROR, c.message,
                           "make the signing key with `teiten keygen --key PATH` as user "
                           "teiten, and enrol its public key at the central site")
        elif c.message.startswith("uplink"):
            out[i] = Check("tls_files_missing", ERROR, c.message,
                           "see docs/central.md: `teiten csr`, then install the certificate")
    spool = cfg.spool.path
    probe = spool if spool.exists() else spool.parent
    if spool.exists() and not spool.is_dir():
        out.append(Check("spool_unwritable", ERROR,
                         f"spool path {spool} exists but is not a directory",
                         "move the file away or fix [spool] path"))
    elif not probe.exists() or not os.access(probe, os.W_OK | os.X_OK):
        out.append(Check("spool_unwritable", ERROR,
                         f"spool directory {spool} cannot be written by this user",
                         f"`sudo install -d -o teiten -g teiten -m 0770 {spool}`"))
    if not out:
        out.append(Check("files", OK, "signing key and spool are in place"))
    return out


def check_clock(clock: Clock | None = None) -> list[Check]:
    c = clock or SystemClock()
    sync = c.synchronized()
    if sync is False:
        return [Check("clock_unsynchronized", WARN,
                      "the clock is not synchronised (no NTP yet; the board has no "
                      "real-time clock): summaries will be marked unsynchronised",
                      "make sure the board reaches an NTP server (UDP 123) and that "
                      "systemd-timesyncd or chrony runs")]
    if sync is None:
        return [Check("clock_unknown", WARN, "cannot tell whether the clock is synchronised")]
    return [Check("clock", OK, "the clock is synchronised")]


def check_capture(cfg: SensorConfig) -> list[Check]:
    # a live capture handle is opened only when the caller asks for the capture check
    from sensor.edges.pcap import CaptureError, FilterError, open_interface

    try:
        src = open_interface(cfg.capture.interface, cfg.bpf(), snaplen=cfg.capture.snaplen,
                             timeout_ms=50, buffer_size=1 << 20,
                             promisc=cfg.topology != "routed")
    except FilterError as exc:
        return [Check("capture_filter", ERROR, str(exc), "fix [capture] extra_bpf")]
    except CaptureError as exc:
        low = exc.detail.lower()
        if "permission" in low or "not permitted" in low:
            return [Check("capture_permission", ERROR,
                          "this user may not capture packets (no CAP_NET_RAW)",
                          "run the sensor through its unit (teiten-sensor.service gives "
                          "CAP_NET_RAW), or run the doctor with sudo")]
        return [Check("capture_open", ERROR, str(exc), "see the other findings first")]
    src.close()
    return [Check("capture", OK, f"capture on {cfg.capture.interface} opens with the "
                  "darknet filter")]


def diagnose(cfg: SensorConfig, *, sysctl: Sysctl | None = None, clock: Clock | None = None,
             capture: bool = True) -> list[Check]:
    out = check_network(cfg, sysctl) + check_files(cfg) + check_clock(clock)
    if capture and not any(c.code == "interface_missing" for c in out):
        out += check_capture(cfg)
    return out


def render(checks: list[Check], header: str = "") -> str:
    lines = [header] if header else []
    label = {OK: "OK  ", WARN: "WARN", ERROR: "FAIL"}
    for c in checks:
        lines.append(f"  {label.get(c.severity, c.severity)}  {c.message}")
        if c.fix and c.severity != OK:
            lines.append(f"        what to do: {c.fix}")
    errors = sum(c.severity == ERROR for c in checks)
    warns = sum(c.severity == WARN for c in checks)
    lines.append(f"{errors} problem(s), {warns} warning(s)" if errors or warns
                 else "all good")
    return "\n".join(lines)


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {"ok": not any(c.severity == ERROR for c in checks),
            "checks": [c.as_dict() for c in checks]}


__all__ = ["Check", "as_json", "diagnose", "render"]

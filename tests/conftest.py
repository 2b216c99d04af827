"""Shared fixtures.

- A test marked `privileged` FAILS (never skips) when not run as root: CI runs as root and a
  skipped test there is a failure, so a silent skip would hide a broken setup.
- `netns_pair`: two fresh network namespaces joined by a veth pair (pyroute2), unique names
  per test, IPv6 off (no neighbour-discovery noise in captures), always cleaned up.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

# Shared fixture modules imported by test modules: let pytest rewrite their asserts too.
pytest.register_assert_rewrite("mqtt_fixtures")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("privileged") is not None and os.geteuid() != 0:
        pytest.fail(
            f"{item.nodeid} is marked privileged and needs root (network namespaces, live "
            "capture, a real broker, strace). Run the suite as root, e.g. `sudo make test`, "
            "or deselect it with `-m 'not privileged'` for a quick local loop.",
            pytrace=False,
        )


_counter = itertools.count()


@dataclass
class NetnsPair:
    """Namespaces `ns_a`/`ns_b`; veth ends `if_a` (in ns_a) and `if_b` (in ns_b)."""

    ns_a: str
    ns_b: str
    if_a: str
    if_b: str
    mac_a: str
    mac_b: str

    def ns(self, side: str) -> str:
        return {"a": self.ns_a, "b": self.ns_b}[side]

    def run(
        self, side: str, *cmd: str, check: bool = True, timeout: float = 60, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside namespace `side` ("a" or "b") with `ip netns exec`."""
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(side), *cmd],
            check=check,
            timeout=timeout,
            capture_output=True,
            text=True,
            **kw,  # type: ignore[arg-type]
        )

    def ip(self, side: str, *args: str) -> None:
        subprocess.run(["ip", "-n", self.ns(side), *args], check=True, capture_output=True)

    def add_addr(self, side: str, cidr: str) -> None:
        from pyroute2 import NetNS

        iface = self.if_a if side == "a" else self.if_b
        address, prefix = cidr.split("/")
        with NetNS(self.ns(side)) as ipr:
            index = ipr.link_lookup(ifname=iface)[0]
            ipr.addr("add", index=index, address=address, prefixlen=int(prefix))

    @contextmanager
    def inside(self, side: str) -> Iterator[None]:
        """Switch this process into namespace `side` for the block (open sockets there).

        A socket or pcap handle opened inside stays bound to that namespace afterwards.
        """
        from pyroute2 import netns

        netns.pushns(self.ns(side))
        try:
            yield
        finally:
            netns.popns()


def _make_pair(tag: str) -> NetnsPair:
    from pyroute2 import IPRoute, NetNS, netns

    n = f"{os.getpid() % 100000}{next(_counter)}"
    pair = NetnsPair(
        ns_a=f"teiten-{tag}a-{n}", ns_b=f"teiten-{tag}b-{n}",
        if_a=f"tv{n}a"[:15], if_b=f"tv{n}b"[:15], mac_a="", mac_b="",
    )
    netns.create(pair.ns_a)
    netns.create(pair.ns_b)
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=pair.if_a, kind="veth",
                     peer={"ifname": pair.if_b, "net_ns_fd": pair.ns_b})
            index = ipr.link_lookup(ifname=pair.if_a)[0]
            ipr.link("set", index=index, net_ns_fd=pair.ns_a)
        macs = {}
        for ns, iface in ((pair.ns_a, pair.if_a), (pair.ns_b, pair.if_b)):
            subprocess.run(
                ["ip", "netns", "exec", ns, "sysctl", "-qw",
                 "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
                check=True, capture_output=True,
            )
            with NetNS(ns) as ipr:
                for name in ("lo", iface):
                    ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
                link = ipr.get_links(ipr.link_lookup(ifname=iface)[0])[0]
                macs[iface] = str(link.get("address"))
        pair.mac_a, pair.mac_b = macs[pair.if_a], macs[pair.if_b]
    except BaseException:
        _remove_pair(pair)
        raise
    return pair


def _remove_pair(pair: NetnsPair) -> None:
    from pyroute2 import netns

    for ns in (pair.ns_a, pair.ns_b):
        if ns in netns.listnetns():
            netns.remove(ns)


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    """Two namespaces joined by a veth pair, links up, IPv6 off, no addresses yet."""
    if os.geteuid() != 0:
        pytest.fail("netns_pair needs root; mark the test @pytest.mark.privileged", pytrace=False)
    pair = _make_pair("t")
    try:
        yield pair
    finally:
        _remove_pair(pair)


# ---- capture files written byte by byte (for tests of the capture edge and the filter) ----

Packet = tuple[int, int, bytes]  # (ts_us, wire_len, captured bytes)


def write_pcap(path: str | os.PathLike[str], packets: list[Packet], *, linktype: int = 1,
               snaplen: int = 65535, nanosecond: bool = False) -> None:
    """Classic little-endian pcap; `nanosecond` writes the 0xa1b23c4d variant."""
    import struct

    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))
        for ts_us, wire_len, data in packets:
            frac = (ts_us % 1_000_000) * (1000 if nanosecond else 1)
            f.write(struct.pack("<IIII", ts_us // 1_000_000, frac, len(data), wire_len))
            f.write(data)


def write_pcapng(path: str | os.PathLike[str], packets: list[Packet], *, linktype: int = 1,
                 snaplen: int = 65535) -> None:
    """pcapng: one section header, one interface (microsecond resolution), enhanced packets."""
    import struct

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        n = 12 + len(body)
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    with open(path, "wb") as f:
        f.write(block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
        f.write(block(1, struct.pack("<HHI", linktype, 0, snaplen)))
        for ts_us, wire_len, data in packets:
            body = struct.pack("<IIIII", 0, ts_us >> 32, ts_us & 0xFFFFFFFF, len(data), wire_len)
            f.write(block(6, body + data))


class PcapWriter:
    """Fixture object: `.pcap(path, packets, ...)` and `.pcapng(path, packets, ...)`."""

    pcap = staticmethod(write_pcap)
    pcapng = staticmethod(write_pcapng)


@pytest.fixture
def pcap_writer() -> PcapWriter:
    """Write capture files byte by byte: pcap_writer.pcap(path, [(ts_us, wire_len, data)])."""
    return PcapWriter()

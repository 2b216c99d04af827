"""sensor.core.darkblock: which blocks may be a darknet, by the IANA special-purpose
registries (the table in sensor/core/darkblock.py), a size bound, and Python's ipaddress
as a second opinion."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.core.darkblock import SPECIAL, fully_excluded, judge, require_dark


def verdict(block: str) -> str:
    found = judge(ipaddress.ip_network(block))
    return found[0].severity if found else "ok"


@pytest.mark.parametrize("block", [
    "0.0.0.0/0", "::/0", "0.0.0.0/1", "128.0.0.0/1", "8000::/1", "::/1", "32.0.0.0/3",
    "2000::/3", "44.0.0.0/7",                            # larger than the /8 (/12) bound
    "127.0.0.0/8", "127.0.0.1/32", "::1/128", "::/128",   # loopback, unspecified
    "224.0.0.0/4", "224.0.0.0/24", "239.255.0.0/16", "ff00::/8", "ff02::1/128",  # multicast
    "169.254.0.0/16", "169.254.1.0/24", "fe80::/10", "fe80::/64",               # link-local
    "255.255.255.255/32", "240.0.0.0/4", "250.0.0.0/8",   # limited broadcast, reserved
    "0.0.0.0/8", "0.0.0.0/32", "0.1.2.0/24",              # "this network"
    "::ffff:0:0/96", "::ffff:198.51.100.0/120",           # IPv4-mapped
    "192.0.0.0/24", "192.0.0.8/32", "192.0.0.0/16", "192.31.196.0/24", "192.175.48.0/24",
    "192.88.99.0/24", "192.52.193.0/24", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64",
    "2001::/32", "2001:4:112::/48", "2002::/16", "5f00::/16", "2620:4f:8000::/48",
    "4000::/16", "fec0::/10", "::/8",                     # IPv6 outside global unicast
])
def test_refused(block: str) -> None:
    assert verdict(block) == "error"


@pytest.mark.parametrize("block", [
    "10.0.0.0/8", "10.20.0.0/16", "172.16.0.0/12", "172.20.1.0/24", "192.168.0.0/16",
    "100.64.0.0/10", "198.18.0.0/15", "fd00::/12", "fd12:3456::/48", "2001:2::/48",
    "172.0.0.0/8",                                        # contains private-use space
])
def test_private_and_unrouted_blocks_warn(block: str) -> None:
    assert verdict(block) == "warning"


@pytest.mark.parametrize("block", [
    "192.0.2.0/24", "198.51.100.0/24", "198.51.100.0/28", "203.0.113.0/24",
    "2001:db8::/32", "2001:db8:dead::/48", "3fff::/20", "3fff:0:1::/48",  # documentation
    "44.0.0.0/8", "23.128.0.0/10", "2400::/12", "2a00:1450::/32",       # ordinary unicast
])
def test_documentation_and_unicast_blocks_pass(block: str) -> None:
    assert verdict(block) == "ok"


def test_messages_name_the_registry_entry_and_what_to_do() -> None:
    (p,) = judge(ipaddress.ip_network("127.0.0.0/8"))
    assert "127.0.0.0/8 (loopback, RFC 1122)" in p.reason and "assigned" in p.reason
    (p,) = judge(ipaddress.ip_network("::ffff:203.0.113.0/120"))
    assert "write the IPv4 block 203.0.113.0/24 instead" in p.reason
    (p,) = judge(ipaddress.ip_network("0.0.0.0/0"))
    assert "all of the IPv4 address space" in p.reason and "at most a /8" in p.reason


def test_every_table_entry_gets_its_own_action() -> None:
    for s in SPECIAL:
        got = verdict(str(s.net))
        want = {"refuse": {"error"}, "warn": {"warning", "error"}, "allow": {"ok"}}[s.action]
        assert got in want, (s, got)
        if s.action == "warn" and got == "error":
            assert "at most a" in judge(s.net)[0].reason  # only too large (fc00::/7)


_STDLIB = ("is_multicast", "is_loopback", "is_link_local", "is_unspecified", "is_reserved")


def _net(version: int, value: int, prefix: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    bits = 32 if version == 4 else 128
    return ipaddress.ip_network((value % (1 << bits), prefix % (bits + 1)), strict=False)


@st.composite
def networks(draw: st.DrawFn) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    version = draw(st.sampled_from([4, 6]))
    bits = 32 if version == 4 else 128
    near = draw(st.sampled_from(SPECIAL)).net if draw(st.booleans()) else None
    if near is not None and near.version == version:  # around a special block
        value = int(near.network_address) + draw(st.integers(-(1 << 8), 1 << 8))
        prefix = near.prefixlen + draw(st.integers(-4, 8))
    else:
        value, prefix = draw(st.integers(0, (1 << bits) - 1)), draw(st.integers(0, bits))
    return _net(version, value, max(prefix, 0))


@settings(max_examples=2000, deadline=None)
@given(net=networks())
def test_python_ipaddress_agrees(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    """A second opinion: what the standard library calls multicast, loopback, link-local,
    unspecified or reserved is refused; what passes clean, it calls global (documentation
    blocks aside, which pass on purpose)."""
    found = judge(net)
    ends = (net.network_address, net.broadcast_address)
    if any(getattr(a, k) for a in ends for k in _STDLIB):
        assert found and found[0].severity == "error", net
    if not found:
        docs = [s.net for s in SPECIAL if s.action == "allow" and s.net.version == net.version]
        assert net.is_global or any(net.subnet_of(d) for d in docs), net  # type: ignore[arg-type]


def test_fully_excluded() -> None:
    n = ipaddress.ip_network("198.51.100.0/24")
    halves = [ipaddress.ip_network("198.51.100.0/25"), ipaddress.ip_network("198.51.100.128/25")]
    assert fully_excluded(n, [n]) and fully_excluded(n, halves)
    assert not fully_excluded(n, halves[:1])
    assert not fully_excluded(n, [ipaddress.ip_network("2001:db8::/32")])


def test_require_dark() -> None:
    assert [str(n) for n in require_dark(["198.51.100.0/24", "10.1.0.0/16"])] == [
        "198.51.100.0/24", "10.1.0.0/16"]  # a warning is not a refusal
    with pytest.raises(ValueError, match=r"not a dark block: 0\.0\.0\.0/0 covers all"):
        require_dark(["198.51.100.0/24", "0.0.0.0/0"])
    with pytest.raises(TypeError):
        require_dark("198.51.100.0/24")

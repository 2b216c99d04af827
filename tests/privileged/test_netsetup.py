"""`teiten netsetup` (pyroute2) brings the capture interface into each topology's state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.privileged.test_doctor import Sensor, codes

pytestmark = pytest.mark.privileged


@pytest.mark.parametrize("topology", ["routed", "dedicated", "onlink"])
def test_netsetup_fixes_a_neglected_interface(netns_pair: Any, tmp_path: Path,
                                              topology: str) -> None:
    s = Sensor(netns_pair, tmp_path, topology)
    netns_pair.ip("a", "link", "set", s.iface, "down")
    s.sysctl("net.ipv4.ip_forward=1")
    s.sysctl(f"net.ipv4.conf.{s.iface}.proxy_arp=1")
    before = s.doctor()
    assert {"interface_down", "forwarding", "proxy_arp", "no_blackhole_route"} <= codes(
        before, "error")
    r = s.cli("netsetup", "--json", "--config", str(s.config))
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    changed = {a["what"] for a in doc["actions"] if a["changed"]}
    assert "link up" in changed and "net.ipv4.ip_forward = 0" in changed
    assert "blackhole route 198.51.100.0/24" in changed
    assert "blackhole route 2001:db8:dead::/48" in changed
    assert doc["ok"]
    after = s.doctor()
    assert after["ok"], after
    link = json.loads(netns_pair.run("a", "ip", "-j", "-d", "link", "show", s.iface).stdout)[0]
    promisc = link.get("promiscuity", 0) > 0
    assert promisc == (topology != "routed")
    ignore = netns_pair.run("a", "sysctl", "-n", f"net.ipv4.conf.{s.iface}.arp_ignore").stdout
    assert ignore.strip() == ("1" if topology != "dedicated" else "8")
    # idempotent: a second run changes nothing
    again = json.loads(s.cli("netsetup", "--json", "--config", str(s.config)).stdout)
    assert not [a for a in again["actions"] if a["changed"]]


def test_netsetup_names_a_missing_interface(netns_pair: Any, tmp_path: Path) -> None:
    s = Sensor(netns_pair, tmp_path, "dedicated")
    s.write(iface="usb9")
    r = s.cli("netsetup", "--config", str(s.config))
    assert r.returncode == 1
    assert "usb9" in r.stderr and "ip link" in r.stderr


def test_netsetup_refuses_an_invalid_config(netns_pair: Any, tmp_path: Path) -> None:
    s = Sensor(netns_pair, tmp_path, "routed")
    s.config.write_text(s.config.read_text().replace('"routed"', '"bridged"'))
    r = s.cli("netsetup", "--config", str(s.config))
    assert r.returncode == 2 and "sensor.topology" in r.stderr

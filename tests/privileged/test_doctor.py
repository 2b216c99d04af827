"""`teiten doctor`: every finding has a test that creates its fault on a real interface.

Each test prepares a healthy sensor namespace (`teiten netsetup`), checks the doctor is
happy, creates one fault, and expects the finding's code, in words with a fix.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sensor.edges.clock import OffsetClock
from sensor.edges.doctor import check_clock

pytestmark = pytest.mark.privileged
REPO = Path(__file__).resolve().parents[2]


class Sensor:
    def __init__(self, pair: Any, root: Path, topology: str) -> None:
        from sensor.edges.keys import generate_key

        self.pair = pair
        self.root = root
        self.topology = topology
        self.iface = pair.if_a
        self.key = root / "sensor.key"
        generate_key(self.key)
        self.spool = root / "spool"
        self.spool.mkdir()
        self.config = root / "sensor.toml"
        self.write()
        if topology != "dedicated":
            pair.add_addr("a", "192.0.2.2/30")

    def write(self, iface: str | None = None, extra: str = "") -> None:
        self.config.write_text(
            f'[sensor]\nid = "doc-01"\ntopology = "{self.topology}"\nkey = "{self.key}"\n'
            f'[capture]\ninterface = "{iface or self.iface}"\n'
            'darknet = ["198.51.100.0/24", "2001:db8:dead::/48"]\n'
            f'[spool]\npath = "{self.spool}"\n{extra}')

    def cli(self, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        pre = ["ip", "netns", "exec", self.pair.ns_a]
        if user:
            pre += ["setpriv", "--reuid", user, "--regid", user, "--init-groups",
                    "--inh-caps", "-all", "--bounding-set", "-all", "--"]
        return subprocess.run([*pre, sys.executable, "-m", "sensor.cli", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(REPO)})

    def doctor(self, user: str | None = None) -> dict[str, Any]:
        r = self.cli("doctor", "--json", "--config", str(self.config), user=user)
        assert r.stdout, r.stderr
        doc: dict[str, Any] = json.loads(r.stdout)
        doc["rc"] = r.returncode
        return doc

    def netsetup(self) -> None:
        r = self.cli("netsetup", "--config", str(self.config))
        assert r.returncode == 0, r.stdout + r.stderr

    def sysctl(self, setting: str) -> None:
        self.pair.run("a", "sysctl", "-qw", setting)


def codes(doc: dict[str, Any], severity: str | None = None) -> set[str]:
    return {c["code"] for c in doc["checks"] if severity is None or c["severity"] == severity}


def _healthy(pair: Any, tmp_path: Path, topology: str) -> Sensor:
    s = Sensor(pair, tmp_path, topology)
    s.netsetup()
    doc = s.doctor()
    assert doc["ok"] and doc["rc"] == 0, doc
    assert not codes(doc, "error")
    return s


Fault = Callable[[Sensor], None]
FAULTS: list[tuple[str, str, Fault]] = [
    ("interface_missing", "routed", lambda s: s.write(iface="nosuch0")),
    ("interface_down", "routed", lambda s: s.pair.ip("a", "link", "set", s.iface, "down")),
    ("no_carrier", "routed", lambda s: s.pair.ip("b", "link", "set", s.pair.if_b, "down")),
    ("promisc_off", "dedicated",
     lambda s: s.pair.ip("a", "link", "set", s.iface, "promisc", "off")),
    ("address_on_silent_interface", "dedicated",
     lambda s: s.pair.ip("a", "addr", "add", "192.0.2.9/24", "dev", s.iface)),
    ("block_address_assigned", "routed",
     lambda s: s.pair.ip("a", "addr", "add", "198.51.100.5/32", "dev", s.iface)),
    ("block_route_local", "routed",
     lambda s: s.pair.ip("a", "route", "add", "local", "198.51.100.64/26", "dev", "lo",
                         "table", "local")),
    ("no_blackhole_route", "routed",
     lambda s: s.pair.ip("a", "route", "del", "blackhole", "198.51.100.0/24")),
    ("forwarding", "routed", lambda s: s.sysctl("net.ipv4.ip_forward=1")),
    ("proxy_arp", "routed", lambda s: s.sysctl(f"net.ipv4.conf.{s.iface}.proxy_arp=1")),
    ("arp_ignore", "dedicated", lambda s: s.sysctl(f"net.ipv4.conf.{s.iface}.arp_ignore=0")),
    ("ipv6_autoconf", "dedicated",
     lambda s: s.sysctl(f"net.ipv6.conf.{s.iface}.disable_ipv6=0")),
    ("redirects", "routed", lambda s: s.sysctl(f"net.ipv4.conf.{s.iface}.send_redirects=1")),
    ("key_missing", "routed", lambda s: s.key.unlink()),
    ("spool_unwritable", "routed",
     lambda s: (s.spool.rmdir(), s.spool.write_text("not a directory"))),  # type: ignore[func-returns-value]
    ("tls_files_missing", "routed",
     lambda s: s.write(extra=f'[uplink]\nhost = "127.0.0.1"\nca = "{s.root}/ca.crt"\n'
                             f'cert = "{s.root}/c.crt"\nkey = "{s.root}/tls.key"\n')),
    ("config_invalid", "routed", lambda s: s.config.write_text("[sensor]\ntopology = 3\n")),
    ("routed_without_address", "routed",
     lambda s: s.pair.ip("a", "addr", "flush", "dev", s.iface)),
]


@pytest.mark.parametrize(("code", "topology", "fault"), FAULTS, ids=[f[0] for f in FAULTS])
def test_doctor_finds_the_fault(netns_pair: Any, tmp_path: Path, code: str, topology: str,
                                fault: Fault) -> None:
    s = _healthy(netns_pair, tmp_path, topology)
    fault(s)
    doc = s.doctor()
    found = [c for c in doc["checks"] if c["code"] == code]
    assert found, f"expected {code}; got {codes(doc)}"
    c = found[0]
    assert c["severity"] in ("error", "warning") and c["message"]
    if c["severity"] == "error":
        assert doc["rc"] == 1 and not doc["ok"]
        assert c["fix"], "every problem says what to do"


def test_doctor_text_output_is_for_people(netns_pair: Any, tmp_path: Path) -> None:
    s = _healthy(netns_pair, tmp_path, "routed")
    s.sysctl("net.ipv4.ip_forward=1")
    r = s.cli("doctor", "--config", str(s.config))
    assert r.returncode == 1
    assert "FAIL" in r.stdout and "IPv4 forwarding is on" in r.stdout
    assert "what to do:" in r.stdout and "teiten netsetup" in r.stdout


def test_capture_permission_without_cap_net_raw(netns_pair: Any) -> None:
    from hil.virtual_board import ensure_user

    uid, gid = ensure_user()
    root = Path(tempfile.mkdtemp(prefix="teiten-doctor-"))  # pytest's tmp is 0700
    try:
        os.chmod(root, 0o755)
        s = _healthy(netns_pair, root, "routed")
        for p in (s.key, s.spool, s.config):
            os.chown(p, uid, gid)
        doc = s.doctor(user=pwd.getpwuid(uid).pw_name)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert "capture_permission" in codes(doc, "error"), doc
    fix = next(c["fix"] for c in doc["checks"] if c["code"] == "capture_permission")
    assert "CAP_NET_RAW" in fix


def test_unsynchronised_clock_is_a_warning() -> None:
    (c,) = check_clock(OffsetClock(sync=False))
    assert c.code == "clock_unsynchronized" and c.severity == "warning" and "NTP" in c.fix
    (ok,) = check_clock(OffsetClock(sync=True))
    assert ok.severity == "ok"

"""`--target netns`: the virtual board, a namespace of its own on the test host.

    scanner ns ── sc0 ═veth═ cap0 ── sensor ns ── up0 ═veth═ br0 ── central ns

The board's shell is `ip netns exec SENSOR sh -c ...`; it runs the project's files from the
checkout with the test host's interpreter.  A power cut is SIGKILL to every process in the
board's namespace; the boot after it runs netsetup and the programs again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

from hil.targets.base import REPO, BoardPaths, Target

if TYPE_CHECKING:
    from hil.lab import Lab


class NetnsTarget(Target):
    kind = "netns"

    def __init__(self, spec: str = "netns") -> None:
        super().__init__(spec)
        self.python = sys.executable
        self.pythonpath = str(REPO)
        self.ns = ""

    def sh(self, script: str, *, stdin: bytes | None = None, timeout: float = 60,
           check: bool = True) -> subprocess.CompletedProcess[bytes]:
        r = subprocess.run(["ip", "netns", "exec", self.ns, "sh", "-c", script], input=stdin,
                           capture_output=True, timeout=timeout, cwd="/")
        if check and r.returncode != 0:
            raise subprocess.CalledProcessError(r.returncode, script, r.stdout, r.stderr)
        return r

    def wire(self, lab: Lab) -> None:
        from hil.lab import CENTRAL_V4, SENSOR_UP_V4, SENSOR_V4, SENSOR_V6, sh

        self.ns = f"thil-{lab.n}-board"
        self.paths = BoardPaths(str(lab.dir / "board"), "cap0")
        self.uplink_host = CENTRAL_V4
        sh("ip", "netns", "add", self.ns)
        lab.extra_ns.append(self.ns)
        ip = ("ip", "-n", self.ns)
        sh(*ip, "link", "set", "lo", "up")
        sh("ip", "link", "add", "sc0", "netns", lab.scanner_ns, "type", "veth",
           "peer", "name", "cap0", "netns", self.ns)
        assert lab.central_ns is not None
        sh("ip", "link", "add", "up0", "netns", self.ns, "type", "veth",
           "peer", "name", "br0", "netns", lab.central_ns)
        for ns, dev in ((self.ns, "up0"), (lab.central_ns, "br0")):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
        sh(*ip, "addr", "add", f"{SENSOR_UP_V4}/30", "dev", "up0")
        sh("ip", "-n", lab.central_ns, "addr", "add", f"{CENTRAL_V4}/30", "dev", "br0")
        sh(*ip, "link", "set", "up0", "up")
        sh("ip", "-n", lab.central_ns, "link", "set", "br0", "up")
        wire_capture(self, lab.topology, SENSOR_V4, SENSOR_V6)
        self.capture_mac = json.loads(sh(*ip, "-j", "link", "show", "cap0").stdout)[0]["address"]

    def power_cut(self) -> None:
        # every process of the board at once (the lab's processes live elsewhere)
        pids = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True,
                              text=True).stdout.split()
        if pids:
            subprocess.run(["kill", "-9", *pids], capture_output=True)
        self._wait(lambda: not subprocess.run(["ip", "netns", "pids", self.ns],
                                              capture_output=True, text=True).stdout.strip(),
                   10, "every process of the board to die")

    def boot(self) -> None:
        self.sh("rm -f " + " ".join(f"{self.paths.root}/{n}.pid" for n in
                                    ("sensor", "uplink", "notify")))

    def describe(self) -> str:
        return "git " + git_commit()

    def down(self) -> None:
        # every process of the board (the notify listener too): deleting a namespace
        # does not end what runs in it
        if self.ns:
            self.power_cut()


def wire_capture(t: Target, topology: str, v4: str, v6: str, dev: str = "cap0") -> None:
    """The board's capture interface before netsetup, per topology (what the cable and the
    operator's address plan give it)."""
    if topology == "routed":
        t.sh(f"sysctl -qw net.ipv6.conf.{dev}.accept_dad=0 net.ipv6.conf.{dev}.accept_ra=0 "
             f"net.ipv6.conf.{dev}.router_solicitations=0 && ip addr add {v4}/30 dev {dev} "
             f"&& ip addr add {v6}/64 dev {dev} nodad")
    else:
        # no address, no IPv6: a link-local address must not even appear before netsetup
        t.sh(f"sysctl -qw net.ipv6.conf.{dev}.disable_ipv6=1")


def git_commit() -> str:
    r = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                       capture_output=True, text=True)
    return r.stdout.strip() or "?"

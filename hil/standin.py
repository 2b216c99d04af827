"""An SSH stand-in for a lab Pi (CI): Debian's sshd inside a network namespace of its own.

    scanner ns ── thilNcp ═veth═ cap0 ─┐
                (the test host's        thil-N-pi ns: sshd on 10.77.0.1:22 (keys only),
                 capture port)          the sensor deployed over SSH from the project's files
    central ns ── mg0 ═veth═ eth0 ─────┘  (the Pi's management port)

The ssh target drives it exactly as it drives a Pi: `ssh root@10.77.0.1` (from the central
namespace, which plays the lab's management network), the capture port moved into the
scanner namespace, deploy/start/kill/read over SSH.  Its power cut is a real hook:

    python -m hil.standin power-cycle --ns thil-N-pi --sshd-config DIR/sshd_config

SIGKILLs every process in the namespace (sshd included, the Pi's "power" is off), then
starts sshd again (the Pi "booted"); what the sensor wrote survives, as on the card.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hil.targets.base import REPO
from hil.targets.ssh import SshTarget

if TYPE_CHECKING:
    from hil.lab import Lab

SSHD = "/usr/sbin/sshd"
PI_V4 = "10.77.0.1"


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True, timeout=30)


def ns_pids(ns: str) -> list[str]:
    return _run("ip", "netns", "pids", ns, check=False).stdout.split()


def start_sshd(ns: str, config: Path) -> None:
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    _run("ip", "netns", "exec", ns, SSHD, "-f", str(config))  # forks into the background


def power_cycle(ns: str, config: Path, off_s: float = 0.2) -> None:
    """Power off (SIGKILL everything in the namespace), wait, power on (sshd)."""
    deadline = time.monotonic() + 10
    while (pids := ns_pids(ns)) and time.monotonic() < deadline:
        _run("kill", "-9", *pids, check=False)
        time.sleep(0.05)
    if ns_pids(ns):
        raise SystemExit(f"processes survived the power cut in {ns}: {ns_pids(ns)}")
    time.sleep(off_s)
    start_sshd(ns, config)


class StandinTarget(SshTarget):
    """`--target standin`: the ssh target against an sshd-in-a-namespace of this run."""

    kind = "ssh"

    def __init__(self, spec: str = "standin") -> None:
        super().__init__(f"ssh://root@{PI_V4}", board_interface="cap0",
                         python=sys.executable, central_host="10.77.0.2")
        self.spec = spec
        self.pi_ns = ""

    def lab_options(self) -> dict[str, Any]:
        return {"central_ns": True}

    def wire(self, lab: Lab) -> None:
        from hil.lab import sh

        self.pi_ns = ns = f"thil-{lab.n}-pi"
        self.capture_port = f"thil{lab.n}cp"
        d = lab.dir / "standin"
        d.mkdir()
        sh("ip", "netns", "add", ns)
        lab.extra_ns.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        # the cable from the test host's capture port to the Pi's
        sh("ip", "link", "add", self.capture_port, "type", "veth", "peer", "name", "cap0",
           "netns", ns)
        # the management network: the Pi's eth0, the test host's (central ns) mg0
        assert lab.central_ns is not None
        sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", "mg0",
           "netns", lab.central_ns)
        for n, dev, addr in ((ns, "eth0", PI_V4), (lab.central_ns, "mg0", self.uplink_host)):
            sh("ip", "netns", "exec", n, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
            sh("ip", "-n", n, "addr", "add", f"{addr}/30", "dev", dev)
            sh("ip", "-n", n, "link", "set", dev, "up")
        # keys only: a client key of this run, a host key of this stand-in
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client"))
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host"))
        (d / "authorized_keys").write_text((d / "client.pub").read_text())
        config = d / "sshd_config"
        config.write_text(
            f"ListenAddress {PI_V4}\nPort 22\nHostKey {d / 'host'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "X11Forwarding no\nAllowTcpForwarding no\nPrintMotd no\nMaxSessions 50\n"
            "MaxStartups 50\nLogLevel ERROR\n")
        start_sshd(ns, config)
        self.key = str(d / "client")
        self.ssh_prefix = ["ip", "netns", "exec", lab.central_ns]
        self.paths.root = str(lab.dir / "pi-root")
        self.power_cycle_cmd = (f"cd {REPO} && {sys.executable} -m hil.standin power-cycle "
                                f"--ns {ns} --sshd-config {config}")
        super().wire(lab)

    def down(self) -> None:
        try:
            super().down()
        finally:
            if self.pi_ns:
                for pid in ns_pids(self.pi_ns):
                    _run("kill", "-9", pid, check=False)

    def power_hook(self) -> str:
        return "stand-in hook: SIGKILL of every process in the Pi's namespace, sshd restarted"



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hil.standin")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("power-cycle", help="kill everything in the namespace, start sshd")
    p.add_argument("--ns", required=True)
    p.add_argument("--sshd-config", required=True, type=Path)
    p.add_argument("--off-s", type=float, default=0.2)
    a = ap.parse_args(argv)
    power_cycle(a.ns, a.sshd_config, a.off_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())

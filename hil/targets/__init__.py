"""HIL targets: one interface (hil/targets/base.py), three boards.

    netns          the virtual board (hil/targets/netns.py)
    standin        the ssh target against sshd in a namespace (hil/standin.py), for CI
    ssh://U@H      a lab Pi over SSH (hil/targets/ssh.py); needs --capture-port
    qemu:IMAGE     the SD image under qemu-system-aarch64 -M virt (hil/targets/qemu.py)
"""

from __future__ import annotations

from typing import Any

from hil.targets.base import Target


def make_target(spec: str, opts: dict[str, Any]) -> Target:
    if spec == "netns":
        from hil.targets.netns import NetnsTarget

        return NetnsTarget()
    if spec == "standin":
        from hil.standin import StandinTarget

        return StandinTarget()
    if spec.startswith("ssh://"):
        from hil.targets.ssh import SshTarget

        return SshTarget(spec, capture_port=opts.get("capture_port") or "",
                         board_interface=opts.get("board_interface") or "eth1",
                         power_cycle_cmd=opts.get("power_cycle_cmd") or "",
                         key=opts.get("ssh_key") or "", python=opts.get("ssh_python") or "python3",
                         board_dir=opts.get("ssh_dir") or "/var/tmp/thil-board",
                         central_host=opts.get("central_host") or "",
                         units=bool(opts.get("ssh_units")),
                         broker_port=int(opts.get("broker_port") or 8883),
                         mgmt_interface=opts.get("board_mgmt_interface") or "eth0")
    if spec.startswith("qemu:"):
        from hil.targets.qemu import QemuTarget

        return QemuTarget(spec)
    raise ValueError(f"unknown --target {spec!r}: netns, standin, ssh://USER@HOST, qemu:IMAGE")


def short_name(spec: str) -> str:
    if spec.startswith("qemu:"):
        return "qemu"
    if spec.startswith("ssh://"):
        return "ssh"
    return spec

"""`--target ssh://USER@HOST --capture-port IFACE`: a lab Pi reached over SSH.

The Pi's capture port is cabled (directly or through a switch port of its own) to IFACE on
the test host; the harness moves IFACE into its scanner namespace for the run.  The Pi's
management port reaches the test host, where the central site runs (`--central-host`: the
test host's address as the Pi sees it).  docs/hil.md has the wiring.

Two ways to run the software on the Pi:
- process mode (default): the harness deploys the project's packages (`sensor`, `wire`,
  `uplink`) into `--ssh-dir` and runs what the units would run, with `setpriv`, using
  `--ssh-python` (an interpreter with the dependencies installed on the Pi);
- `--ssh-units`: the Pi runs the SD image; systemd runs the units, the harness uses
  `systemctl` and `journalctl` (and the config goes to /etc/teiten/sensor.toml).

A power cut is `--power-cycle-cmd` (run on the test host: drive a relay or a switched PDU
off and on; it may use $TEITEN_HIL_HOST); without it, the harness SIGKILLs every Teiten
program over SSH, which is a crash, not a power cut, and the report says so.

`hil/standin.py` makes a stand-in for CI: sshd in a namespace of its own.
"""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import tarfile
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from hil.targets.base import PATH, REPO, BoardPaths, Target, TargetError

if TYPE_CHECKING:
    from hil.lab import Lab

PACKAGES = ("sensor", "wire", "uplink")


class SshTarget(Target):
    kind = "ssh"

    def __init__(self, spec: str, *, capture_port: str = "", board_interface: str = "eth1",
                 power_cycle_cmd: str = "", key: str = "", python: str = "python3",
                 board_dir: str = "/var/tmp/thil-board", central_host: str = "",
                 deploy_source: bool = True, units: bool = False,
                 ssh_prefix: list[str] | None = None, broker_port: int = 8883,
                 mgmt_interface: str = "eth0") -> None:
        super().__init__(spec)
        u = urlparse(spec)
        if u.scheme != "ssh" or not u.hostname:
            raise ValueError(f"--target {spec}: expected ssh://USER@HOST[:PORT]")
        self.user, self.host, self.port = u.username or "root", u.hostname, u.port or 22
        self.capture_port = capture_port
        self.mgmt_interface = mgmt_interface
        self.power_cycle_cmd = power_cycle_cmd
        self.key = key
        self.python = python
        self.deploy_source = deploy_source and not units
        self.units = units
        self.ssh_prefix = ssh_prefix or []
        self.control = ""
        self.paths = BoardPaths(board_dir, board_interface)
        if units:
            self.paths = BoardPaths("/var/lib/teiten", board_interface,
                                    config="/etc/teiten/sensor.toml",
                                    tls_key="/etc/teiten/tls.key", cert="/etc/teiten/sensor.crt",
                                    ca="/etc/teiten/ca.crt")
        self.uplink_host = central_host
        self.uplink_port = broker_port
        self.boot_timeout_s = 300.0

    # ------------------------------------------------------------------ transport
    def ssh_argv(self, script: str) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", "ConnectTimeout=5", "-o", "ServerAliveInterval=5",
                "-o", "ServerAliveCountMax=2", "-p", str(self.port)]
        if self.key:
            opts += ["-i", self.key]
        if self.control:  # one TCP connection for the many small commands of a test
            opts += ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control}",
                     "-o", "ControlPersist=30"]
        return [*self.ssh_prefix, "ssh", *opts, f"{self.user}@{self.host}", script]

    def sh(self, script: str, *, stdin: bytes | None = None, timeout: float = 60,
           check: bool = True) -> subprocess.CompletedProcess[bytes]:
        r = subprocess.run(self.ssh_argv(script), input=stdin if stdin is not None else b"",
                           capture_output=True, timeout=timeout)
        if r.returncode == 255:  # ssh itself failed: the board is unreachable
            raise TargetError(f"ssh {self.user}@{self.host}: {r.stderr.decode()[-500:]}")
        if check and r.returncode != 0:
            raise subprocess.CalledProcessError(r.returncode, script, r.stdout, r.stderr)
        return r

    def reachable(self) -> bool:
        try:
            return self.sh("true", timeout=15, check=False).returncode == 0
        except (TargetError, subprocess.TimeoutExpired):
            return False

    # ------------------------------------------------------------------ strategy
    def lab_options(self) -> dict[str, Any]:
        # a lab Pi talks to the test host itself: the central site runs in its namespace
        return {"central_ns": False, "broker_port": self.uplink_port}

    def wire(self, lab: Lab) -> None:
        from hil.lab import sh

        if not self.capture_port:
            raise TargetError("--target ssh://... needs --capture-port IFACE (the test "
                              "host's interface cabled to the Pi's capture port)")
        self.control = str(lab.dir / "ssh-%C")
        if not self.uplink_host:
            raise TargetError("--target ssh://... needs --central-host ADDR (the test host's "
                              "address as the Pi sees it; the broker listens there)")
        Target._wait(self.reachable, 30, f"ssh {self.user}@{self.host}")
        sh("ip", "link", "set", self.capture_port, "netns", lab.scanner_ns)
        lab.scanner_if = self.capture_port
        if self.deploy_source:
            self.paths = BoardPaths(self.paths.root, self.paths.interface)
            self.pythonpath = f"{self.paths.root}/src"
        self.sh(f"rm -rf {self.paths.root} && mkdir -p {self.paths.root}")
        self._topology = lab.topology
        self._wire_board()
        self.capture_mac = self.out(
            f"cat /sys/class/net/{self.paths.interface}/address").strip()

    def _wire_board(self) -> None:
        from hil.lab import SENSOR_V4, SENSOR_V6
        from hil.targets.netns import wire_capture

        dev = self.paths.interface
        have = self.out(f"ip -br addr show dev {dev}")
        if self._topology == "routed" and SENSOR_V4 in have:
            return  # still wired (the stand-in keeps its namespace across a power cut)
        if self._topology == "routed":
            self.sh(f"export PATH={PATH}; ip addr flush dev {dev}")
        self.sh(f"export PATH={PATH}; ip link set {dev} up")
        wire_capture(self, self._topology, SENSOR_V4, SENSOR_V6, dev)

    def after_firewall(self) -> str:
        """The ruleset drops every new inbound connection: open SSH from the test host on
        the management interface, as first boot does on the image from [board] ssh_from
        (sensor.edges.firstboot.render_ssh_rules), or the harness locks itself out."""
        from sensor.edges.firstboot import BoardSettings, render_ssh_rules

        rules = render_ssh_rules(BoardSettings(hostname="hil", interface=self.mgmt_interface,
                                               ssh=True, ssh_from=(f"{self.uplink_host}/32",)))
        cmds = [line for line in rules.splitlines() if line and not line.startswith("#")]
        return "".join(f"&& nft {shlex.quote(c)} " for c in cmds)

    def deploy(self, config: str, secrets: dict[str, bytes]) -> None:
        super().deploy(config, secrets)
        if self.deploy_source:
            self.put_tree(PACKAGES, f"{self.paths.root}/src")

    def put_tree(self, packages: tuple[str, ...], dest: str) -> None:
        """The project's own packages onto the board (one tar over SSH)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
            for pkg in packages:
                tar.add(REPO / pkg, arcname=pkg,
                        filter=lambda ti: None if "__pycache__" in ti.name else ti)
        self.sh(f"export PATH={PATH}; mkdir -p {dest} && tar -xz -C {dest} -f - "
                f"&& chmod -R a+rX {dest}", stdin=buf.getvalue(), timeout=120)

    def _boot_marker(self) -> str:
        return self.out("cat /proc/sys/kernel/random/boot_id; "
                        f"cat {self.paths.root}/sensor.pid 2>/dev/null", check=False)

    def power_cut(self) -> None:
        self._before = self._boot_marker()
        if self.power_cycle_cmd:
            env = dict(os.environ, TEITEN_HIL_HOST=self.host)
            r = subprocess.run(self.power_cycle_cmd, shell=True, env=env, capture_output=True,
                               text=True, timeout=120)
            if r.returncode != 0:
                raise TargetError(f"--power-cycle-cmd failed ({r.returncode}): {r.stderr}")
        else:
            self.kill_all()

    def boot(self) -> None:
        deadline = time.monotonic() + self.boot_timeout_s
        while time.monotonic() < deadline:
            if self.reachable():
                after = self._boot_marker()
                old = getattr(self, "_before", "")
                old_pid = old.split()[1] if len(old.split()) > 1 else ""
                if after.split()[:1] != old.split()[:1] or not old_pid or not self._alive(
                        int(old_pid)):
                    break
            time.sleep(0.5)
        else:
            raise TargetError(f"{self.host} did not come back within {self.boot_timeout_s}s")
        if not self.units:
            self._wire_board()  # what the Pi's network config gives it at boot
            self.sh("rm -f " + " ".join(f"{self.paths.root}/{n}.pid" for n in
                                        ("sensor", "uplink", "notify")))

    def describe(self) -> str:
        if self.deploy_source:
            from hil.targets.netns import git_commit

            return "git " + git_commit() + " (deployed over ssh)"
        return super().describe()

    def down(self) -> None:
        try:
            self.kill_all()
            self._pid_kill("notify")
            if os.environ.get("TEITEN_HIL_KEEP") is None and not self.units:
                self.sh(f"rm -rf {shlex.quote(self.paths.root)}", check=False)
        finally:
            if self.control:
                subprocess.run([*self.ssh_prefix, "ssh", "-o", f"ControlPath={self.control}",
                                "-O", "exit", f"{self.user}@{self.host}"], capture_output=True)

    def _pid_kill(self, name: str) -> None:
        pid = self._pid(name)
        if pid:
            self.sh(f"kill -9 {pid}", check=False)

    def power_hook(self) -> str:
        return "--power-cycle-cmd" if self.power_cycle_cmd else "SIGKILL over ssh (no hook)"


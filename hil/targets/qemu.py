"""`--target qemu:IMAGE`: the built SD image booted under qemu-system-aarch64 -M virt.

The boot mechanics are board/image-build/boot_test.py's, imported, not copied: `prepare`
(a sparse copy of the .img.xz, the kernel and initrd of boot slot A, the command line),
`Disk` (the card's FAT partition through mtools) and `Board` (one qemu run: the image's
partitions on virtio, eth0 on qemu's user network with SSH forwarded to 127.0.0.1:2222,
eth1 a tap: the capture NIC).  Its module globals NS and TAP are pointed at this run's
scanner namespace and tap, so qemu, its tap, the broker (reached by the guest as
10.0.2.2, qemu's user network) and the scanner share one namespace of this run.

Strategy (labgrid's "off -> shell"): once per session, an enrolled card is made (first
boot: keys and CSR on the card; central's certificate back on it) and kept; each test
starts from a copy of it, with this test's config and certificates on the card, and boots.
systemd runs the units (`units=True`); SSH as root (keys only, from 10.0.2.2 only, as
`[board]` in teiten.toml allows) is the shell.  A power cut is SIGKILL to qemu: the guest's
disk stops mid-write (writes still in the guest's page cache are lost; what it fsynced
reached the image file).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from hil.targets.base import REPO, USER, BoardPaths, TargetError
from hil.targets.ssh import SshTarget

if TYPE_CHECKING:
    from hil.lab import Board, Lab

BOOT_TEST = REPO / "board" / "image-build" / "boot_test.py"
_GOLDEN: dict[str, Any] = {}  # image -> the enrolled card of this session


def boot_test() -> ModuleType:
    mod = sys.modules.get("teiten_boot_test")
    if mod is None:
        spec = importlib.util.spec_from_file_location("teiten_boot_test", BOOT_TEST)
        if spec is None or spec.loader is None:
            raise TargetError(f"cannot import {BOOT_TEST}")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["teiten_boot_test"] = mod
        spec.loader.exec_module(mod)
    return mod


def card_toml(sensor_toml: str, ssh_key: str) -> str:
    """teiten.toml for the card: the sensor's config plus [board] (SSH from qemu's host)."""
    return (sensor_toml + '\n[board]\ninterface = "eth0"\naddress = "dhcp"\nssh = true\n'
            f'ssh_keys = ["{ssh_key}"]\nssh_from = ["10.0.2.2/32"]\n')


class QemuTarget(SshTarget):
    kind = "qemu"
    topologies = ("dedicated", "onlink")  # eth1 has no address on the image
    bucket_s = 10
    grace_s = 2.0
    ramp_rates = (500, 1_000, 2_000, 5_000, 10_000, 20_000)
    ramp_step_s = 3.0

    def __init__(self, spec: str) -> None:
        super().__init__("ssh://root@127.0.0.1:2222", board_interface="eth1", units=True,
                         central_host="10.0.2.2")
        self.spec = spec
        image = spec.removeprefix("qemu:")
        if not image:
            found = sorted((REPO / "build" / "image").glob("teiten-*-rpi-arm64.img.xz"),
                           key=lambda p: p.stat().st_mtime)
            if not found:
                raise TargetError("no image: run `make image`, or give --target qemu:IMAGE")
            image = str(found[-1])
        self.image = Path(image).resolve()
        self.paths = BoardPaths("/var/lib/teiten", "eth1", config="/etc/teiten/sensor.toml",
                                tls_key="/etc/teiten/tls.key", cert="/etc/teiten/sensor.crt",
                                ca="/etc/teiten/ca.crt", spool="/var/lib/teiten/spool",
                                clock="/var/lib/teiten/clock-offset")
        self.boot_timeout_s = 900.0
        self.vm: Any = None
        self.disk: Any = None
        self.work: Path | None = None
        self.boots = 0

    def lab_options(self) -> dict[str, Any]:
        # qemu's user network reaches the namespace qemu runs in: broker and scanner share it
        return {"central_in_scanner": True}

    # ------------------------------------------------------------------ wiring
    def wire(self, lab: Lab) -> None:
        bt = boot_test()
        self.lab = lab
        self.work = lab.dir / "qemu"
        self.work.mkdir()
        self.control = str(lab.dir / "ssh-%C")
        tap = f"thil{lab.n}q"
        # the boot test's board namespace and tap become this lab's
        vars(bt).update(NS=lab.scanner_ns, TAP=tap)
        self.ssh_prefix = ["ip", "netns", "exec", lab.scanner_ns]
        lab.scan("ip", "tuntap", "add", "dev", tap, "mode", "tap")
        lab.scanner_if = tap
        self.capture_mac = bt.BOARD_MAC
        self.kernel = self.work / "vmlinuz"
        self.initrd = self.work / "initrd.img"
        golden = self._golden(bt)
        shutil.copy(golden["initrd"], self.initrd)
        shutil.copy(golden["kernel"], self.kernel)
        self.cmdline = golden["cmdline"]
        img = self.work / "disk.img"
        subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(golden["img"]),
                        str(img)], check=True)
        self.disk = bt.Disk(img)
        shutil.copy(golden["key"], self.work / "id_ed25519")
        (self.work / "id_ed25519").chmod(0o600)
        self.key = str(self.work / "id_ed25519")
        self.ssh_pub = golden["pub"]
        self.public_key = golden["public_key"]
        self.csr = golden["csr"]

    def _golden(self, bt: ModuleType) -> dict[str, Any]:
        """Once per session and image: first boot, keys made on the board, CSR on the card."""
        key = f"{self.image}:{self.image.stat().st_mtime_ns}"
        if key in _GOLDEN:
            return dict(_GOLDEN[key])
        work = Path(REPO / "build" / "hil-qemu-golden")
        saved = work / "golden.json"
        if saved.exists():  # an enrolled card of an earlier run, from the same image
            g = json.loads(saved.read_text())
            if g.get("image") == key:
                g = {k: Path(v) if k in ("img", "kernel", "initrd", "key") else v
                     for k, v in g.items()}
                _GOLDEN[key] = g
                return dict(g)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        disk, kernel, initrd, cmdline = bt.prepare(self.image, work)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(work / "id_ed25519")], check=True)
        pub = (work / "id_ed25519.pub").read_text().strip()
        from hil.lab import render_config

        self.paths.interface = "eth1"
        disk.put("teiten.toml", card_toml(render_config(self, "hil-qemu", "dedicated"), pub))
        vm = bt.Board(disk, work, kernel, initrd, cmdline, "golden")
        try:
            if vm.wait_serial("signing-key fingerprint", self.boot_timeout_s) is None:
                raise TargetError("first boot printed no fingerprint:\n" + vm.log()[-3000:])
            vm.wait_ssh(self.boot_timeout_s)
        finally:
            vm.stop()  # a clean poweroff: the golden card must be whole
        fp = disk.get("teiten-fingerprint.txt") or ""
        start = fp.find("-----BEGIN CERTIFICATE REQUEST-----")
        end_marker = "-----END CERTIFICATE REQUEST-----"
        end = fp.find(end_marker)
        if start < 0 or end < 0:
            raise TargetError(f"no CSR on the card after first boot: {fp[:500]}")
        _GOLDEN[key] = {"img": disk.path, "kernel": kernel, "initrd": initrd,
                        "cmdline": cmdline, "key": work / "id_ed25519", "pub": pub,
                        "public_key": bt.public_key_from_card(disk),
                        "csr": fp[start:end + len(end_marker)] + "\n"}
        saved.write_text(json.dumps({"image": key, **{k: str(v) for k, v in
                                                      _GOLDEN[key].items()}}))
        return dict(_GOLDEN[key])

    def provision(self, board: Board) -> None:
        """This test's central: a certificate from the board's CSR, its config on the card."""
        from central.ca import issue_sensor

        lab = board.lab
        board.sensor_id = "hil-qemu"  # the CSR's name (made at first boot)
        lab.pki(board.sensor_id, self.uplink_host, make_board_keys=False)
        lab.enrol(self.public_key)
        self.disk.put("sensor.crt", issue_sensor(lab.ca.dir, board.sensor_id,
                                                 self.csr.encode()))
        self.disk.put("ca.crt", lab.ca.ca_crt.read_bytes())
        self.disk.put("teiten.toml", card_toml(board.config_text(), self.ssh_pub))
        self._power_on()
        self._wait_up()
        if board.clock:
            self.write_file(self.paths.clock, "0\n")
        # the units start at boot; the tests start them when they are ready to
        self.sh("systemctl stop teiten-sensor.service teiten-uplink.service", timeout=120)
        self.sh(f"find {self.paths.spool} -maxdepth 1 -name '*.tenv' -delete")

    def _power_on(self) -> None:
        bt = boot_test()
        self.boots += 1
        self.vm = bt.Board(self.disk, self.work, self.kernel, self.initrd, self.cmdline,
                           f"boot{self.boots}")

    def _wait_up(self) -> None:
        deadline = time.monotonic() + self.boot_timeout_s
        while time.monotonic() < deadline:
            if self.vm.proc.poll() is not None:
                raise TargetError("qemu exited:\n" + self.vm.log()[-3000:])
            if self.reachable():
                state = self.out("systemctl is-system-running --wait", check=False,
                                 timeout=600).strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(2)
        raise TargetError("the image did not boot:\n" + self.vm.log()[-3000:])

    # ------------------------------------------------------------------ strategy
    def netsetup(self) -> None:
        pass  # teiten-netsetup.service ran at boot

    def deploy_config(self, config: str) -> None:
        self.write_file(self.paths.config, config, f"root:{USER}", 0o640)

    def power_cut(self) -> None:
        if self.vm is not None and self.vm.proc.poll() is None:
            self.vm.proc.kill()  # SIGKILL: no flush, no shutdown
            self.vm.proc.wait(30)
        if self.control:
            subprocess.run([*self.ssh_prefix, "ssh", "-o", f"ControlPath={self.control}",
                            "-O", "exit", f"{self.user}@{self.host}"], capture_output=True)

    def boot(self) -> None:
        self._power_on()
        self._wait_up()

    def boot_with_config(self, config: str) -> dict[str, Any]:
        """teiten.toml on the card with the board off, then boot: firstboot decides (an
        invalid one is refused, named in teiten-error.txt; the last good one runs)."""
        self.disk.put("teiten.toml", card_toml(config, self.ssh_pub))
        self.boot()
        err = (self.disk.get("teiten-error.txt") or "").strip()
        return {"started": self.unit_state("sensor").active, "error": err}

    def start(self, *, uplink_thread: bool = False) -> None:
        self.sh("systemctl start teiten-sensor.service teiten-uplink.service", timeout=300)

    def describe(self) -> str:
        return f"image {self.image.name}"

    def down(self) -> None:
        try:
            self.power_cut()
        finally:
            if self.work is not None:
                (self.work / "disk.img").unlink(missing_ok=True)

    def power_hook(self) -> str:
        return "SIGKILL of qemu (disk cut mid-write)"


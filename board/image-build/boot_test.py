#!/usr/bin/env python3
"""boot_test.py: boot the built SD image under qemu-system-aarch64 -M virt and check it.

Strategy: the image's own partitions are the disk (a sparse copy of the .img.xz made with
bmaptool); Debian's arm64 kernel and initrd come from its boot slot A.  Everything runs in
a network namespace of the test's own: qemu, its capture NIC (a tap: the board's eth1),
the probe sender and a capture of everything the board sends on that NIC.  The board's
management NIC (eth0) is qemu's user network, and the test logs in over SSH, which the
test's teiten.toml turns on for the gateway's address only, keys only.

  valid config   boot 1: first boot writes teiten-fingerprint.txt (the CSR in it); the
                 test issues a certificate from that CSR as central would and puts
                 sensor.crt and ca.crt on the card.  boot 2: the capture unit is active
                 (Type=notify: after READY=1), the uplink running, the root read-only;
                 1,000 probes into eth1 are counted exactly in the summary that a
                 `systemctl stop` seals into the spool, which verifies with the public key
                 from the card; nothing left eth1.
  invalid config teiten-error.txt is written, the console says so, nothing is captured
                 (empty spool on the data partition) and nothing leaves eth1.

Each check prints PASS or FAIL; the exit status is the number of failures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NS = "teiten-boot"
TAP = "tapboot0"
BOARD_MAC = "52:54:00:7e:17:01"
MTOOLS = dict(os.environ, MTOOLS_SKIP_CHECK="1")
FAILURES: list[str] = []
TIMES: dict[str, float] = {}


def check(ok: bool, what: str, detail: str = "") -> bool:
    print(("PASS " if ok else "FAIL ") + what + (f" ({detail})" if detail else ""), flush=True)
    if not ok:
        FAILURES.append(what)
    return ok


def sh(*cmd: str, check_rc: bool = True, env: dict[str, str] | None = None,
       timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check_rc, text=True, capture_output=True, env=env,
                          timeout=timeout)


def ns(*cmd: str, check_rc: bool = True,
       timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", NS, *cmd, check_rc=check_rc, timeout=timeout)


class Disk:
    """The image file and its partitions (from the GPT, by name)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        table = json.loads(sh("sfdisk", "--json", str(path)).stdout)["partitiontable"]
        self.parts = {p["name"]: p for p in table["partitions"]}

    def offset(self, name: str) -> int:
        return int(self.parts[name]["start"]) * 512

    def fat(self, name: str = "config") -> str:
        return f"{self.path}@@{self.offset(name)}"

    def get(self, name: str, part: str = "config") -> str | None:
        r = sh("mtype", "-i", self.fat(part), f"::{name}", check_rc=False, env=MTOOLS)
        return r.stdout if r.returncode == 0 else None

    def put(self, name: str, data: str | bytes, part: str = "config") -> None:
        with tempfile.NamedTemporaryFile() as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            sh("mcopy", "-o", "-i", self.fat(part), fh.name, f"::{name}", env=MTOOLS)

    def copy_out(self, name: str, dest: Path, part: str = "boot_a") -> None:
        sh("mcopy", "-o", "-n", "-i", self.fat(part), f"::{name}", str(dest), env=MTOOLS)

    def data_ls(self, path: str) -> list[str]:
        """List a directory of the data partition (ext4, read with debugfs: no mount)."""
        start = self.offset("data")
        size = int(self.parts["data"]["size"]) * 512
        with tempfile.NamedTemporaryFile(dir=self.path.parent) as fh:
            sh("dd", f"if={self.path}", f"of={fh.name}", "bs=4M", "iflag=skip_bytes,count_bytes",
               f"skip={start}", f"count={size}", "status=none", "conv=sparse")
            r = sh("debugfs", "-R", f"ls -p {path}", fh.name, check_rc=False)
        names = [line.split("/")[5] for line in r.stdout.splitlines() if line.count("/") >= 6]
        return [n for n in names if n not in (".", "..")]


TEITEN_TOML = """[sensor]
id = "boot-01"
topology = "dedicated"
key = "/var/lib/teiten/sensor.key"

[capture]
interface = "eth1"
darknet = ["198.51.100.0/24"]

[spool]
path = "/var/lib/teiten/spool"

[time]
wait_for_sync_s = 0                    # no NTP in the test network

[uplink]
host = "10.0.2.2"
port = 8883
ws_port = 0
ca = "/etc/teiten/ca.crt"
cert = "/etc/teiten/sensor.crt"
key = "/etc/teiten/tls.key"

[board]
interface = "eth0"
address = "dhcp"
ssh = true
ssh_keys = ["{ssh_key}"]
ssh_from = ["10.0.2.2/32"]
"""


class Board:
    """One qemu run of the image."""

    def __init__(self, disk: Disk, work: Path, kernel: Path, initrd: Path, cmdline: str,
                 name: str) -> None:
        self.disk, self.work, self.name = disk, work, name
        self.serial = work / f"serial-{name}.log"
        self.serial.unlink(missing_ok=True)
        cmd = [
            "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-m", "1024",
            "-smp", "2", "-accel", "tcg,thread=multi", "-nographic", "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
            "-drive", f"file={disk.path},if=virtio,format=raw,cache=unsafe",
            "-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22",
            "-device", "virtio-net-pci,netdev=n0,romfile=",
            "-netdev", f"tap,id=n1,ifname={TAP},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n1,mac={BOARD_MAC},romfile=",
            "-serial", f"file:{self.serial}", "-monitor", "none",
        ]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(["ip", "netns", "exec", NS, *cmd],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def log(self) -> str:
        try:
            return self.serial.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_serial(self, text: str, timeout: float) -> float | None:
        """Seconds since start when `text` appeared on the serial line, None on timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.log():
                return time.monotonic() - self.started
            if self.proc.poll() is not None:
                return None
            time.sleep(1)
        return None

    def ssh(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return ns("ssh", "-i", str(self.work / "id_ed25519"), "-p", "2222",
                  "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                  "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
                  "root@127.0.0.1", command, check_rc=False, timeout=timeout)

    def wait_ssh(self, timeout: float) -> float | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return None
            if self.ssh("true", timeout=30).returncode == 0:
                return time.monotonic() - self.started
            time.sleep(3)
        return None

    def stop(self, timeout: float = 180) -> None:
        if self.proc.poll() is None:
            self.ssh("systemctl poweroff", timeout=30)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def namespace() -> Iterator[None]:
    """The test's namespace: lo, and the tap that is the board's capture NIC."""
    sh("ip", "netns", "del", NS, check_rc=False)
    sh("ip", "netns", "add", NS)
    try:
        ns("ip", "link", "set", "lo", "up")
        ns("ip", "tuntap", "add", "dev", TAP, "mode", "tap")
        ns("ip", "link", "set", TAP, "up")
        ns("ip", "addr", "add", "192.0.2.1/30", "dev", TAP)
        ns("sysctl", "-q", "-w", f"net.ipv6.conf.{TAP}.disable_ipv6=1")
        ns("ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.2", "dev", TAP)
        ns("ip", "neigh", "replace", "192.0.2.2", "lladdr", BOARD_MAC, "dev", TAP, "nud",
           "permanent")
        yield
    finally:
        sh("ip", "netns", "del", NS, check_rc=False)


@contextlib.contextmanager
def capture(pcap: Path) -> Iterator[None]:
    """Everything the board sends on its capture NIC (frames whose source is its MAC)."""
    proc = subprocess.Popen(["ip", "netns", "exec", NS, "tcpdump", "-n", "-U", "-i", TAP,
                             "-w", str(pcap), "ether", "src", BOARD_MAC],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


def frames(pcap: Path) -> int:
    r = sh("tcpdump", "-n", "-r", str(pcap), check_rc=False)
    return len([line for line in r.stdout.splitlines() if line.strip()])


def prepare(image_xz: Path, work: Path) -> tuple[Disk, Path, Path, str]:
    img = work / "disk.img"
    img.unlink(missing_ok=True)
    bmap = image_xz.with_name(image_xz.name.removesuffix(".img.xz") + ".bmap")
    sh("bmaptool", "-q", "copy", "--bmap", str(bmap), str(image_xz), str(img))
    disk = Disk(img)
    kernel, initrd = work / "vmlinuz", work / "initrd.img"
    disk.copy_out("vmlinuz", kernel)
    disk.copy_out("initrd.img", initrd)
    cmdline = (disk.get("cmdline.txt", "boot_a") or "").strip()
    # the same root, read-only; qemu's virt machine has its PL011 UART as ttyAMA0
    cmdline = " ".join(w for w in cmdline.split() if not w.startswith("console="))
    cmdline += " console=ttyAMA0 systemd.show_status=1"
    return disk, kernel, initrd, cmdline


def issue_certificate(work: Path, disk: Disk) -> bool:
    """Play central: a CA, and a certificate from the CSR the board wrote to its card."""
    from central.ca import init_ca, issue_sensor

    fp = disk.get("teiten-fingerprint.txt") or ""
    start = fp.find("-----BEGIN CERTIFICATE REQUEST-----")
    end = fp.find("-----END CERTIFICATE REQUEST-----")
    if start < 0 or end < 0:
        return False
    csr = fp[start:end + len("-----END CERTIFICATE REQUEST-----")] + "\n"
    ca_dir = work / "central-ca"
    shutil.rmtree(ca_dir, ignore_errors=True)
    files = init_ca(ca_dir, hosts=["10.0.2.2"])
    cert = issue_sensor(ca_dir, "boot-01", csr.encode())
    disk.put("sensor.crt", cert)
    disk.put("ca.crt", files.ca_crt.read_bytes())
    return True


def public_key_from_card(disk: Disk) -> str:
    for line in (disk.get("teiten-fingerprint.txt") or "").splitlines():
        if line.startswith("public key: "):
            return line.removeprefix("public key: ").strip()
    return ""


def valid_run(image_xz: Path, work: Path, probes: int) -> None:
    disk, kernel, initrd, cmdline = prepare(image_xz, work)
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "id_ed25519"))
    key = (work / "id_ed25519.pub").read_text().strip()
    disk.put("teiten.toml", TEITEN_TOML.replace("{ssh_key}", key))
    pcap = work / "capture-nic-valid.pcap"
    with namespace(), capture(pcap):
        b1 = Board(disk, work, kernel, initrd, cmdline, "boot1")
        try:
            t = b1.wait_serial("signing-key fingerprint", 900)
            check(t is not None, "boot 1: first boot printed the fingerprint on the serial line")
            if t is not None:
                TIMES["boot1_fingerprint_s"] = round(t, 1)
            t = b1.wait_ssh(600)
            check(t is not None, "boot 1: SSH (keys only, from ssh_from) answers")
            if t is not None:
                TIMES["boot1_ssh_s"] = round(t, 1)
        finally:
            b1.stop()
        fp = disk.get("teiten-fingerprint.txt") or ""
        check("signing-key fingerprint:" in fp and "BEGIN CERTIFICATE REQUEST" in fp,
              "first boot wrote teiten-fingerprint.txt (fingerprint and CSR) to the FAT partition")
        serial_fp = [line for line in b1.log().splitlines() if "signing-key fingerprint" in line]
        check(any(line.split()[-1] in fp for line in serial_fp if line.split()),
              "the console printed the same fingerprint")
        check(disk.get("teiten-error.txt") is None, "no teiten-error.txt for a valid config")
        if not check(issue_certificate(work, disk), "central issued a certificate from the CSR"):
            return
        b2 = Board(disk, work, kernel, initrd, cmdline, "boot2")
        try:
            t = b2.wait_ssh(900)
            if not check(t is not None, "boot 2: the board is up (SSH)"):
                return
            TIMES["boot2_ssh_s"] = round(t or 0, 1)
            deadline = time.monotonic() + 600
            state = ""
            while time.monotonic() < deadline:
                state = b2.ssh("systemctl show -p Type -p ActiveState -p SubState "
                               "teiten-sensor.service").stdout
                if "ActiveState=active" in state or "ActiveState=failed" in state:
                    break
                time.sleep(3)
            TIMES["boot2_capture_active_s"] = round(time.monotonic() - b2.started, 1)
            check("Type=notify" in state and "ActiveState=active" in state
                  and "SubState=running" in state,
                  "systemd reports teiten-sensor active (running) after READY=1",
                  state.replace("\n", " "))
            time.sleep(20)  # the uplink retries a broker that is not there: still running
            up = b2.ssh("systemctl show -p ActiveState -p SubState -p NRestarts "
                        "teiten-uplink.service").stdout
            check("ActiveState=active" in up and "SubState=running" in up,
                  "teiten-uplink is running", up.replace("\n", " "))
            ro = b2.ssh("findmnt -no OPTIONS / ; touch /teiten-rw-probe").stdout
            check(ro.split(",")[0].strip() == "ro", "the root is mounted read-only", ro.strip())
            analyze = b2.ssh("systemd-analyze time").stdout.strip()
            TIMES["systemd_analyze"] = analyze  # type: ignore[assignment]
            r = ns(sys.executable, str(REPO / "hil" / "send.py"), "syn", "--count", str(probes),
                   "--port", "2323", "--src", "192.0.2.1", timeout=600)
            truth = json.loads(r.stdout)
            check(truth["packets"] == probes, f"the host sent {probes} probes into eth1")
            time.sleep(5)
            stop = b2.ssh("systemctl stop teiten-sensor.service; "
                          "ls /var/lib/teiten/spool", timeout=180)
            envelopes = [n for n in stop.stdout.split() if n.endswith(".tenv")]
            got = 0
            pub = public_key_from_card(disk)
            from wire.envelope import verify_envelope
            from wire.keys import Keyring

            keyring = Keyring.from_mapping({"boot-01": pub})
            verified = 0
            for name in envelopes:
                data = ns("ssh", "-i", str(work / "id_ed25519"), "-p", "2222",
                          "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                          "-o", "LogLevel=ERROR", "root@127.0.0.1",
                          f"base64 -w0 /var/lib/teiten/spool/{name}").stdout
                import base64

                v = verify_envelope(base64.b64decode(data), keyring)
                verified += 1
                got += v.summary.packets
            check(verified >= 1 and verified == len(envelopes),
                  "every sealed summary verifies with the board's public key from the card",
                  f"{verified} envelope(s)")
            check(got == probes, f"the summary counts exactly {probes} probes", f"counted {got}")
        finally:
            b2.stop()
    n = frames(pcap)
    check(n == 0, "nothing was sent out of the capture NIC (eth1) in either boot",
          f"{n} frames")


def invalid_run(image_xz: Path, work: Path, probes: int) -> None:
    disk, kernel, initrd, cmdline = prepare(image_xz, work)
    bad = TEITEN_TOML.replace('darknet = ["198.51.100.0/24"]', 'darknet = ["198.51.100.7/24"]')
    disk.put("teiten.toml", bad.replace("{ssh_key}", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA x"))
    pcap = work / "capture-nic-invalid.pcap"
    with namespace(), capture(pcap):
        b = Board(disk, work, kernel, initrd, cmdline, "invalid")
        try:
            t = b.wait_serial("was NOT accepted", 900)
            check(t is not None, "invalid config: the console says teiten.toml was not accepted")
            if t is not None:
                TIMES["invalid_error_s"] = round(t, 1)
            check("capture.darknet[0]" in b.log(), "the console names the field")
            # the board is silent: no SSH either; send the probes anyway
            ns(sys.executable, str(REPO / "hil" / "send.py"), "syn", "--count", str(probes),
               "--port", "2323", "--src", "192.0.2.1", timeout=600)
            check(b.wait_ssh(60) is None, "invalid config: the network is silent (no SSH)")
            time.sleep(10)
        finally:
            b.kill()  # a power cut: nothing it wrote may depend on a clean shutdown
    err = disk.get("teiten-error.txt") or ""
    check("capture.darknet[0]" in err and "198.51.100.0/24" in err,
          "teiten-error.txt on the FAT partition names the field and the fix")
    check(disk.get("teiten-fingerprint.txt") is None, "no fingerprint for an invalid config")
    spool = disk.data_ls("/spool")
    check(not [n for n in spool if n.endswith(".tenv")], "nothing was captured (empty spool)",
          f"spool: {spool}")
    check(frames(pcap) == 0, "nothing was sent out of the capture NIC", f"{frames(pcap)} frames")


def main() -> int:
    ap = argparse.ArgumentParser(description="boot the SD image under qemu and check it")
    ap.add_argument("--image", type=Path, help="the .img.xz (default: newest in build/image)")
    ap.add_argument("--work", type=Path, default=REPO / "build" / "image-boot-test")
    ap.add_argument("--probes", type=int, default=1000)
    ap.add_argument("--only", choices=["valid", "invalid"])
    args = ap.parse_args()
    image = args.image or max((REPO / "build" / "image").glob("teiten-*-rpi-arm64.img.xz"),
                              key=lambda p: p.stat().st_mtime)
    args.work.mkdir(parents=True, exist_ok=True)
    for f in args.work.glob("id_ed25519*"):
        f.unlink()
    print(f"boot test of {image}", flush=True)
    start = time.monotonic()
    if args.only in (None, "valid"):
        valid_run(image, args.work, args.probes)
    if args.only in (None, "invalid"):
        invalid_run(image, args.work, args.probes)
    TIMES["total_s"] = round(time.monotonic() - start, 1)
    print("times: " + json.dumps(TIMES), flush=True)
    print(f"{len(FAILURES)} failure(s)" + (": " + "; ".join(FAILURES) if FAILURES else ""))
    return min(len(FAILURES), 100)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())

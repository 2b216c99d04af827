"""The SD image's root-file-system stage, built for this machine's architecture.

`board/image-build/build.sh rootfs` makes the same root as the arm64 image (Debian 12 from
its mirror with mmdebstrap, the project in /opt/teiten from wheels, board/rpi's units),
minus the kernel and firmware, and caches it by the hash of its inputs: the first run
takes minutes, later ones seconds.  Then, in a chroot of it: `teiten --version`,
`teiten config check`, first boot on the example config; every unit passes
`systemd-analyze verify`; `systemd-analyze security` rates each service (printed), capture
and uplink at 2.5 or better, the root units at 5.0 or better.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "board" / "image-build" / "build.sh"
INCHROOT = REPO / "board" / "image-build" / "inchroot.sh"
RPI = REPO / "board" / "rpi"

pytestmark = [pytest.mark.privileged, pytest.mark.slow, pytest.mark.timeout(1800)]

# services that run as the unprivileged users, and the root ones (network set-up etc.)
USER_UNITS = {"teiten-sensor.service": 2.5, "teiten-uplink.service": 2.5}
ROOT_LIMIT = 5.0


@pytest.fixture(scope="module")
def rootfs() -> Path:
    for tool in ("mmdebstrap", "mke2fs", "mcopy"):
        assert shutil.which(tool), f"{tool} missing: apt-get install mmdebstrap e2fsprogs mtools"
    r = subprocess.run([str(BUILD), "rootfs"], capture_output=True, text=True, timeout=1700,
                       check=False)
    assert r.returncode == 0, f"build.sh rootfs failed:\n{r.stderr[-4000:]}"
    root = Path(r.stdout.strip().splitlines()[-1])
    assert (root / "opt/teiten/bin/python").exists()
    return root


def chroot(root: Path, *cmd: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(INCHROOT), str(root), *cmd], capture_output=True, text=True,
                       timeout=300, check=False)
    if ok:
        assert r.returncode == 0, f"{cmd}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def test_teiten_version_runs_in_the_root(rootfs: Path) -> None:
    out = chroot(rootfs, "teiten", "--version").stdout
    assert out.startswith("teiten "), out
    chroot(rootfs, "/opt/teiten/bin/python", "-c", "import sensor.edges._pcap, sensor.fast._fast")


def test_config_check_runs_in_the_root(rootfs: Path) -> None:
    r = chroot(rootfs, "teiten", "config", "check", "--no-files",
               "/usr/share/doc/teiten/sensor.toml")
    assert r.returncode == 0
    bad = chroot(rootfs, "teiten", "config", "check", "--no-files",
                 "/usr/share/doc/teiten/teiten.toml.example", ok=False)
    assert bad.returncode == 2 and "sensor.id" in bad.stdout + bad.stderr


def test_the_root_carries_no_compiler_broker_or_pip(rootfs: Path) -> None:
    for path in ("usr/bin/gcc", "usr/bin/cc", "usr/sbin/mosquitto", "opt/teiten/bin/pip"):
        assert not (rootfs / path).exists(), path
    assert not list(rootfs.glob("opt/teiten/lib/python3*/site-packages/central"))
    assert (rootfs / "etc/teiten").is_symlink()
    assert (rootfs / "etc/machine-id").read_text() == ""
    assert not list(rootfs.glob("etc/ssh/ssh_host_*"))


def _units() -> list[Path]:
    return sorted(p for p in RPI.iterdir()
                  if p.suffix in (".service", ".timer", ".mount") and p.is_file())


def test_every_unit_passes_systemd_analyze_verify(rootfs: Path) -> None:
    units = [f"/usr/lib/systemd/system/{u.name}" for u in _units()]
    r = subprocess.run(["systemd-analyze", "verify", f"--root={rootfs}", *units],
                       capture_output=True, text=True, timeout=300, check=False)
    own = [line for line in (r.stdout + r.stderr).splitlines()
           if "teiten" in line or "var-lib-teiten" in line]
    assert r.returncode == 0 and not own, "\n".join(own) or r.stderr


def test_security_scores(rootfs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scores: dict[str, float] = {}
    for unit in _units():
        if unit.suffix != ".service":
            continue
        r = subprocess.run(["systemd-analyze", "security", "--offline=yes", f"--root={rootfs}",
                            f"/usr/lib/systemd/system/{unit.name}"],
                           capture_output=True, text=True, timeout=120, check=False)
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
        assert m, f"{unit.name}: no score\n{r.stdout[-2000:]}{r.stderr[-2000:]}"
        scores[unit.name] = float(m.group(1))
    with capsys.disabled():
        print("\nsystemd-analyze security (lower is better):")
        for name, score in sorted(scores.items()):
            limit = USER_UNITS.get(name, ROOT_LIMIT)
            print(f"  {name:<34} {score:4.1f}  (limit {limit})")
    bad = {n: s for n, s in scores.items() if s > USER_UNITS.get(n, ROOT_LIMIT)}
    assert not bad, f"above the limit: {bad}"


def test_first_boot_runs_in_the_root(rootfs: Path, tmp_path: Path) -> None:
    """The image's own `teiten firstboot` on a real FAT image, inside the root."""
    work = rootfs / "tmp-firstboot"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        fat = work / "card.img"
        subprocess.run(["mkfs.vfat", "-C", "-n", "TEITEN", str(fat), "4096"], check=True,
                       capture_output=True)
        toml = (REPO / "board/rpi/sensor.toml").read_text()
        toml = toml.replace("/var/lib/teiten/", "/tmp-firstboot/data/")
        toml = toml.replace("/etc/teiten/", "/tmp-firstboot/etc/")
        (work / "teiten.toml").write_text(toml)
        subprocess.run(["mcopy", "-i", str(fat), str(work / "teiten.toml"), "::teiten.toml"],
                       check=True, env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"})
        r = chroot(rootfs, "teiten", "firstboot", "--card", "/tmp-firstboot/card.img",
                   "--etc", "/tmp-firstboot/etc", "--run", "/tmp-firstboot/run",
                   "--ssh-dir", "/tmp-firstboot/ssh", "--no-chown")
        assert "signing-key fingerprint" in r.stdout
    finally:
        shutil.rmtree(work, ignore_errors=True)

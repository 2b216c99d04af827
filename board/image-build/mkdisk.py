#!/usr/bin/env python3
"""mkdisk.py: the SD image from a root directory, with no loop device and no mount.

Layout (GPT, 4 MiB aligned; docs/flashing.md), the shape of rpi-image-gen's A/B layout:

  1 config    FAT   autoboot.txt (tryboot A/B), teiten.toml, what first boot writes back
  2 boot_a    FAT   firmware, kernel, initrd, device trees, config.txt, cmdline.txt
  3 boot_b    FAT   empty (formatted) until an update fills it
  4 system_a  ext4  the root, mounted read-only
  5 system_b  ext4  the same size, empty (zeros) until an update fills it
  6 data      ext4  /var/lib/teiten: keys, config, spool, saved clock (from the spool bound)

Each file system is made from a directory (mkfs.vfat + mcopy, mke2fs -d) and written into
the image file at its offset; sfdisk writes the table.  Every identifier (disk and
partition GUIDs, volume ids, ext4 UUIDs and hash seeds) and every timestamp is derived
from SOURCE_DATE_EPOCH, so the same inputs give the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

MIB = 1 << 20
ALIGN = 4 * MIB
SECTOR = 512
T_FAT = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"  # Microsoft basic data
T_ROOT_ARM64 = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"
T_ROOT_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
T_LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

AUTOBOOT = """# autoboot.txt (Raspberry Pi 4/400/CM4 EEPROM bootloader): boot slot A (partition 2);
# a `reboot '0 tryboot'` tries slot B (partition 3) once, then falls back to A.
[all]
tryboot_a_b=1
boot_partition=2
[tryboot]
boot_partition=3
"""

CONFIG_TXT = """# config.txt of a Teiten boot slot: Debian's arm64 kernel (upstream device trees)
arm_64bit=1
enable_uart=1
upstream_kernel=1
kernel={kernel}
initramfs {initrd} followkernel
disable_overscan=1
"""

README = """TEITEN sensor card

Edit teiten.toml here (any text editor), put the card back in the board, power it on.
After the first boot this partition holds:
  teiten-fingerprint.txt  the signing-key fingerprint and the TLS certificate request
  teiten-error.txt        only if teiten.toml was not accepted: each field and what to do
Put ca.crt and sensor.crt from the central site here too.  Guide: docs/flashing.md.
"""


def ident(epoch: int, name: str) -> uuid.UUID:
    return uuid.UUID(bytes=hashlib.sha256(f"teiten:{epoch}:{name}".encode()).digest()[:16],
                     version=4)


def run(*cmd: str, env: dict[str, str] | None = None, stdout: int | None = None,
        stderr: int | None = None, input: str | None = None) -> None:
    subprocess.run(cmd, check=True, env=env, stdout=stdout, stderr=stderr, input=input,
                   text=input is not None)


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def du_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-s", "-B1", "--apparent-size", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[0])


def touch_tree(path: Path, epoch: int) -> None:
    for p in sorted(path.rglob("*"), reverse=True):
        os.utime(p, (epoch, epoch), follow_symlinks=False)
    os.utime(path, (epoch, epoch))


def clamp_mtimes(root: Path, epoch: int) -> int:
    """No file newer than SOURCE_DATE_EPOCH (maintainer scripts stamp files with 'now')."""
    clamped = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if st.st_mtime > epoch or st.st_atime > epoch:
                os.utime(p, (epoch, epoch), follow_symlinks=False)
                clamped += 1
    if os.lstat(root).st_mtime > epoch:
        os.utime(root, (epoch, epoch))
    return clamped


def make_fat(path: Path, size: int, label: str, content: Path | None, epoch: int) -> None:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1", SOURCE_DATE_EPOCH=str(epoch))
    volid = ident(epoch, "vol-" + label).hex[:8]
    path.unlink(missing_ok=True)
    run("mkfs.vfat", "-C", "-n", label.upper()[:11], "-i", volid, "--invariant",
        str(path), str(size // 1024), stdout=subprocess.DEVNULL, env=env)
    if content is not None and any(content.iterdir()):
        touch_tree(content, epoch)
        items = sorted(str(p) for p in content.iterdir())
        run("mcopy", "-s", "-m", "-p", "-Q", "-i", str(path), *items, "::", env=env)


def make_ext4(path: Path, size: int, label: str, content: Path, epoch: int) -> None:
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(epoch), SOURCE_DATE_EPOCH=str(epoch))
    path.unlink(missing_ok=True)
    u = ident(epoch, "fs-" + label)
    seed = ident(epoch, "seed-" + label)
    run("mke2fs", "-q", "-F", "-t", "ext4", "-L", label, "-U", str(u),
        "-E", f"hash_seed={seed},root_owner=0:0,lazy_itable_init=0,nodiscard",
        "-O", "^metadata_csum_seed", "-d", str(content), "-b", "4096", str(path),
        str(size // 1024) + "k", env=env, stdout=subprocess.DEVNULL)
    fix_ctimes(path, content, epoch)


def fix_ctimes(path: Path, root: Path, epoch: int) -> None:
    """mke2fs -d copies each file's ctime (when it was made on this host) and atime (when
    it was last read, e.g. by mke2fs itself): set both to SOURCE_DATE_EPOCH in every inode
    (debugfs, offline) so two builds match."""
    lines = [f"sif / ctime @{epoch}", f"sif / atime @{epoch}"]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            rel = "/" + os.path.relpath(os.path.join(dirpath, name), root)
            lines.append(f'sif "{rel}" ctime @{epoch}')
            lines.append(f'sif "{rel}" atime @{epoch}')
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as fh:
        fh.write("\n".join(lines) + "\n")
        fh.flush()
        run("debugfs", "-w", "-f", fh.name, str(path), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)


def write_at(image: Path, part: Path, offset: int) -> None:
    run("dd", f"if={part}", f"of={image}", "bs=4M", "conv=notrunc,sparse",
        f"seek={offset}", "oflag=seek_bytes", "status=none")


def boot_slot(root: Path, dest: Path, cmdline: str) -> dict[str, str]:
    """Firmware, kernel, initrd and the Pi device trees from Debian's packages."""
    kernels = sorted(root.glob("boot/vmlinuz-*"))
    if not kernels:
        raise SystemExit(f"mkdisk: no kernel in {root}/boot (a board root needs "
                         "packages-kernel-arm64.txt)")
    ver = kernels[-1].name.removeprefix("vmlinuz-")
    fw = root / "usr/lib/raspi-firmware"
    for f in sorted(fw.iterdir()):
        if f.is_file():
            shutil.copy2(f, dest / f.name)
    dtbs = root / f"usr/lib/linux-image-{ver}/broadcom"
    for f in sorted(dtbs.glob("bcm27*-rpi-*.dtb")) + sorted(dtbs.glob("bcm2837-rpi-3-b-plus.dtb")):
        shutil.copy2(f, dest / f.name)
    shutil.copy2(root / f"boot/vmlinuz-{ver}", dest / "vmlinuz")
    shutil.copy2(root / f"boot/initrd.img-{ver}", dest / "initrd.img")
    (dest / "config.txt").write_text(CONFIG_TXT.format(kernel="vmlinuz", initrd="initrd.img"))
    (dest / "cmdline.txt").write_text(cmdline + "\n")
    return {"kernel": ver}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("image", type=Path)
    ap.add_argument("--arch", default="arm64")
    ap.add_argument("--data-mib", type=int, required=True, help="data partition size")
    ap.add_argument("--teiten-toml", type=Path, help="put this teiten.toml on the card")
    ap.add_argument("--layout-out", type=Path, help="write the partition layout as JSON")
    args = ap.parse_args()
    epoch = int(os.environ["SOURCE_DATE_EPOCH"])
    work = Path(tempfile.mkdtemp(prefix="mkdisk-", dir=args.image.parent))
    try:
        parts: list[tuple[str, Path | None, int, str]] = []
        uuids = {n: ident(epoch, "part-" + n)
                 for n in ("config", "boot_a", "boot_b", "system_a", "system_b", "data")}
        # slot A's root goes by PARTUUID: the kernel finds it whatever the disk is called
        cmdline = (f"root=PARTUUID={uuids['system_a']} ro rootwait fsck.repair=yes "
                   "net.ifnames=0 cma=64M console=ttyS1,115200 console=tty0")
        cfg = work / "config"
        cfg.mkdir()
        (cfg / "autoboot.txt").write_text(AUTOBOOT)
        (cfg / "README.txt").write_text(README)
        example = Path(__file__).resolve().parent / "teiten.toml.example"
        shutil.copy2(args.teiten_toml or example, cfg / "teiten.toml")
        make_fat(work / "config.img", 16 * MIB, "TEITEN", cfg, epoch)
        parts.append(("config", work / "config.img", 16 * MIB, T_FAT))
        boot = work / "boot"
        boot.mkdir()
        info = boot_slot(args.root, boot, cmdline) if args.arch == "arm64" else {}
        boot_size = max(128 * MIB, align(du_bytes(boot) * 2))
        make_fat(work / "boot_a.img", boot_size, "BOOT_A", boot, epoch)
        make_fat(work / "boot_b.img", boot_size, "BOOT_B", None, epoch)
        parts.append(("boot_a", work / "boot_a.img", boot_size, T_FAT))
        parts.append(("boot_b", work / "boot_b.img", boot_size, T_FAT))
        print(f"mkdisk: {clamp_mtimes(args.root, epoch)} mtimes clamped to {epoch}")
        used = du_bytes(args.root)
        sys_size = align(max(int(used * 1.35), used + 256 * MIB))
        make_ext4(work / "system_a.img", sys_size, "system_a", args.root, epoch)
        rtype = T_ROOT_ARM64 if args.arch == "arm64" else T_ROOT_X86_64
        parts.append(("system_a", work / "system_a.img", sys_size, rtype))
        parts.append(("system_b", None, sys_size, rtype))
        empty = work / "data"
        empty.mkdir()
        data_size = args.data_mib * MIB
        make_ext4(work / "data.img", data_size, "data", empty, epoch)
        parts.append(("data", work / "data.img", data_size, T_LINUX))

        offset = ALIGN
        script = ["label: gpt", f"label-id: {ident(epoch, 'disk')}", "unit: sectors",
                  "sector-size: 512"]
        layout: list[dict[str, Any]] = []
        for name, _f, size, ptype in parts:
            script.append(f"start={offset // SECTOR}, size={size // SECTOR}, type={ptype}, "
                          f"uuid={uuids[name]}, name={name}")
            layout.append({"name": name, "offset": offset, "size": size,
                           "partuuid": str(uuids[name])})
            offset += size
        total = offset + ALIGN
        tmp_img = args.image.with_suffix(".tmp")
        tmp_img.unlink(missing_ok=True)
        with open(tmp_img, "wb") as fh:
            fh.truncate(total)
        run("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(tmp_img),
            input="\n".join(script) + "\n")
        for (_name, f, _size, _t), lay in zip(parts, layout, strict=True):
            if f is not None:
                write_at(tmp_img, f, int(lay["offset"]))
        tmp_img.rename(args.image)
        if args.layout_out:
            args.layout_out.write_text(json.dumps({"partitions": layout, "size": total,
                                                   "cmdline": cmdline, **info}, indent=2))
        print(f"mkdisk: {args.image} {total // MIB} MiB: " + ", ".join(
            f"{x['name']} {x['size'] // MIB} MiB" for x in layout))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""manifest.py: teiten-<version>.manifest.json, every Debian package and wheel in the image.

Each Debian package with its version and the sha256 of the .deb it was installed from
(recorded by mkbase.sh while the archives were at hand); each wheel in /opt/teiten with its
version and the sha256 of the wheel file; the raw image's sha256 and its partition layout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--image", type=Path, required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--epoch", type=int, required=True)
    ap.add_argument("--layout", type=Path)
    args = ap.parse_args()
    root = args.root
    debs: dict[str, str] = {}
    debs_file = Path(f"{root}.debs")
    if debs_file.exists():
        for line in debs_file.read_text().splitlines():
            digest, name = line.split(maxsplit=1)
            debs[name.strip()] = digest
    packages = []
    for line in Path(f"{root}.packages").read_text().splitlines():
        name, version = line.split(maxsplit=1)
        name = name.split(":", 1)[0]
        epochless = re.sub(r"^\d+:", "", version)
        deb = next((d for d in debs if d.startswith(f"{name}_{epochless.replace(':', '%3a')}_")),
                   None)
        packages.append({"name": name, "version": version,
                         "deb": deb, "sha256": debs.get(deb) if deb else None})
    wheel_dir = Path(Path(f"{root}.wheeldir").read_text().strip())
    site = sorted(root.glob("opt/teiten/lib/python3*/site-packages"))
    installed = {p.name.split("-")[0].lower().replace("_", "-")
                 for p in (site[0].glob("*.dist-info") if site else [])}
    wheels = []
    for whl in sorted(wheel_dir.glob("*.whl")):
        name, version = whl.name.split("-")[:2]
        norm = name.lower().replace("_", "-")
        if norm not in installed:
            continue  # a build-only wheel (setuptools, wheel): not in the image
        wheels.append({"name": norm, "version": version, "file": whl.name,
                       "sha256": sha256(whl)})
    doc = {
        "image": args.image.name + ".xz",
        "version": args.version,
        "source_date_epoch": args.epoch,
        "raw_image_sha256": sha256(args.image),
        "raw_image_bytes": args.image.stat().st_size,
        "layout": json.loads(args.layout.read_text()) if args.layout else None,
        "debian_packages": packages,
        "python_wheels": wheels,
    }
    json.dump(doc, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

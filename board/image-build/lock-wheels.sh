#!/bin/bash
# lock-wheels.sh: (re)write requirements-board.lock, the board's Python wheels pinned with
# their sha256, for both the image (aarch64) and the host-architecture root stage (x86_64).
# The versions are the project's runtime dependencies as resolved by pip today; run it on
# purpose, review the diff, commit it.  The build itself installs with --require-hashes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
py=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
deps=$("$py" -c 'import tomllib,sys; print("\n".join(tomllib.load(open(sys.argv[1],"rb"))["project"]["dependencies"]))' "$repo/pyproject.toml")
echo "$deps" > "$tmp/in.txt"
printf 'setuptools>=68\nwheel\n' > "$tmp/build.txt"
for arch in aarch64 x86_64; do
    plats=()
    for p in manylinux2014 manylinux_2_28 manylinux_2_34; do plats+=(--platform "${p}_$arch"); done
    "$py" -m pip download -q --only-binary=:all: "${plats[@]}" --python-version 3.11 \
        --implementation cp --abi cp311 --abi abi3 --abi none -d "$tmp/$arch" \
        -r "$tmp/in.txt" -r "$tmp/build.txt"
done
"$py" - "$tmp" > "$here/requirements-board.lock" <<'PY'
import hashlib, pathlib, re, sys
from collections import defaultdict
hashes = defaultdict(set); versions = {}
for whl in sorted(pathlib.Path(sys.argv[1]).glob("*/*.whl")):
    name, version = whl.name.split("-")[:2]
    key = re.sub(r"[-_.]+", "-", name).lower()
    if versions.setdefault(key, version) != version:
        sys.exit(f"{key}: two versions {versions[key]} and {version}")
    hashes[key].add(hashlib.sha256(whl.read_bytes()).hexdigest())
print("# The board's Python wheels (runtime and build), pinned with sha256 for aarch64 and")
print("# x86_64, CPython 3.11 (Debian 12).  Written by lock-wheels.sh; do not edit by hand.")
for key in sorted(versions):
    line = f"{key}=={versions[key]}"
    for h in sorted(hashes[key]):
        line += f" \\\n    --hash=sha256:{h}"
    print(line)
PY
echo "wrote $here/requirements-board.lock"

#!/bin/bash
# mkwheels.sh BUILDER SRC.tar OUTDIR: every wheel the board installs, for the builder's
# architecture.  PyPI's wheels where they exist (pinned with sha256 in
# requirements-board.lock), the project's own (its C extensions sensor.edges._pcap, sensor.fast._fast,
# central._rollup) compiled here, under qemu-user for arm64.  The builder is never shipped.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
builder=$1 src=$2 out=$3
: "${SOURCE_DATE_EPOCH:?}"
rm -rf "$builder/src" "$builder/wheels" "$builder/bv"
mkdir -p "$builder/src" "$builder/wheels"
tar -C "$builder/src" -xf "$src"
# the builder fetches from PyPI (this host's resolver and CA bundle; never shipped)
cp /etc/resolv.conf "$builder/etc/resolv.conf"
mkdir -p "$builder/etc/ssl/certs"
cp /etc/ssl/certs/ca-certificates.crt "$builder/etc/ssl/certs/ca-certificates.crt"
"$here/inchroot.sh" "$builder" /bin/sh -ec '
    export PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1
    python3 -m venv /bv
    /bv/bin/pip install -q --no-cache-dir --no-deps --require-hashes \
        -r /src/board/image-build/requirements-board.lock
    /bv/bin/pip download -q --no-cache-dir --no-deps --require-hashes \
        -r /src/board/image-build/requirements-board.lock -d /wheels
    cd /src
    /bv/bin/pip wheel -q --no-cache-dir --no-deps --no-build-isolation -w /wheels /src
'
rm -rf "$out.tmp"; mkdir -p "$out.tmp"
cp "$builder"/wheels/*.whl "$out.tmp/"
rm -rf "$builder/src" "$builder/wheels" "$builder/bv" "$out"
mv "$out.tmp" "$out"
ls "$out"

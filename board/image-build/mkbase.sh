#!/bin/bash
# mkbase.sh ARCH KIND OUTDIR: a Debian 12 tree (a directory) from Debian's mirror with mmdebstrap.
#   KIND board   : the board's root (packages-board.txt, plus packages-kernel-ARCH.txt if any)
#   KIND builder : the wheel builder (packages-builder.txt), never shipped
# With a lock file (debian-KIND-ARCH.lock) every package is installed at its pinned version;
# without one, the newest, and the lock is written from the result (commit it).
# mmdebstrap --mode=unshare needs no loop devices and no mounts on the host.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
arch=$1 kind=$2 out=$3
suite=${TEITEN_SUITE:-bookworm}
mirror=${TEITEN_MIRROR:-http://deb.debian.org/debian}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:?set SOURCE_DATE_EPOCH (image.mk does)}

lists=("$here/packages-$kind.txt")
[ "$kind" = board ] && [ -f "$here/packages-kernel-$arch.txt" ] && lists+=("$here/packages-kernel-$arch.txt")
lock="$here/debian-$kind-$arch.lock"
if [ -f "$lock" ] && [ -z "${TEITEN_RELOCK:-}" ]; then
    # every package pinned: name=version (lines "name version")
    include=$(grep -v '^#' "$lock" | awk 'NF==2 {printf "%s=%s,", $1, $2}')
    echo "mkbase: $kind/$arch from $lock ($(grep -vc '^#' "$lock") pinned packages)"
else
    include=$(grep -hv '^#' "${lists[@]}" | awk 'NF {printf "%s,", $1}')
    echo "mkbase: $kind/$arch unpinned (no $lock): newest versions, lock written after"
fi

hooks=()
if [ "$kind" = board ]; then
    hooks+=(--essential-hook="$here/hooks/essential-board.sh \"\$1\"")
    hooks+=(--customize-hook="$here/hooks/customize-board.sh \"\$1\"")
fi
tmp="$out.tmp"; rm -rf "$tmp"
mkdir -p "$(dirname "$out")"
mmdebstrap --mode=unshare --format=directory --variant=essential --architectures="$arch" \
    --include="${include%,}" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --aptopt='Acquire::Retries "3"' \
    "${hooks[@]}" \
    --customize-hook='chroot "$1" dpkg-query -W -f "\${Package} \${Version}\n" > "$1/.packages"' \
    --customize-hook='(cd "$1/var/cache/apt/archives" && sha256sum -- *.deb) > "$1/.debs" || true' \
    --customize-hook='copy-out /.debs '"$(dirname "$tmp")" \
    --customize-hook='rm -f "$1/.debs"' \
    --customize-hook='copy-out /.packages '"$(dirname "$tmp")" \
    --customize-hook='rm -f "$1/.packages"' \
    --components=main,non-free-firmware \
    "$suite" "$tmp" \
    "deb $mirror $suite main non-free-firmware" \
    "deb $mirror $suite-updates main non-free-firmware" \
    "deb ${mirror%/debian}/debian-security $suite-security main non-free-firmware"
if [ ! -f "$lock" ] || [ -n "${TEITEN_RELOCK:-}" ]; then
    { echo "# $kind/$arch, Debian $suite, every package of the tree at its version (mkbase.sh)"
      sort "$(dirname "$tmp")/.packages"; } > "$lock"
    echo "mkbase: wrote $lock"
fi
mv "$(dirname "$tmp")/.packages" "$out.packages"
mv "$(dirname "$tmp")/.debs" "$out.debs"
rm -rf "$out"; mv "$tmp" "$out"

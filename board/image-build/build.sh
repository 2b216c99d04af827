#!/bin/bash
# build.sh image | rootfs ARCH | rootfs-check ARCH: the SD image in cached stages.
#
#   base     mkbase.sh board   Debian packages (debian-board-ARCH.lock)     ~15 min arm64
#   builder  mkbase.sh builder compilers for the wheels (never shipped)      ~8 min arm64
#   wheels   mkwheels.sh       PyPI wheels + the project's compiled wheel     ~3 min arm64
#   root     mkroot.sh         base + /opt/teiten venv + board/rpi units      ~1 min
#   image    mkdisk.py         partitions, .img.xz, .bmap, SHA256SUMS, manifest
#
# Each stage is cached in $TEITEN_IMAGE_CACHE (default /var/cache/teiten-image) under a key
# hashed from its inputs; the project's sources come from the committed tree (git archive
# HEAD), so a stage is rebuilt only when what it is made from changed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${TEITEN_IMAGE_CACHE:-/var/cache/teiten-image}
out=${TEITEN_IMAGE_OUT:-$repo/build/image}
mkdir -p "$cache/logs" "$out"
cd "$repo"
# one build at a time per cache (stages share temporary names and logs)
lockarch=${2:-arm64}; [ "${1:-}" = rootfs ] && lockarch=${2:-$(dpkg --print-architecture)}
exec 9>"$cache/.lock-$lockarch"
if ! flock -n 9; then
    echo "build.sh: another $lockarch build holds $cache/.lock-$lockarch; waiting" >&2
    flock 9
fi

log() { echo "build.sh: $*" >&2; }
hash_of() {  # files, directories (by content) and words -> a short sha256
    { for x in "$@"; do
        if [ -f "$x" ]; then echo "${x#"$repo"/}"; cat "$x"; elif [ -d "$x" ]; then
            find "$x" -type f | LC_ALL=C sort | while read -r f; do echo "${f#"$repo"/}"; cat "$f"; done
        else echo "$x"; fi
      done; } | sha256sum | cut -c1-16
}
git_tree() { git rev-parse "HEAD:$1" 2>/dev/null || echo "absent:$1"; }
git_epoch() { local t; t=$(git log -1 --format=%ct -- "$@"); echo "${t:-$(git log -1 --format=%ct)}"; }

base_inputs() {  # ARCH KIND -> the files and words its key is made of
    local arch=$1 kind=$2
    echo "$here/mkbase.sh" "$here/packages-$kind.txt" "$here/debian-$kind-$arch.lock" "arch=$arch" "kind=$kind"
    [ "$kind" = board ] && echo "$here/hooks" "$here/initramfs-modules" "$here/packages-kernel-$arch.txt"
    true
}

base_dir() {  # ARCH KIND -> where it is cached (its key)
    local inputs epoch
    read -r -a inputs <<< "$(base_inputs "$1" "$2" | tr '\n' ' ')"
    epoch=$(git_epoch "${inputs[@]:0:3}")
    echo "$cache/base-$2-$1-$(hash_of "${inputs[@]}" "$epoch")"
}

stage_base() {  # ARCH KIND -> dir
    local arch=$1 kind=$2 dir epoch lock
    lock="$here/debian-$kind-$arch.lock"
    dir=$(base_dir "$arch" "$kind")
    if [ -d "$dir" ]; then log "base $kind/$arch cached ($dir)"; echo "$dir"; return; fi
    epoch=$(git_epoch "$here/mkbase.sh" "$here/packages-$kind.txt" "$lock")
    log "base $kind/$arch: building (log $cache/logs/base-$kind-$arch.log)"
    mkdir -p "$cache/logs"
    local start=$SECONDS
    SOURCE_DATE_EPOCH=$epoch "$here/mkbase.sh" "$arch" "$kind" "$cache/base-$kind-$arch-new" \
        > "$cache/logs/base-$kind-$arch.log" 2>&1 || { tail -n 30 "$cache/logs/base-$kind-$arch.log" >&2; exit 1; }
    dir=$(base_dir "$arch" "$kind")  # a first build wrote the lock: the key follows it
    rm -rf "$dir"; mv "$cache/base-$kind-$arch-new" "$dir"
    mv "$cache/base-$kind-$arch-new.packages" "$dir.packages"
    mv "$cache/base-$kind-$arch-new.debs" "$dir.debs" 2>/dev/null || true
    echo "$epoch" > "$dir.epoch"
    log "base $kind/$arch built in $((SECONDS - start)) s"
    prune "base-$kind-$arch-" "$dir"
    echo "$dir"
}

prune() {  # keep only the newest stage of a kind
    local prefix=$1 keep=$2 d
    for d in "$cache/$prefix"*; do
        case "$d" in "$keep"|"$keep".*) ;; *) rm -rf "$d" ;; esac
    done
}

source_tar() {  # the committed project tree
    local t="$cache/src-$(git rev-parse --short=12 HEAD).tar"
    if [ ! -f "$t" ]; then
        local tmp; tmp=$(mktemp -d "$cache/src.XXXXXX")
        git archive --format=tar -o "$tmp/src.tar" HEAD
        git rev-parse HEAD > "$tmp/.commit"
        tar --owner=0 --group=0 --mtime="@$(git log -1 --format=%ct)" -C "$tmp" -rf "$tmp/src.tar" .commit
        mv "$tmp/src.tar" "$t"; rm -rf "$tmp"
        prune "src-" "$t"
    fi
    echo "$t"
}

stage_wheels() {  # ARCH -> dir
    local arch=$1 builder key dir src epoch
    builder=$(stage_base "$arch" builder)
    epoch=$(git log -1 --format=%ct -- sensor uplink central setup.py pyproject.toml)
    key=$(hash_of "$here/mkwheels.sh" "$here/requirements-board.lock" "${builder##*/}" "$epoch" \
        "$(git_tree sensor)" "$(git_tree uplink)" "$(git_tree central)" \
        "$(git_tree setup.py)" "$(git_tree pyproject.toml)")
    dir="$cache/wheels-$arch-$key"
    if [ -d "$dir" ]; then log "wheels $arch cached"; echo "$dir"; return; fi
    src=$(source_tar)
    log "wheels $arch: building (log $cache/logs/wheels-$arch.log)"
    local start=$SECONDS
    SOURCE_DATE_EPOCH=$epoch "$here/mkwheels.sh" "$builder" "$src" "$dir" \
        > "$cache/logs/wheels-$arch.log" 2>&1 || { tail -n 30 "$cache/logs/wheels-$arch.log" >&2; exit 1; }
    log "wheels $arch built in $((SECONDS - start)) s"
    prune "wheels-$arch-" "$dir"
    echo "$dir"
}

stage_root() {  # ARCH -> dir
    local arch=$1 base wheels key dir src epoch
    base=$(stage_base "$arch" board)
    wheels=$(stage_wheels "$arch")
    epoch=$(git log -1 --format=%ct)
    key=$(hash_of "$here/mkroot.sh" "$here/inchroot.sh" "${base##*/}" "${wheels##*/}" "$epoch" \
        "$(git_tree board/rpi)" "$(git_tree docs/deployment.md)" "$(git_tree docs/flashing.md)" \
        "$(git_tree board/image-build/teiten.toml.example)")
    dir="$cache/root-$arch-$key"
    if [ -d "$dir" ]; then log "root $arch cached ($dir)"; echo "$dir"; return; fi
    src=$(source_tar)
    log "root $arch: building (log $cache/logs/root-$arch.log)"
    local start=$SECONDS
    SOURCE_DATE_EPOCH=$epoch "$here/mkroot.sh" "$base" "$wheels" "$src" "$dir" \
        > "$cache/logs/root-$arch.log" 2>&1 || { tail -n 30 "$cache/logs/root-$arch.log" >&2; exit 1; }
    cp "$base.packages" "$dir.packages"; cp "$base.debs" "$dir.debs" 2>/dev/null || true
    ls "$wheels" > "$dir.wheels"
    echo "$wheels" > "$dir.wheeldir"
    log "root $arch built in $((SECONDS - start)) s"
    prune "root-$arch-" "$dir"
    echo "$dir"
}

image_version() {
    local v
    v=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' sensor/__init__.py)
    echo "${IMAGE_VERSION:-$v-g$(git rev-parse --short=8 HEAD)}"
}

cmd_image() {
    local start=$SECONDS root version name epoch data_mib
    root=$(stage_root arm64)
    version=$(image_version)
    name="teiten-$version-rpi-arm64"
    epoch=$(git log -1 --format=%ct)
    # the data partition holds the spool at its bound (sensor.toml's default), keys, clock
    # (asked of the image's own code, in its root: the default spool bound)
    data_mib=$("$here/inchroot.sh" "$root" /opt/teiten/bin/python -c 'from sensor.edges.config import SpoolConfig as S
m = S().max_bytes >> 20; print((m + m // 4 + 64 + 3) // 4 * 4)')
    log "image $name (data partition $data_mib MiB)"
    rm -f "$out/$name".* "$out/SHA256SUMS"
    SOURCE_DATE_EPOCH=$epoch python3 "$here/mkdisk.py" "$root" "$out/$name.img" --arch arm64 \
        --data-mib "$data_mib" --layout-out "$out/$name.layout.json" ${TEITEN_TOML:+--teiten-toml "$TEITEN_TOML"}
    bmaptool -q create -o "$out/$name.bmap" "$out/$name.img"
    local raw; raw=$(stat -c %s "$out/$name.img")
    python3 "$here/manifest.py" --root "$root" --image "$out/$name.img" --version "$version" \
        --epoch "$epoch" --layout "$out/$name.layout.json" > "$out/teiten-$version.manifest.json"
    local xzs=$SECONDS
    xz -T2 -3 -f "$out/$name.img"
    log "xz in $((SECONDS - xzs)) s"
    (cd "$out" && sha256sum "$name.img.xz" "$name.bmap" "teiten-$version.manifest.json" > SHA256SUMS)
    log "image done in $((SECONDS - start)) s: $out/$name.img.xz" \
        "($(stat -c %s "$out/$name.img.xz") bytes compressed, $raw bytes raw)"
    cat "$out/SHA256SUMS"
}

case "${1:-}" in
image) cmd_image ;;
rootfs) stage_root "${2:-$(dpkg --print-architecture)}" ;;
wheels) stage_wheels "${2:-arm64}" ;;
base) stage_base "${2:-arm64}" "${3:-board}" ;;
base-dir) base_dir "${2:-arm64}" "${3:-board}" ;;
version) image_version ;;
*) echo "usage: build.sh image | rootfs [ARCH] | wheels ARCH | base ARCH KIND | version" >&2; exit 2 ;;
esac

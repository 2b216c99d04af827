#!/bin/bash
# inchroot.sh DIR CMD...: run CMD inside the tree DIR (qemu-user binfmt for a foreign
# architecture), in a private mount namespace with /proc, /dev and /tmp of its own; nothing
# is mounted on the host, and everything is gone when CMD exits.
set -euo pipefail
root=$(cd "$1" && pwd); shift
exec unshare --mount --pid --fork --kill-child --propagation private /bin/bash -c '
    set -e
    r=$1; shift
    mount -t proc proc "$r/proc"
    mount --rbind /dev "$r/dev"
    mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
    exec chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-0}" PYTHONHASHSEED=0 "$@"
' inchroot "$root" "$@"

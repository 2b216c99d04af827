#!/bin/sh
# mmdebstrap essential hook for the board's root ($1): runs before the board's packages are
# installed.  The kernel's and initramfs-tools' own hooks would build the initramfs twice
# under qemu-user (about six minutes each, field notes): update-initramfs is diverted to a
# no-op here and run once, with a short module list, by customize-board.sh.
set -eu
root=$1
mkdir -p "$root/etc/initramfs-tools/conf.d" "$root/boot/firmware"
printf 'MODULES=list\nCOMPRESS=zstd\n' > "$root/etc/initramfs-tools/conf.d/teiten.conf"
cp "$(dirname "$0")/../initramfs-modules" "$root/etc/initramfs-tools/modules"
chroot "$root" dpkg-divert --quiet --local --rename --divert /usr/sbin/update-initramfs.teiten \
    --add /usr/sbin/update-initramfs
printf '#!/bin/sh\necho "update-initramfs: deferred to the image build (customize-board.sh)"\n' \
    > "$root/usr/sbin/update-initramfs"
chmod 0755 "$root/usr/sbin/update-initramfs"

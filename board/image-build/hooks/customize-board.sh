#!/bin/sh
# mmdebstrap customize hook for the board's root ($1): once every package is in.
# One initramfs build; no SSH host keys, machine id or logs baked into the image.
set -eu
root=$1
rm -f "$root/usr/sbin/update-initramfs"
chroot "$root" dpkg-divert --quiet --local --rename --divert /usr/sbin/update-initramfs.teiten \
    --remove /usr/sbin/update-initramfs
for k in "$root"/boot/vmlinuz-*; do
    [ -e "$k" ] || continue
    ver=${k##*/vmlinuz-}
    start=$(date +%s)
    chroot "$root" update-initramfs -c -k "$ver"
    echo "customize-board: initramfs for $ver in $(( $(date +%s) - start )) s"
done
# SSH stays off unless teiten.toml turns it on (teiten-firstboot makes host keys then)
rm -f "$root"/etc/ssh/ssh_host_*
rm -f "$root/etc/systemd/system/multi-user.target.wants/ssh.service" \
      "$root/etc/systemd/system/sshd.service" \
      "$root/etc/systemd/system/sockets.target.wants/ssh.socket"
# the image has no identity: systemd makes a transient machine id on the read-only root
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root/var/cache/ldconfig/aux-cache"
find "$root/var/log" -type f -delete

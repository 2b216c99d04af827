#!/bin/bash
# mkroot.sh BASE WHEELS SRC.tar OUT: the board's root file system as a directory.
# BASE (mkbase.sh board) + the project in a virtual environment at /opt/teiten, installed
# from WHEELS only (nothing is fetched, here or on the board) + the board's units and
# configuration from board/rpi/, laid out for a read-only root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
base=$1 wheels=$2 src=$3 out=$4
: "${SOURCE_DATE_EPOCH:?}"
tmp="$out.tmp"
rm -rf "$tmp" "$tmp.src"
cp -a "$base" "$tmp"
mkdir -p "$tmp.src" "$tmp/wheels"
tar -C "$tmp.src" -xf "$src"
cp "$wheels"/*.whl "$tmp/wheels/"

# The project: pip runs from Debian's own pip wheel, so the venv itself carries no pip.
"$here/inchroot.sh" "$tmp" /bin/sh -ec '
    python3 -m venv --without-pip /opt/teiten
    pipwhl=$(ls /usr/share/python-wheels/pip-*.whl)
    python3 "$pipwhl/pip" --python /opt/teiten/bin/python install -q --no-index \
        --no-cache-dir --find-links /wheels teiten
    rm -rf /opt/teiten/lib/python3*/site-packages/central   # the central site, not the board
    ln -sf /opt/teiten/bin/teiten /usr/bin/teiten
    teiten --version
'
rm -rf "$tmp/wheels"
r=$tmp s=$tmp.src/board/rpi

# units, their drop-ins, helpers
install -d "$r/usr/lib/systemd/system" "$r/usr/libexec/teiten" "$r/usr/share/doc/teiten"
for u in "$s"/*.service "$s"/*.timer "$s"/*.mount; do
    [ -e "$u" ] && install -m 0644 "$u" "$r/usr/lib/systemd/system/"
done
for d in "$s"/*.service.d; do
    [ -d "$d" ] || continue
    install -d "$r/usr/lib/systemd/system/${d##*/}"
    install -m 0644 "$d"/*.conf "$r/usr/lib/systemd/system/${d##*/}/"
done
install -m 0755 "$s/teiten-clock" "$r/usr/libexec/teiten/teiten-clock"
[ -e "$s/teiten-uplink-allow" ] && install -m 0755 "$s/teiten-uplink-allow" "$r/usr/libexec/teiten/uplink-allow"
install -D -m 0644 "$s/teiten.sysusers" "$r/usr/lib/sysusers.d/teiten.conf"
install -D -m 0644 "$s/teiten.tmpfiles" "$r/usr/lib/tmpfiles.d/teiten.conf"
install -D -m 0644 "$s/image/teiten-image.tmpfiles" "$r/usr/lib/tmpfiles.d/teiten-image.conf"
install -D -m 0644 "$s/90-teiten.conf" "$r/usr/lib/sysctl.d/90-teiten.conf"
install -m 0644 "$s/image/nftables-silent.conf" "$r/etc/nftables.conf"
install -D -m 0644 "$s/image/journald-teiten.conf" "$r/etc/systemd/journald.conf.d/teiten.conf"
install -D -m 0644 "$s/image/system-teiten.conf" "$r/etc/systemd/system.conf.d/teiten.conf"
install -D -m 0644 "$s/image/resolved-teiten.conf" "$r/etc/systemd/resolved.conf.d/teiten.conf"
install -D -m 0644 "$s/image/ssh.service.d-teiten.conf" "$r/etc/systemd/system/ssh.service.d/teiten.conf"
[ -d "$r/etc/ssh" ] && install -D -m 0644 "$s/image/sshd_config-teiten.conf" "$r/etc/ssh/sshd_config.d/teiten.conf"
install -m 0644 "$s/image/fstab" "$r/etc/fstab"
install -m 0644 "$s/sensor.toml" "$r/usr/share/doc/teiten/sensor.toml"
for doc in deployment.md flashing.md; do
    [ -e "$tmp.src/docs/$doc" ] && install -m 0644 "$tmp.src/docs/$doc" "$r/usr/share/doc/teiten/"
done
[ -e "$here/teiten.toml.example" ] && install -m 0644 "$here/teiten.toml.example" "$r/usr/share/doc/teiten/"

# users exist in the image (the root is read-only at boot); same ids every build
systemd-sysusers --root="$r" >/dev/null
# read-only root: what changes is elsewhere
rm -rf "$r/etc/teiten"; ln -s /var/lib/teiten/etc "$r/etc/teiten"
rm -rf "$r"/boot/firmware/*   # the boot slots hold these; /boot/firmware stays empty
ln -sf /run/systemd/resolve/resolv.conf "$r/etc/resolv.conf"
install -d -m 0750 "$r/var/lib/teiten"
echo teiten > "$r/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$r/etc/hosts"
: > "$r/etc/machine-id"

# what starts
enable=(teiten-firstboot.service teiten-clock.service teiten-clock-save.timer
        var-lib-teiten.mount teiten-netsetup.service teiten-sensor.service
        teiten-uplink.service systemd-networkd.service systemd-timesyncd.service nftables.service)
[ -e "$r/usr/lib/systemd/system/teiten-uplink-allow.timer" ] && enable+=(teiten-uplink-allow.timer)
[ -e "$r/lib/systemd/system/systemd-resolved.service" ] && enable+=(systemd-resolved.service)
[ -e "$r/lib/systemd/system/ssh.service" ] && enable+=(ssh.service)
systemctl --root="$r" enable "${enable[@]}" >/dev/null 2>&1 || systemctl --root="$r" enable "${enable[@]}"
systemctl --root="$r" mask e2scrub_all.timer e2scrub_reap.service >/dev/null 2>&1 || true
echo "TEITEN_COMMIT=$(cat "$tmp.src/.commit" 2>/dev/null || echo unknown)" > "$r/usr/lib/teiten-release"
find "$r/var/log" "$r/var/cache" -type f -delete 2>/dev/null || true
rm -rf "$tmp.src" "$out"
mv "$tmp" "$out"
echo "mkroot: $out ($(du -sm "$out" | cut -f1) MiB)"

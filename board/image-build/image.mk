# board/image-build/image.mk: the SD image (included by the Makefile).
#   make image              the arm64 image: build/image/teiten-<version>-rpi-arm64.img.xz,
#                           .bmap, SHA256SUMS, teiten-<version>.manifest.json
#   make image-boot-test    boot it under qemu-system-aarch64 -M virt and check it
#   make image-rootfs-test  the root stage for this machine's architecture, checked in a
#                           chroot (cached: fast when nothing it is made from changed)
# Stages are cached in $(TEITEN_IMAGE_CACHE); docs/flashing.md has the numbers.
IMAGE_DIR := board/image-build
TEITEN_IMAGE_CACHE ?= /var/cache/teiten-image
export TEITEN_IMAGE_CACHE
# what building needs on the host (the rootfs test needs the first line only)
IMAGE_APT_ROOTFS := mmdebstrap dosfstools mtools fdisk e2fsprogs xz-utils
IMAGE_APT_ARM64 := qemu-user-static binfmt-support arch-test qemu-system-arm ipxe-qemu bmap-tools \
	openssh-client tcpdump

.PHONY: image image-boot-test image-rootfs-test image-deps image-binfmt

image-deps: .stamp-image-deps
.stamp-image-deps:
	@if [ "$$(id -u)" != 0 ]; then echo "make: run as root (mmdebstrap, binfmt, namespaces)"; exit 1; fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		$(IMAGE_APT_ROOTFS) $(IMAGE_APT_ARM64)
	touch $@

# arm64 binaries in a chroot run under qemu-user (field notes: binfmt_misc is not mounted)
image-binfmt: image-deps
	@mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
	@update-binfmts --enable qemu-aarch64 2>/dev/null || true
	@arch-test arm64 >/dev/null || { echo "make: arm64 binaries do not run here (binfmt)"; exit 1; }

image: install image-binfmt
	PYTHON=$(abspath $(PY)) $(IMAGE_DIR)/build.sh image

image-boot-test: install image-binfmt
	@ls build/image/teiten-*-rpi-arm64.img.xz >/dev/null 2>&1 || $(MAKE) image
	$(PY) $(IMAGE_DIR)/boot_test.py

image-rootfs-test: install image-deps
	$(VENV)/bin/pytest -ra -p no:cacheprovider tests/privileged/test_image_rootfs.py

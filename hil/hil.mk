# hil/hil.mk: the hardware-in-the-loop suite (included by the Makefile).
#   make hil          the suite on the virtual board and the ssh stand-in (what `make test`
#                     runs of hil/), results in build/hil-results/<time>/
#   make hil-qemu     the whole suite on the built SD image under qemu-system-aarch64 -M virt
#                     (HIL_POWER_CUTS=50 cuts in the power-cut test; HIL_IMAGE= the .img.xz)
#   make hil-bench HIL_TARGET=ssh://root@PI HIL_ARGS="--capture-port enp3s0 --central-host
#                     192.0.2.100 --power-cycle-cmd '...'"   a lab Pi (docs/hil.md)
# openssh-server is the stand-in's sshd (run in a namespace of the test; the host's own
# ssh service is switched off again after the install, as the Makefile does for mosquitto).
HIL_APT := openssh-server openssh-client tcpreplay tcpdump
HIL_STAMP := $(shell date -u +%Y%m%dT%H%M%SZ)
HIL_IMAGE ?= $(lastword $(sort $(wildcard build/image/teiten-*-rpi-arm64.img.xz)))
HIL_POWER_CUTS ?= 50
HIL_TARGET ?=
HIL_ARGS ?=

.PHONY: hil hil-deps hil-qemu hil-bench

hil-deps: .stamp-hil-deps
.stamp-hil-deps:
	@if [ "$$(id -u)" != 0 ]; then echo "make: run as root (namespaces, sshd, qemu)"; exit 1; fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(HIL_APT)
	-systemctl disable --now ssh >/dev/null 2>&1 || service ssh stop >/dev/null 2>&1 || true
	touch $@

hil: install hil-deps
	$(VENV)/bin/pytest -ra -p no:cacheprovider hil --hil-results build/hil-results/$(HIL_STAMP)

hil-qemu: install hil-deps image-deps
	@test -n "$(HIL_IMAGE)" || $(MAKE) image
	$(VENV)/bin/pytest -ra -p no:cacheprovider hil \
		--target qemu:$(or $(HIL_IMAGE),$(lastword $(sort $(wildcard build/image/teiten-*-rpi-arm64.img.xz)))) \
		--power-cuts $(HIL_POWER_CUTS) --hil-results build/hil-results/$(HIL_STAMP)-qemu $(HIL_ARGS)

hil-bench: install hil-deps
	@test -n "$(HIL_TARGET)" || { echo "make: HIL_TARGET=ssh://root@PI (docs/hil.md)"; exit 1; }
	$(VENV)/bin/pytest -ra -p no:cacheprovider hil --target $(HIL_TARGET) \
		--power-cuts $(or $(HIL_POWER_CUTS),200) --hil-results build/hil-results/$(HIL_STAMP)-bench \
		$(HIL_ARGS)

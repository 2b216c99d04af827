# Teiten: the two commands are `make demo` and `make test` (run as root on Debian 12).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := build-essential nftables libpcap-dev python3-dev python3-venv tcpdump mosquitto mosquitto-clients \
	iproute2 strace zmap masscan tcpreplay util-linux openssl chromium fonts-ipafont-gothic systemd \
	mmdebstrap dosfstools mtools fdisk e2fsprogs xz-utils openssh-server openssh-client

.PHONY: demo test install system-deps lint typecheck unit privileged bench clean units-check

system-deps: .stamp-system
.stamp-system:
	@if [ "$$(id -u)" != 0 ]; then echo "make: run as root (it installs Debian packages and makes network namespaces)"; exit 1; fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES)
	# the packaged broker must not hold ports the tests and the demo use; they start their own
	-systemctl disable --now mosquitto >/dev/null 2>&1 || service mosquitto stop >/dev/null 2>&1 || true
	# nor may the packaged sshd: the HIL ssh stand-in runs its own inside a namespace
	-systemctl disable --now ssh >/dev/null 2>&1 || service ssh stop >/dev/null 2>&1 || true
	touch $@

install: system-deps .stamp-venv
.stamp-venv: pyproject.toml setup.py sensor/edges/_pcap.c $(wildcard sensor/fast/src/*.[ch]) central/_rollup.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# compat: the checkout on sys.path by a .pth line, not setuptools' import hook, which
	# every command paid for at start-up (about 15 ms: pathlib, importlib.util, re...)
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	# the project's bytecode, as pip writes it when it installs a wheel: an editable install
	# writes none, and where PYTHONDONTWRITEBYTECODE is set every `teiten` command would
	# compile its modules from source at each start (about 20 ms of `teiten replay`)
	$(PY) -m compileall -q -j 0 sensor wire uplink central
	touch $@

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	# the layout's contracts (pyproject.toml [tool.importlinter]; docs/architecture.md)
	$(VENV)/bin/lint-imports

unit: install
	$(VENV)/bin/pytest -m "not privileged" tests

privileged: install
	$(VENV)/bin/pytest -m privileged tests hil

# the board's systemd units: verify each, print each service's exposure score, fail above
# 2.5 (own user) / 5.0 (root); systemd-analyze only, systemd need not be running
units-check: system-deps
	$(PYTHON) board/rpi/check-units

test: install lint units-check
	$(VENV)/bin/pytest -ra -p no:cacheprovider

demo: install
	$(PY) -m central.demo

bench: install
	$(PY) -m bench

# the SD image (board/image-build/): make image, make image-boot-test, make image-rootfs-test
-include board/image-build/image.mk
# hardware-in-the-loop (hil/): make hil, make hil-qemu, make hil-bench (docs/hil.md)
-include hil/hil.mk

clean:
	rm -rf $(VENV) build *.egg-info .stamp-* demo-out

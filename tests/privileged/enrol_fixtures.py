"""Fixtures for enrolment tests: a real Mosquitto with the enrolment listener, the central
receiver and enrolment service, and boards with a real FAT card (mtools).

`site` starts the broker (8883-style mutual TLS, WebSockets-TLS and the enrolment listener
on free loopback ports, rendered from central/mosquitto/), `teiten central receive` as a
subprocess and `EnrolService` in a thread; `site.enroll(...)` runs `teiten central enroll`
and returns its JSON; `site.board(...)` makes a card whose teiten.toml points at the site.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mqtt_fixtures import (
    REPO,
    Broker,
    Central,
    Pki,
    free_port,
    wait_for,
    wait_port,
)

from central.ca import ensure_enrol_client, write_server_chain
from central.config import enrol_acl_text, render_mosquitto_conf
from central.enrol import EnrolService, EnrolStore, load_enrolment

MTOOLS_ENV = dict(os.environ, MTOOLS_SKIP_CHECK="1")


class EnrolBroker(Broker):
    """`Broker` plus the enrolment listener (password file + its own ACL)."""

    def __init__(self, workdir: Path, pki: Pki) -> None:
        super().__init__(workdir, pki)
        self.enrol_port = free_port()
        files = ensure_enrol_client(pki.files.dir)
        chain = write_server_chain(files.dir)
        enrol_acl = self.dir / "enrol.acl"
        enrol_acl.write_text(enrol_acl_text())
        self.passwd = self.dir / "enrol.passwd"
        self.passwd.write_text("")
        self.pid_file = self.dir / "mosquitto.pid"
        self.conf.write_text(render_mosquitto_conf(
            data_dir=self.data, acl_file=self.dir / "acl", cafile=files.ca_crt,
            certfile=files.server_crt, keyfile=files.server_key, tls_port=self.tls_port,
            ws_port=self.ws_port, bind="127.0.0.1",
            extra="user root" if os.geteuid() == 0 else "",
            enrol_port=self.enrol_port, enrol_certfile=chain, password_file=self.passwd,
            enrol_acl_file=enrol_acl,
        ))

    def start(self) -> None:
        super().start()
        wait_port(self.enrol_port)
        assert self.proc is not None
        self.pid_file.write_text(f"{self.proc.pid}\n")


@dataclass
class CardBoard:
    """A board: its data directory and its FAT card (an image, read with mtools)."""

    root: Path
    image: Path
    sensor_id: str

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    def put(self, name: str, text: str) -> None:
        src = self.root / f"upload-{name}"
        src.write_text(text)
        subprocess.run(["mcopy", "-o", "-i", str(self.image), str(src), f"::{name}"],
                       check=True, env=MTOOLS_ENV)

    def get(self, name: str) -> str | None:
        r = subprocess.run(["mtype", "-i", str(self.image), f"::{name}"], capture_output=True,
                           text=True, env=MTOOLS_ENV, check=False)
        return r.stdout if r.returncode == 0 else None

    def firstboot(self) -> dict[str, Any]:
        r = subprocess.run(
            [sys.executable, "-m", "sensor.cli", "firstboot", "--card", str(self.image),
             "--etc", str(self.etc), "--run", str(self.root / "run"), "--ssh-dir",
             str(self.root / "ssh"), "--no-chown", "--json"],
            capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
        assert r.returncode in (0, 1), r.stderr
        out: dict[str, Any] = json.loads(r.stdout)
        return out

    def enrol(self, timeout: float = 20.0) -> tuple[int, dict[str, Any]]:
        """`teiten enrol` as the boot unit runs it."""
        r = subprocess.run(
            [sys.executable, "-m", "sensor.cli", "enrol", "--card", str(self.image), "--etc",
             str(self.etc), "--no-chown", "--json", "--timeout", str(timeout)],
            capture_output=True, text=True, cwd=REPO, timeout=timeout + 60, check=False)
        assert r.returncode in (0, 1), r.stderr
        out: dict[str, Any] = json.loads(r.stdout)
        return r.returncode, out

    @property
    def cert(self) -> Path:
        return self.etc / "sensor.crt"

    @property
    def tls_key(self) -> Path:
        return self.etc / "tls.key"

    @property
    def ca(self) -> Path:
        return self.etc / "ca.crt"

    @property
    def signing_key(self) -> Path:
        return self.root / "data" / "sensor.key"

    @property
    def spool(self) -> Path:
        return self.root / "data" / "spool"


class Site:
    """Broker + receiver (subprocess) + enrolment service (thread) on loopback."""

    def __init__(self, root: Path, pki: Pki, *, cert_lifetime: str = "90d",
                 grace: str = "15m") -> None:
        self.root = root
        self.pki = pki
        self.broker = EnrolBroker(root / "broker", pki)
        self.broker.start()
        self.central = Central(root / "central", pki, self.broker)
        with self.central.conf.open("a") as f:
            f.write(
                f'\n[enrolment]\nca_dir = "{pki.files.dir}"\npassword_file = '
                f'"{self.broker.passwd}"\nbroker_pid_file = "{self.broker.pid_file}"\n'
                f'enrol_port = {self.broker.enrol_port}\ncert_lifetime = "{cert_lifetime}"\n'
                f'grace = "{grace}"\nclone_scan = "2s"\nkeepalive_s = 5\n'
                f'acl_file = "{self.broker.dir / "acl"}"\n')
        self.central.start()
        self.cfg = load_enrolment(self.central.conf)
        self.store = EnrolStore(self.cfg.database)
        self.service = EnrolService(self.cfg, self.store)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.service.run, args=(self._stop,),
                                        daemon=True)
        self._thread.start()
        wait_for(self.service.connected.is_set, 15, "the enrolment service to connect")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.store.close()
        self.central.stop()
        self.broker.stop()

    def teiten(self, *argv: str) -> tuple[int, str]:
        """A `teiten` command in this process; (exit status, standard output)."""
        from sensor.cli import main

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = main(list(argv))
        return rc, buf.getvalue()

    def enroll(self, sensor_id: str, *extra: str) -> dict[str, Any]:
        rc, out = self.teiten("central", "enroll", sensor_id, "--config",
                              str(self.central.conf), "--json", *extra)
        assert rc == 0, out
        doc: dict[str, Any] = json.loads(out)
        return doc

    def card_toml(self, root: Path, sensor_id: str) -> str:
        return card_toml(root, sensor_id, self.broker)

    def board(self, name: str, sensor_id: str, enrol_toml: str) -> CardBoard:
        root = self.root / "boards" / name
        root.mkdir(parents=True)
        image = root / "teiten-fat.img"
        subprocess.run(["mkfs.vfat", "-C", "-n", "TEITEN", str(image), "8192"], check=True,
                       capture_output=True)
        b = CardBoard(root, image, sensor_id)
        b.put("teiten.toml", card_toml(root, sensor_id, self.broker) + "\n" + enrol_toml)
        return b


def card_toml(root: Path, sensor_id: str, broker: Broker) -> str:
    return f"""# teiten.toml on the card
[sensor]
id = "{sensor_id}"
topology = "dedicated"
key = "{root}/data/sensor.key"

[capture]
interface = "eth1"
darknet = ["198.51.100.0/24"]

[spool]
path = "{root}/data/spool"

[uplink]
host = "127.0.0.1"
port = {broker.tls_port}
ws_port = {broker.ws_port}
ca = "{root}/etc/ca.crt"
cert = "{root}/etc/sensor.crt"
key = "{root}/etc/tls.key"

[board]
interface = "eth0"
address = "dhcp"
"""


@pytest.fixture
def make_site(tmp_path: Path, pki: Pki) -> Iterator[Any]:
    """`make_site(cert_lifetime=..., grace=...)`: a Site, closed after the test."""
    for tool in ("mkfs.vfat", "mcopy", "mtype"):
        assert shutil.which(tool), f"{tool} missing: apt-get install dosfstools mtools"
    made: list[Site] = []

    def make(**kw: str) -> Site:
        s = Site(tmp_path / f"site{len(made)}", pki, **kw)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            s.close()


@pytest.fixture
def site(make_site: Any) -> Site:
    s: Site = make_site()
    return s

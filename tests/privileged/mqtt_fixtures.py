"""Shared fixtures for uplink tests against a real Mosquitto with mutual TLS.

`pki` makes a central CA (with broker and receiver certificates) once per session and issues
sensor certificates from board-made CSRs on demand.  `broker` starts a real `mosquitto` on
free loopback ports (TLS and WebSockets-TLS), rendered from `central/mosquitto/`, and can
SIGKILL and restart it on the same ports with the same persistence directory.
Import the fixtures from a test module: `from tests.privileged.mqtt_fixtures import *`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from central.ca import CAFiles, init_ca, issue_sensor
from central.config import acl_text, render_mosquitto_conf
from uplink.certs import make_csr

REPO = Path(__file__).resolve().parents[2]
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def wait_for(cond: object, timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Pki:
    files: CAFiles
    boards: Path
    _issued: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    @property
    def ca(self) -> Path:
        return self.files.ca_crt

    def sensor(self, sensor_id: str) -> tuple[Path, Path]:
        """(cert, key) for a sensor; the key is made 'on the board' and only a CSR leaves it."""
        if sensor_id not in self._issued:
            key = self.boards / f"{sensor_id}.tls.key"
            cert = self.boards / f"{sensor_id}.crt"
            cert.write_bytes(issue_sensor(self.files.dir, sensor_id, make_csr(key, sensor_id)))
            self._issued[sensor_id] = (cert, key)
        return self._issued[sensor_id]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    files = init_ca(root / "ca", hosts=["localhost", "127.0.0.1"])
    boards = root / "boards"
    boards.mkdir()
    return Pki(files, boards)


class Broker:
    """A real mosquitto process; `kill()` is SIGKILL, `restart()` reuses ports and data."""

    def __init__(self, workdir: Path, pki: Pki) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pki = pki
        self.tls_port = free_port()
        self.ws_port = free_port()
        self.data = self.dir / "data"
        self.data.mkdir(exist_ok=True)
        self.log = self.dir / "mosquitto.log"
        acl = self.dir / "acl"
        acl.write_text(acl_text())
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            render_mosquitto_conf(
                data_dir=self.data,
                acl_file=acl,
                cafile=pki.files.ca_crt,
                certfile=pki.files.server_crt,
                keyfile=pki.files.server_key,
                tls_port=self.tls_port,
                ws_port=self.ws_port,
                bind="127.0.0.1",
                extra="user root" if os.geteuid() == 0 else "",
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        logf = self.log.open("ab")
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=logf, stderr=subprocess.STDOUT
        )
        logf.close()
        try:
            wait_port(self.tls_port)
            wait_port(self.ws_port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                "mosquitto did not start:\n" + self.log.read_text()[-3000:]
            ) from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def broker(tmp_path: Path, pki: Pki) -> Iterator[Broker]:
    if not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto is not installed: `apt-get install mosquitto` (make test does)")
    b = Broker(tmp_path / "broker", pki)
    b.start()
    try:
        yield b
    finally:
        b.stop()


def python() -> str:
    return sys.executable

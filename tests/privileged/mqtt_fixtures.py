"""Shared fixtures for uplink tests against a real Mosquitto with mutual TLS.

`pki` makes a central CA (with broker and receiver certificates and an empty CRL) once per
session and issues sensor certificates from board-made CSRs on demand.  `broker` starts a
real `mosquitto` on free loopback ports (TLS and WebSockets-TLS), rendered from
`central/mosquitto/`, and can SIGKILL, restart or reload (SIGHUP) it on the same ports with
the same persistence directory.
Import the fixtures from a test module: `from tests.privileged.mqtt_fixtures import *`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from central.ca import CAFiles, init_ca, issue_sensor
from central.config import acl_text, render_mosquitto_conf
from central.store import Store
from sensor.edges.certs import make_csr
from sensor.edges.uplink_config import UplinkConfig

REPO = Path(__file__).resolve().parents[2]
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never one this process handed out before: the
    kernel may give a just-closed ephemeral port again, and a broker's TLS and WebSockets
    listeners (or the enrolment listener) picked one after the other must differ (once they
    did not, and mosquitto failed to open its second listener)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


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


def stop_process(proc: subprocess.Popen[str] | subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 5 s, a child that is still running."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
        # Started means "mosquitto version ... running" logged: the listen sockets come
        # first, and a SIGHUP sent between the two killed it (no handler installed yet).
        started = self.log_text().count(" running") if self.log.exists() else 0
        logf = self.log.open("ab")
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=logf, stderr=subprocess.STDOUT
        )
        logf.close()
        try:
            wait_port(self.tls_port)
            wait_port(self.ws_port)
            wait_for(lambda: self.log_text().count(" running") > started, 10,
                     "mosquitto's 'running' line")
        except (TimeoutError, AssertionError):
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

    def reload(self) -> None:
        """SIGHUP, what `systemctl reload mosquitto` sends: re-reads the ACL and the CRL.

        Not used after a revocation: Mosquitto 2.0.11 then segfaulted on a refused
        WebSockets-TLS client (tests/privileged/test_revocation.py); restart instead."""
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        stop_process(self.proc)
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


# ---------------------------------------------------------------- sensors and central
def summary_bytes(sensor_id: str, hour_start: int, packets: int = 0) -> bytes:
    from wire.summary import Summary, encode_summary

    s = Summary(
        sensor_id,
        hour_start,
        3600,
        (),
        packets,
        0,
        0,
        0,
        False,
        0,
        0,
        (),
        (),
        (),
        (),
        (),
        (),
        (),
        {},
        {},
        {},
    )
    return encode_summary(s)


class SensorSim:
    """A board: signing key, TLS key+cert from the PKI, a spool, and an uplink thread."""

    def __init__(self, root: Path, sensor_id: str, pki: Pki, *, enrolled: bool = True) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from sensor.edges.spool import Spool

        self.id = sensor_id
        self.enrolled = enrolled
        self.dir = root / sensor_id
        self.dir.mkdir(parents=True)
        self.key = Ed25519PrivateKey.generate()
        self.cert, self.tls_key = pki.sensor(sensor_id)
        self.ca = pki.ca
        self.spool = Spool(self.dir / "spool")
        self.next_seq = (1 << 32) | 1  # epoch 1, counter 1
        self.uplink: object | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def seal(self, hour_start: int, seq: int, packets: int = 0) -> bytes:
        from wire.envelope import seal

        return seal(
            summary_bytes(self.id, hour_start, packets),
            sensor_id=self.id,
            sequence=seq,
            hour_start=hour_start,
            created_us=(hour_start + 3600) * 1_000_000,
            key=self.key,
        )

    def fill(self, hours: int, start_hour: int = 1_800_000_000 // 3600 * 3600) -> list[int]:
        seqs = []
        for i in range(hours):
            h = start_hour + 3600 * i
            seq = self.next_seq
            self.next_seq += 1
            self.spool.write(self.seal(h, seq), h, seq)
            seqs.append(seq)
        return seqs

    def config(self, broker: Broker, **kw: object) -> UplinkConfig:
        base: dict[str, object] = dict(
            sensor_id=self.id,
            spool=self.spool.path,
            host="127.0.0.1",
            port=broker.tls_port,
            ws_port=broker.ws_port,
            ca=self.ca,
            cert=self.cert,
            key=self.tls_key,
            max_in_flight=8,
            ack_timeout_s=3.0,
            backoff_min_s=0.2,
            backoff_max_s=1.0,
            health_interval_s=1.0,
            keepalive_s=5,
            connect_timeout_s=2.0,
        )
        base.update(kw)
        return UplinkConfig(**base)  # type: ignore[arg-type]

    def start(self, broker: Broker, **kw: object) -> None:
        from uplink.mqtt import MqttUplink

        up = MqttUplink(
            self.config(broker, **kw), self.spool, software_version="test", spool_poll_s=0.2
        )
        self.uplink = up
        self._stop.clear()
        self._thread = threading.Thread(target=up.run, args=(self._stop,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None

    def pending(self) -> int:
        return len(self.spool.entries())

    def toml(self, broker: Broker) -> Path:
        """sensor.toml for `teiten uplink` in a subprocess."""
        c = self.config(broker)
        p = self.dir / "sensor.toml"
        p.write_text(
            f'[sensor]\nid = "{self.id}"\n[spool]\npath = "{self.spool.path}"\n'
            f'[uplink]\nhost = "127.0.0.1"\nport = {c.port}\nws_port = {c.ws_port}\n'
            f'ca = "{c.ca}"\ncert = "{c.cert}"\nkey = "{c.key}"\nack_timeout_s = 3.0\n'
            "backoff_min_s = 0.2\nbackoff_max_s = 1.0\nhealth_interval_s = 1.0\nkeepalive_s = 5\n"
        )
        return p


class Central:
    """sensors.toml, central.toml and `teiten central receive` as a subprocess."""

    def __init__(self, root: Path, pki: Pki, broker: Broker) -> None:
        self.dir = root
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db = self.dir / "central.db"
        self.sensors = self.dir / "sensors.toml"
        self.sensors.write_text("[sensors]\n")
        self.log = self.dir / "receiver.log"
        self.conf = self.dir / "central.toml"
        self.conf.write_text(
            f'[receiver]\nhost = "127.0.0.1"\nport = {broker.tls_port}\n'
            f'ca = "{pki.files.ca_crt}"\ncert = "{pki.files.receiver_crt}"\n'
            f'key = "{pki.files.receiver_key}"\ndatabase = "{self.db}"\n'
            f'sensors = "{self.sensors}"\nkeepalive_s = 5\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def enroll(self, *sensors: SensorSim) -> None:
        from wire.keys import public_key_text

        lines = ["[sensors]"]
        for s in sensors:
            lines.append(f'[sensors.{s.id}]\npublic_key = "{public_key_text(s.key.public_key())}"')
        self.sensors.write_text("\n".join(lines) + "\n")

    def start(self, prelude: str = "") -> None:
        code = (
            prelude
            + "\nimport sys\nfrom sensor.cli import main\n"
            + f"sys.exit(main(['central', 'receive', '-v', '--config', {str(self.conf)!r}]))\n"
        )
        logf = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=REPO,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        logf.close()
        wait_for(
            lambda: "connected (session" in self.log_text() or self.proc.poll() is not None,
            15,
            "the receiver to connect",
        )
        if self.proc.poll() is not None:
            raise RuntimeError("receiver exited:\n" + self.log_text()[-3000:])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        stop_process(self.proc)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def store(self) -> Store:
        return Store(self.db)

    def count(self) -> int:
        if not self.db.exists():
            return 0
        with self.store() as s:
            return s.count_summaries()


@pytest.fixture
def central(tmp_path: Path, pki: Pki, broker: Broker) -> Iterator[Central]:
    c = Central(tmp_path / "central", pki, broker)
    try:
        yield c
    finally:
        c.stop()

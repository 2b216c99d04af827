"""Revoking a sensor against a real Mosquitto: `teiten central revoke` + a broker restart.

A sensor that connected before is refused at the TLS handshake on the MQTT-TLS listener
after the revocation and a restart; another sensor still connects and publishes.  Mosquitto
2.0's WebSockets-TLS listener ignores `crlfile` (eclipse-mosquitto/mosquitto#3042), so there
the revoked sensor still completes the handshake and the ACL denial written by
`revoke --acl` refuses its publishes.  Restart, not reload: Mosquitto 2.0.11 does re-read
`crlfile` on SIGHUP, but then segfaulted (in libssl) on the next refused WebSockets-TLS
client in this test.  Each test uses its own CA, so the session's CRL stays empty.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mqtt_fixtures import MOSQUITTO, Broker, Pki
from paho.mqtt.enums import CallbackAPIVersion

from central.ca import init_ca
from central.keyring import load_keyring
from sensor.cli import main as teiten
from wire.keys import public_key_text

pytestmark = pytest.mark.privileged


def handshake(pki: Pki, sensor_id: str, port: int) -> str:
    """A TLS 1.2 handshake with the sensor's certificate: 'ok' or the SSL error text.

    TLS 1.2, so the broker's verdict on the client certificate arrives within the handshake
    (in TLS 1.3 it comes after the client's Finished, at the first read)."""
    cert, key = pki.sensor(sensor_id)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(pki.ca)
    ctx.load_cert_chain(cert, key)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            return "ok"
    except ssl.SSLError as exc:
        return str(exc)


def publish(pki: Pki, sensor_id: str, port: int, transport: str = "tcp") -> str:
    """Connect with paho (MQTT 5, default TLS) and publish QoS 1: the PUBACK reason, or why not."""
    cert, key = pki.sensor(sensor_id)
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"probe-{sensor_id}-{transport}",
        protocol=mqtt.MQTTv5,
        transport=transport,  # type: ignore[arg-type]
    )
    c.tls_set(ca_certs=str(pki.ca), certfile=str(cert), keyfile=str(key))
    done = threading.Event()
    res: dict[str, str] = {}

    def on_connect(c: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
        res["connect"] = str(rc)
        c.publish(f"teiten/v1/{sensor_id}/health", b"{}", qos=1)

    def on_publish(c: mqtt.Client, u: object, mid: int, rc: object, p: object) -> None:
        res["puback"] = str(rc)
        done.set()

    c.on_connect = on_connect
    c.on_publish = on_publish
    c.on_disconnect = lambda *a: done.set()
    try:
        c.connect("127.0.0.1", port, keepalive=5)
    except OSError as exc:
        return f"refused: {exc}"
    c.loop_start()
    try:
        done.wait(5)
    finally:
        c.disconnect()
        c.loop_stop()
    return res.get("puback", f"no puback ({res})")


def test_revoked_sensor_refused_after_reload_other_sensor_still_connects(tmp_path: Path) -> None:
    if not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto is not installed: `apt-get install mosquitto` (make test does)")
    files = init_ca(tmp_path / "ca", hosts=["localhost", "127.0.0.1"])
    (tmp_path / "boards").mkdir()
    pki = Pki(files, tmp_path / "boards")
    sensors = tmp_path / "sensors.toml"
    keys = {s: public_key_text(Ed25519PrivateKey.generate().public_key()) for s in ("a", "b")}
    sensors.write_text(
        f'[sensors.s-gone]\npublic_key = "{keys["a"]}"\n'
        f'[sensors.s-stay]\npublic_key = "{keys["b"]}"\n'
    )
    central = tmp_path / "central.toml"
    central.write_text(
        f'[receiver]\nhost = "127.0.0.1"\nport = 8883\nca = "{files.ca_crt}"\n'
        f'cert = "{files.receiver_crt}"\nkey = "{files.receiver_key}"\n'
        f'database = "{tmp_path / "central.db"}"\nsensors = "{sensors}"\n'
    )
    broker = Broker(tmp_path / "broker", pki)
    broker.start()
    try:
        for s in ("s-gone", "s-stay"):
            assert handshake(pki, s, broker.tls_port) == "ok"
            assert publish(pki, s, broker.tls_port) == "No matching subscribers"
            assert publish(pki, s, broker.ws_port, "websockets") == "No matching subscribers"

        rc = teiten(
            ["central", "revoke", "s-gone", "--dir", str(files.dir), "--reason", "key-compromise",
             "--acl", str(broker.dir / "acl"), "--config", str(central), "--json"]
        )  # fmt: skip
        assert rc == 0
        assert load_keyring(sensors).get("s-gone").revoked  # type: ignore[union-attr]
        assert not load_keyring(sensors).get("s-stay").revoked  # type: ignore[union-attr]

        broker.restart()  # `systemctl restart mosquitto`; also drops the sensor's sessions
        assert "CERTIFICATE_REVOKED" in handshake(pki, "s-gone", broker.tls_port)
        assert publish(pki, "s-gone", broker.tls_port).startswith(("refused", "no puback"))
        # WebSockets-TLS: the handshake succeeds (Mosquitto 2.0 ignores crlfile there); the
        # ACL denies every topic
        assert publish(pki, "s-gone", broker.ws_port, "websockets") == "Not authorized"
        assert handshake(pki, "s-stay", broker.tls_port) == "ok"
        assert publish(pki, "s-stay", broker.tls_port) == "No matching subscribers"
        assert publish(pki, "s-stay", broker.ws_port, "websockets") == "No matching subscribers"
        assert broker.proc is not None and broker.proc.poll() is None  # still running
    finally:
        broker.stop()
    assert "certificate verify failed" in broker.log_text()


def test_ca_crl_refresh_keeps_broker_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = init_ca(tmp_path / "ca", hosts=["localhost", "127.0.0.1"])
    (tmp_path / "boards").mkdir()
    pki = Pki(files, tmp_path / "boards")
    broker = Broker(tmp_path / "broker", pki)
    broker.start()
    try:
        assert teiten(["central", "ca", "crl", "--dir", str(files.dir), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["revoked_certificates"] == 0
        broker.restart()
        assert publish(pki, "s-1", broker.tls_port) == "No matching subscribers"
    finally:
        broker.stop()

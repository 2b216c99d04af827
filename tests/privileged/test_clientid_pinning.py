"""No client may take another's client id (issue 11): a real Mosquitto, real clients.

The broker pins every client id to the certificate's CN (`use_username_as_clientid` on
both listeners, after `use_identity_as_username`), so an enrolled, or revoked, sensor
that connects claiming `central-receiver` (or another sensor's id) is connected under
its own name: the receiver is not disconnected, its persistent session is neither taken
over nor wiped, and an envelope published in that window is stored without a re-send.

Without the pinning these tests fail: Mosquitto logs "already connected, closing old
connection", the receiver reconnects, and envelopes that got a PUBACK are lost.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from mqtt_fixtures import REPO, Broker, Central, Pki, SensorSim, wait_for
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from central.ca import RECEIVER_CN, revoke
from central.config import render_mosquitto_conf

pytestmark = pytest.mark.privileged
pytest_plugins = ("mqtt_fixtures",)  # the pki, broker and central fixtures

HOUR = 1_800_000_000 // 3600 * 3600
TAKEOVER = "already connected, closing old connection"
RECEIVER_UP = "connected (session present"


@dataclass(frozen=True)
class Claim:
    """Who claims a client id, and how: `cert` is the sensor whose certificate is used."""

    cert: str
    transport: str  # "tcp" (the TLS listener), "websockets" or "mosquitto_sub" (TLS, 3.1.1)
    clean_start: bool
    revoked: bool = False

    def port(self, broker: Broker) -> int:
        return broker.ws_port if self.transport == "websockets" else broker.tls_port


CLAIMS = [
    pytest.param(Claim("s-a", "tcp", True), id="tls-clean"),
    pytest.param(Claim("s-a", "tcp", False), id="tls-persistent"),
    pytest.param(Claim("s-a", "mosquitto_sub", False), id="tls-mosquitto_sub-c"),
    pytest.param(Claim("s-a", "websockets", True), id="ws-clean"),
    pytest.param(Claim("s-a", "websockets", False), id="ws-persistent"),
    # Mosquitto 2.0's WebSockets listener ignores the CRL: a revoked sensor gets this far
    pytest.param(Claim("s-revoked", "websockets", True, revoked=True), id="ws-revoked-clean"),
]


def prepare(claim: Claim, pki: Pki, broker: Broker) -> None:
    pki.sensor(claim.cert)
    if claim.revoked:
        revoke(pki.files.dir, claim.cert, reason="key-compromise")
        broker.restart()  # re-reads the CRL


def claim_id(pki: Pki, broker: Broker, claim: Claim, client_id: str, hold_s: float) -> str:
    """Connect with `claim.cert`'s certificate as `client_id`, subscribe to that sensor's
    own ack topic, stay `hold_s`, disconnect.  Returns the CONNACK reason."""
    cert, key = pki.sensor(claim.cert)
    if claim.transport == "mosquitto_sub":  # the reproduction, verbatim
        sub = subprocess.run(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.tls_port),
             "--cafile", str(pki.ca), "--cert", str(cert), "--key", str(key),
             "-i", client_id, "-c", "-q", "1", "-t", f"teiten/v1/{claim.cert}/ack",
             "-W", str(max(1, round(hold_s)))],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        # -W: exit 27 once connected and timed out; anything else is a refusal
        return "Success" if sub.returncode == 27 else f"{sub.returncode}: {sub.stderr}"
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        transport=claim.transport,  # type: ignore[arg-type]
    )
    c.tls_set(ca_certs=str(pki.ca), certfile=str(cert), keyfile=str(key))
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if not claim.clean_start:
        props.SessionExpiryInterval = 3600
    got: dict[str, str] = {}
    connack = threading.Event()

    def on_connect(cl: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
        got["rc"] = str(rc)
        cl.subscribe(f"teiten/v1/{claim.cert}/ack", qos=1)
        connack.set()

    c.on_connect = on_connect
    c.on_disconnect = lambda *a: connack.set()
    c.connect(
        "127.0.0.1",
        claim.port(broker),
        keepalive=5,
        clean_start=claim.clean_start,
        properties=props,
    )
    c.loop_start()
    try:
        connack.wait(5)
        threading.Event().wait(hold_s)
    finally:
        c.disconnect()
        c.loop_stop()
    return got.get("rc", "no CONNACK")


def publish_raw(pki: Pki, broker: Broker, sensor: SensorSim, seqs: list[int]) -> list[str]:
    """Publish sealed envelopes once each, QoS 1, as `sensor` (no re-send): PUBACK reasons."""
    cert, key = pki.sensor(sensor.id)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=sensor.id, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(pki.ca), certfile=str(cert), keyfile=str(key))
    reasons: dict[int, str] = {}
    c.on_publish = lambda cl, u, mid, rc, p: reasons.__setitem__(mid, str(rc))
    c.connect("127.0.0.1", broker.tls_port, keepalive=5)
    c.loop_start()
    try:
        mids = []
        for i, seq in enumerate(seqs):
            h = HOUR + 3600 * i
            info = c.publish(f"teiten/v1/{sensor.id}/summary", sensor.seal(h, seq), qos=1)
            mids.append(info.mid)
        wait_for(lambda: len(reasons) == len(mids), 10, "PUBACKs")
    finally:
        c.disconnect()
        c.loop_stop()
    return [reasons[m] for m in mids]


def settle(cond: Callable[[], bool], timeout: float) -> bool:
    """Wait up to `timeout` for `cond`; whether it came true (the test asserts after)."""
    try:
        wait_for(cond, timeout, "")
    except AssertionError:
        return False
    return True


def receiver_connects(central: Central) -> int:
    return central.log_text().count(RECEIVER_UP)


def test_template_pins_client_ids_on_both_listeners(tmp_path: Path) -> None:
    """`use_username_as_clientid true` sits inside *each* listener block: in Mosquitto 2.0
    it is a listener setting whatever per_listener_settings says, and before the first
    `listener` line it would configure the default listener, opening port 1883."""
    conf = render_mosquitto_conf(
        data_dir=tmp_path, acl_file=tmp_path / "acl", cafile=tmp_path / "ca.crt",
        certfile=tmp_path / "s.crt", keyfile=tmp_path / "s.key", tls_port=1, ws_port=2,
    )  # fmt: skip
    lines = [ln.strip() for ln in conf.splitlines() if ln.strip() and not ln.startswith("#")]
    listeners = [i for i, ln in enumerate(lines) if ln.startswith("listener ")]
    assert len(listeners) == 2
    assert "use_username_as_clientid true" not in lines[: listeners[0]]
    for start, end in zip(listeners, [*listeners[1:], len(lines)], strict=True):
        block = lines[start:end]
        assert "use_identity_as_username true" in block
        assert "use_username_as_clientid true" in block


@pytest.mark.parametrize("claim", CLAIMS)
def test_a_sensor_claiming_the_receivers_id_does_not_disconnect_it(
    tmp_path: Path, pki: Pki, broker: Broker, central: Central, claim: Claim
) -> None:
    """Six claims of `central-receiver` while sensor B uplinks one envelope per claim:
    the receiver stays connected and B's uplink never has to re-send."""
    prepare(claim, pki, broker)
    b = SensorSim(tmp_path / "boards", "s-b", pki)
    central.enroll(b)
    central.start()
    b.start(broker, ack_timeout_s=120.0)  # a lost envelope stays lost for this test
    rounds = 6
    reasons = []
    try:
        wait_for(lambda: b.uplink.session.stats.connects == 1, 10, "B to connect")  # type: ignore[attr-defined]
        for _ in range(rounds):
            b.fill(1, start_hour=HOUR + 3600 * (b.next_seq & 0xFFFF))
            reasons.append(claim_id(pki, broker, claim, RECEIVER_CN, hold_s=1.0))
        drained = settle(lambda: b.pending() == 0, 15)
        stats = b.uplink.session.stats  # type: ignore[attr-defined]
    finally:
        b.stop()
    facts = {
        "receiver disconnects": central.log_text().count("disconnected: "),
        "receiver connects": receiver_connects(central),
        "stored": central.count(),
        "left in B's spool": b.pending(),
        "B re-sent": stats.resent,
        "B connects": stats.connects,
    }
    want = dict.fromkeys(facts, 0) | {"receiver connects": 1, "stored": rounds, "B connects": 1}
    assert facts == want
    assert drained
    log = broker.log_text()
    assert TAKEOVER not in log
    assert reasons == ["Success"] * rounds  # it was let in, as itself
    assert log.count(f" as {claim.cert} (") == rounds
    # and only the two configured listeners (a global use_username_as_clientid adds 1883)
    assert set(re.findall(r"listen socket on port (\d+)", log)) == {
        str(broker.tls_port),
        str(broker.ws_port),
    }


@pytest.mark.parametrize("claim", CLAIMS)
def test_a_sensor_claiming_the_receivers_id_leaves_its_offline_session_alone(
    tmp_path: Path, pki: Pki, broker: Broker, central: Central, claim: Claim
) -> None:
    """While the receiver is away its persistent session queues B's envelopes; a claim of
    its client id (clean start wipes, persistent resumes) must leave that queue intact."""
    prepare(claim, pki, broker)
    b = SensorSim(tmp_path / "boards", "s-b", pki)
    central.enroll(b)
    central.start()
    central.stop()  # a clean DISCONNECT: the session (7 days) stays, with its subscriptions
    seqs = [(1 << 32) | i for i in (1, 2, 3)]
    # "Success", not "No matching subscribers": queued in the receiver's session
    assert publish_raw(pki, broker, b, seqs) == ["Success"] * 3
    assert claim_id(pki, broker, claim, RECEIVER_CN, hold_s=1.0) == "Success"
    log = broker.log_text()
    central.start()
    wait_for(lambda: receiver_connects(central) == 2, 15, "the receiver to reconnect")
    present = central.log_text().split(RECEIVER_UP)[-1].startswith(": True)")
    settle(lambda: central.count() == 3, 10)
    with central.store() as st:
        stored = [r.sequence for r in st.summaries("s-b")]
    facts = {"session present": present, "stored": stored}
    assert facts == {"session present": True, "stored": seqs}, "session taken or wiped"
    assert f" as {claim.cert} (" in log
    assert f"as {RECEIVER_CN} (" not in log.split(f"Client {RECEIVER_CN} disconnected")[1]


@pytest.mark.parametrize(
    "claim",
    [p for p in CLAIMS if p.id in ("tls-clean", "tls-persistent", "ws-clean", "ws-persistent")],
)
def test_a_sensor_claiming_another_sensors_id_does_not_disconnect_it(
    tmp_path: Path, pki: Pki, broker: Broker, central: Central, claim: Claim
) -> None:
    b = SensorSim(tmp_path / "boards", "s-b", pki)
    central.enroll(b)
    central.start()
    b.start(broker, ack_timeout_s=120.0)
    try:
        wait_for(lambda: b.uplink.session.stats.connects == 1, 10, "B to connect")  # type: ignore[attr-defined]
        for _ in range(3):
            b.fill(1, start_hour=HOUR + 3600 * (b.next_seq & 0xFFFF))
            assert claim_id(pki, broker, claim, b.id, hold_s=1.0) == "Success"
        drained = settle(lambda: b.pending() == 0, 15)
        stats = b.uplink.session.stats  # type: ignore[attr-defined]
    finally:
        b.stop()
    facts = {"B connects": stats.connects, "B re-sent": stats.resent, "stored": central.count()}
    assert facts == {"B connects": 1, "B re-sent": 0, "stored": 3}
    assert drained
    assert TAKEOVER not in broker.log_text()


def test_receiver_refuses_a_client_id_that_is_not_its_cn(broker: Broker, central: Central) -> None:
    """The broker would name the receiver's session after its CN whatever `client_id`
    says; a different one is a configuration error, reported before anything connects."""
    conf = central.conf.read_text()
    central.conf.write_text(conf + 'client_id = "receiver-2"\n')
    code = (
        "import sys\nfrom sensor.cli import main\n"
        f"sys.exit(main(['central', 'receive', '--config', {str(central.conf)!r}]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 2, run.stderr
    assert "client_id = 'receiver-2'" in run.stderr
    assert "set client_id = 'central-receiver' or remove the line" in run.stderr
    assert f"as {RECEIVER_CN} (" not in broker.log_text()  # refused before connecting
    # the CN itself, spelled out, is fine: it connects with its persistent session
    central.conf.write_text(conf + f'client_id = "{RECEIVER_CN}"\n')
    central.start()
    assert f"as {RECEIVER_CN} (" in broker.log_text()

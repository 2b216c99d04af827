"""The enrolment exchange over MQTT: token in, certificate out (docs/enrolment.md).

One request, one reply, on the enrolment listener: server-authenticated TLS against the CA
the board pinned (`sensor.edges.enrol.fetch_pinned_ca`), MQTT 5 with username = token id
and password = the token's secret.  The broker lets this login publish only
`teiten/v1/enrol/<token id>/request` and read only `.../reply`; the central enrolment
service answers there.  A refusal by the broker (CONNACK "not authorised", a PUBACK or
SUBACK failure) is reported as `not_authorized`.
"""

from __future__ import annotations

import secrets
import ssl
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from sensor.edges.enrol import EnrolmentError
from wire.enrolment import (
    NONCE_BYTES,
    EnrolFormatError,
    Reply,
    decode_reply,
    encode_enrol_request,
    reply_topic,
    request_topic,
)


def enrol_over_mqtt(
    *,
    host: str,
    port: int,
    ca_pem: bytes,
    token_id: str,
    secret: str,
    sensor_id: str,
    csr: bytes,
    signing_key: Ed25519PrivateKey,
    timeout: float = 30.0,
    resend_s: float = 5.0,
) -> Reply:
    """Send the enrolment request; the reply, or EnrolmentError (reason, what to do)."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    payload = encode_enrol_request(token_id, sensor_id, nonce, csr, signing_key)
    state: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ca_file = Path(tmp) / "ca.crt"
        ca_file.write_bytes(ca_pem)
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=token_id, protocol=mqtt.MQTTv5)
        c.tls_set(ca_certs=str(ca_file), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        c.username_pw_set(token_id, secret)

        def on_connect(cl: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
            state["connack"] = rc
            if not getattr(rc, "is_failure", True):
                cl.subscribe(reply_topic(token_id), qos=1)

        def on_subscribe(cl: mqtt.Client, u: object, mid: int, rcs: list[ReasonCode],
                         p: object) -> None:
            if any(getattr(r, "is_failure", False) for r in rcs):
                state["refused"] = f"subscription refused: {rcs}"
                return
            state["pub_mid"] = cl.publish(request_topic(token_id), payload, qos=1).mid

        def on_publish(cl: mqtt.Client, u: object, mid: int, rc: object, p: object) -> None:
            if getattr(rc, "is_failure", False):
                state["refused"] = f"publish refused: {rc}"

        def on_message(cl: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
            try:
                reply = decode_reply(bytes(msg.payload))
            except EnrolFormatError:
                return
            if reply.nonce == nonce:
                state["reply"] = reply

        c.on_connect = on_connect
        c.on_subscribe = on_subscribe
        c.on_publish = on_publish
        c.on_message = on_message
        try:
            c.connect(host, port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:
            raise EnrolmentError("unreachable", f"cannot connect to the enrolment listener "
                                 f"{host}:{port}: {exc}") from None
        deadline = time.monotonic() + timeout
        resend_at = time.monotonic() + resend_s
        try:
            while time.monotonic() < deadline:
                rc = c.loop(timeout=0.1)
                if "pub_mid" in state and "reply" not in state and time.monotonic() > resend_at:
                    # no answer yet (central reconnecting?): the same request again; central
                    # answers a repeat with the same keys with the same certificate
                    resend_at = time.monotonic() + resend_s
                    c.publish(request_topic(token_id), payload, qos=1)
                if "reply" in state:
                    r = state["reply"]
                    assert isinstance(r, Reply)
                    return r
                connack = state.get("connack")
                if connack is not None and getattr(connack, "is_failure", False):
                    raise EnrolmentError("not_authorized", f"the broker refused the token: "
                                         f"{connack} (used, expired, mistyped or never issued)")
                if "refused" in state:
                    raise EnrolmentError("not_authorized", f"the broker refused: "
                                         f"{state['refused']}")
                if rc != mqtt.MQTT_ERR_SUCCESS and connack is None:
                    raise EnrolmentError("not_authorized", "the broker closed the connection "
                                         "before accepting the token")
        finally:
            c.disconnect()
    raise EnrolmentError("no_reply", f"no answer from central within {timeout:.0f} s; the "
                         "enrolment service may be down. The board tries again at next boot")

"""The MQTT 5 client both ends use: the board's publisher and the central receiver.

One place for the connection profile the broker expects (MQTT 5, mutual TLS with the
site's CA, TLS 1.2 or later, plain TCP or WebSockets), so the two ends cannot drift.  It
imports nothing of the board's, which is why `central.receiver` may import it (the only
import from `uplink` the central site makes; see the import-linter contracts).
"""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def new_client(
    client_id: str,
    *,
    websockets: bool,
    tls: tuple[object, object, object] | None,
) -> mqtt.Client:
    """A paho MQTT 5 client; `tls` = (CA file, certificate, key) for mutual TLS, or None
    (tests only).  Both ends use it: the board's uplink and the central receiver."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        transport="websockets" if websockets else "tcp",
    )
    if tls is not None:
        ca, cert, key = tls
        client.tls_set(
            ca_certs=str(ca), certfile=str(cert), keyfile=str(key),
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    return client

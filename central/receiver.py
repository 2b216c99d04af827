"""The central receiver: MQTT 5 in, one SQLite transaction per message, acknowledge after.

Strategy: `Ingest` is the decision (topic -> parse -> check topic id -> verify -> store ->
what to acknowledge) and touches only the `Store`; `Receiver` is the paho edge.
`Ingest.store_envelope` is the one check-and-store function for a summary: the MQTT
handler and the offline importer (`central/importer.py`) both call it.  The
receiver subscribes to `teiten/v1/+/summary` (QoS 1) with a persistent session
(clean_start false, a session expiry interval) and manual acknowledgement: the MQTT PUBACK
for a message is sent only after its transaction committed, and so is the end-to-end ack on
`teiten/v1/<sensor>/ack`.  If the receiver dies between receipt and commit, the broker
still holds the message and redelivers it; if it dies after the commit but before the
acks, the redelivery (or the sensor's re-send) is a duplicate, acknowledged again and not
stored twice.

The topic's sensor id is authenticated by the broker (certificate CN + ACL); the envelope's
sensor id by its Ed25519 signature.  Both must agree.  Ack payloads are msgpack
`{"seq": int, "status": "stored"|"duplicate"|"rejected", "reason": str|None}`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from central.columns import check_summary
from central.config import ReceiverConfig, check_client_id
from central.keyring import load_keyring
from central.store import Store
from uplink.client import new_client
from wire.envelope import EnvelopeError, parse_envelope, verify_parsed
from wire.ids import validate_sensor_id
from wire.keys import Keyring, KeyringError
from wire.topics import ack_payload, topic

log = logging.getLogger("teiten.receiver")

SUBSCRIPTIONS = ("teiten/v1/+/summary", "teiten/v1/+/status", "teiten/v1/+/health")
MAX_STATUS_BYTES = 65_536  # status and health are small JSON documents
RECONNECT_DELAY_S = 1.0


@dataclass(frozen=True, slots=True)
class Reply:
    """What to acknowledge end to end after the commit (None: nothing to say)."""

    topic: str
    payload: bytes
    status: str
    sequence: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """What `Ingest.store_envelope` did with one envelope."""

    status: str  # stored | duplicate | rejected
    reason: str | None  # the rejection reason (the ack's reason), None otherwise
    sensor_id: str | None  # the envelope's (or the claimed) sensor id, when known
    sequence: int | None  # None: the envelope did not parse
    detail: str | None = None


@dataclass(slots=True)
class Counters:
    stored: int = 0
    duplicate: int = 0
    rejected: int = 0
    status: int = 0
    health: int = 0
    ignored: int = 0


class Ingest:
    """Verify and store one message; returns the end-to-end reply.  No MQTT here."""

    def __init__(
        self,
        store: Store,
        sensors_path: Path,
        *,
        max_summary_bytes: int,
        keyring: Keyring | None = None,
    ) -> None:
        self.store = store
        self.sensors_path = sensors_path
        self.max_summary_bytes = max_summary_bytes
        self.counters = Counters()
        self._mtime: float | None = None
        self._keyring = keyring if keyring is not None else self._load()

    def _load(self) -> Keyring:
        kr = load_keyring(self.sensors_path)
        self._mtime = self.sensors_path.stat().st_mtime
        return kr

    def keyring(self) -> Keyring:
        """The keyring, reloaded when sensors.toml changed (a bad edit keeps the old one)."""
        try:
            mtime = self.sensors_path.stat().st_mtime
        except OSError:
            return self._keyring
        if self._mtime is not None and mtime != self._mtime:
            try:
                self._keyring = self._load()
                log.info("reloaded %s (%d sensors)", self.sensors_path, len(self._keyring))
            except KeyringError as exc:
                self._mtime = mtime
                log.error("keeping the previous keyring: %s", exc)
        return self._keyring

    def handle(self, mqtt_topic: str, payload: bytes) -> Reply | None:
        parts = mqtt_topic.split("/")
        if len(parts) != 4 or parts[0] != "teiten" or parts[1] != "v1":
            self.counters.ignored += 1
            return None
        sid, kind = parts[2], parts[3]
        try:
            validate_sensor_id(sid)
        except ValueError:
            self.counters.ignored += 1
            return None
        if kind == "summary":
            return self._summary(mqtt_topic, sid, payload)
        if kind in ("status", "health") and len(payload) > MAX_STATUS_BYTES:
            # Status and health are small JSON documents; anything larger is not stored.
            self.counters.ignored += 1
            return None
        if kind == "status":
            state: str | None = None
            try:
                doc = json.loads(payload)
                state = str(doc.get("state"))[:64] if isinstance(doc, dict) else None
            except (ValueError, RecursionError):
                state = None
            self.store.store_status(sid, payload, state)
            self.counters.status += 1
        elif kind == "health":
            self.store.store_health(sid, payload)
            self.counters.health += 1
        else:
            self.counters.ignored += 1
        return None

    def _reply(self, sid: str, seq: int, status: str, reason: str | None) -> Reply:
        return Reply(topic(sid, "ack"), ack_payload(seq, status, reason), status, seq)

    def internal_error(self, mqtt_topic: str, payload: bytes) -> Reply | None:
        """Record a message our own code failed on; reply `rejected` when it has a sequence."""
        parts = mqtt_topic.split("/")
        sid = parts[2] if len(parts) == 4 else None
        sequence = None
        if sid is not None and parts[3] == "summary":
            try:
                sequence = parse_envelope(payload).sequence
            except Exception:  # it failed once already; only its sequence is wanted
                sequence = None
        try:
            self.store.reject(
                reason="internal_error", data=payload, topic=mqtt_topic, sensor_id=sid,
                sequence=sequence, detail="the receiver failed on this message; see its log",
            )
        except Exception:
            log.exception("could not record the internal error either")
        self.counters.rejected += 1
        if sid is None or sequence is None:
            return None
        return self._reply(sid, sequence, "rejected", "internal_error")

    def _summary(self, mqtt_topic: str, sid: str, payload: bytes) -> Reply | None:
        v = self.store_envelope(payload, topic=mqtt_topic, claimed_sensor=sid)
        if v.sequence is None:
            return None  # no sequence to acknowledge; the board's spool scan catches it
        return self._reply(sid, v.sequence, v.status, v.reason)

    def store_envelope(
        self, payload: bytes, *, topic: str | None, claimed_sensor: str | None,
        received_us: int | None = None,
    ) -> Verdict:
        """The receiver's checks and the store, for one envelope: every path calls this.

        The MQTT handler passes the topic's sensor id as `claimed_sensor` (authenticated by
        the broker); the offline importer (`central/importer.py`) passes None, and the
        envelope's own sensor id, authenticated by its signature, is the only one.
        Order: structural parse, topic id check, Ed25519 verify against sensors.toml,
        capped decompression, summary check, one transaction keyed by (sensor, sequence).
        """
        # Cheap structural parse first: it gives the sequence to acknowledge against.
        try:
            env = parse_envelope(payload)
        except EnvelopeError as exc:
            self.store.reject(
                reason=exc.reason, data=payload, topic=topic, sensor_id=claimed_sensor,
                detail=str(exc), received_us=received_us,
            )
            self.counters.rejected += 1
            log.warning("rejected a message on %s: %s (%s)", topic, exc.reason, exc)
            return Verdict("rejected", exc.reason, claimed_sensor, None, str(exc))
        sid = env.sensor_id
        if claimed_sensor is not None and sid != claimed_sensor:
            detail = f"envelope claims {sid!r}, published by {claimed_sensor!r}"
            self.store.reject(
                reason="topic_mismatch",
                data=payload,
                topic=topic,
                sensor_id=sid,
                sequence=env.sequence,
                detail=detail,
                received_us=received_us,
            )
            self.counters.rejected += 1
            return Verdict("rejected", "topic_mismatch", sid, env.sequence, detail)
        try:
            verify_parsed(
                env, self.keyring(), max_summary_bytes=self.max_summary_bytes,
                decode=check_summary,
            )
        except EnvelopeError as exc:
            self.store.reject(
                reason=exc.reason,
                data=payload,
                topic=topic,
                sensor_id=sid,
                sequence=env.sequence,
                detail=str(exc),
                received_us=received_us,
            )
            self.counters.rejected += 1
            log.warning("rejected %s sequence %d: %s", sid, env.sequence, exc.reason)
            return Verdict("rejected", exc.reason, sid, env.sequence, str(exc))
        outcome = self.store.store_summary(
            sensor_id=sid,
            sequence=env.sequence,
            hour_start=env.hour_start,
            created_us=env.created_us,
            envelope=payload,
            summary=None,  # the envelope holds it; the rollup decompresses it again
            topic=topic,
            received_us=received_us,
        )
        if outcome == "sequence_reuse":
            self.counters.rejected += 1
            log.warning("rejected %s sequence %d: reused with other bytes", sid, env.sequence)
            return Verdict("rejected", "sequence_reuse", sid, env.sequence,
                           "sequence already stored with other bytes")
        if outcome == "duplicate":
            self.counters.duplicate += 1
        else:
            self.counters.stored += 1
        return Verdict(outcome, None, sid, env.sequence, None)


class Receiver:
    """The paho edge: persistent session, manual acks after commit, reconnect forever."""

    def __init__(
        self,
        config: ReceiverConfig,
        ingest: Ingest,
        *,
        on_reply: Callable[[Reply], None] | None = None,
    ) -> None:
        self.cfg = config
        self.ingest = ingest
        self.on_reply = on_reply
        self.connected = threading.Event()
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        cfg = self.cfg
        c = new_client(
            cfg.client_id,
            websockets=cfg.transport == "websockets",
            tls=None if cfg.insecure else (cfg.ca, cfg.cert, cfg.key),
        )
        c.manual_ack_set(True)
        c.max_inflight_messages_set(100)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        return c

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        props.ReceiveMaximum = 100
        return props

    def run(self, stop: threading.Event) -> None:
        """Connect (retrying forever with paho's capped backoff) and process until `stop`."""
        c = self._client
        c.connect_async(
            self.cfg.host,
            self.cfg.port,
            keepalive=self.cfg.keepalive_s,
            clean_start=False,
            properties=self._connect_properties(),
        )

        def _watch() -> None:
            stop.wait()
            c.disconnect()

        watcher = threading.Thread(target=_watch, name="receiver-stop", daemon=True)
        watcher.start()
        while not stop.is_set():
            try:
                c.loop_forever(retry_first_connection=True)
            except (OSError, ssl.SSLError) as exc:
                log.warning("broker %s:%d: %s", self.cfg.host, self.cfg.port, exc)
            if stop.is_set():
                break
            # We disconnected on purpose (a database error: nothing acknowledged, the broker
            # redelivers from the persistent session) or the link broke: wait, then
            # reconnect explicitly, since loop_forever returns at once on a client that
            # was disconnected by request.
            stop.wait(RECONNECT_DELAY_S)
            try:
                c.reconnect()
            except (OSError, ssl.SSLError) as exc:
                log.warning("reconnecting to %s:%d: %s", self.cfg.host, self.cfg.port, exc)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused the receiver: %s", reason_code)
            return
        log.info("connected (session present: %s)", getattr(flags, "session_present", "?"))
        client.subscribe([(t, 1) for t in SUBSCRIPTIONS])
        self.connected.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        level = logging.WARNING if reason_code.is_failure else logging.INFO
        log.log(level, "disconnected: %s", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            reply = self.ingest.handle(msg.topic, bytes(msg.payload))
        except sqlite3.Error as exc:
            # Not committed: do not acknowledge.  Drop the connection so the broker
            # redelivers the message from the persistent session once we are back.
            log.error("database error, not acknowledging %s: %s", msg.topic, exc)
            client.disconnect()
            return
        except Exception:
            # A message that makes our own code fail must not kill the receiver, nor be
            # redelivered into the same failure for ever: record it, tell the sensor (which
            # keeps the envelope in its quarantine), and acknowledge.
            log.exception("internal error on %s; recorded as rejected", msg.topic)
            reply = self.ingest.internal_error(msg.topic, bytes(msg.payload))
        if reply is not None:
            client.publish(reply.topic, reply.payload, qos=1, retain=False)
            if self.on_reply is not None:
                self.on_reply(reply)
        client.ack(msg.mid, msg.qos)


def open_receiver(config: ReceiverConfig) -> tuple[Receiver, Store]:
    """Phase two: open the database and the keyring, build the receiver."""
    if not config.insecure:
        for p in (config.ca, config.cert, config.key):
            if p is None or not p.is_file():
                raise FileNotFoundError(f"receiver TLS file {p} missing; see docs/central.md")
    check_client_id(config)  # the broker pins client ids to the certificate CN
    store = Store(config.database)
    ingest = Ingest(store, config.sensors, max_summary_bytes=config.max_summary_bytes)
    return Receiver(config, ingest), store


def run_forever(config: ReceiverConfig, stop: threading.Event | None = None) -> int:
    receiver, store = open_receiver(config)
    stop = stop or threading.Event()
    try:
        receiver.run(stop)
    finally:
        store.close()
    return 0

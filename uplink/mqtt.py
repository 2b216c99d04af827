"""The paho-mqtt edge of the publisher: executes `UplinkSession` commands, feeds it events.

Strategy: one thread, one loop.  `MqttUplink.run` polls the spool directory, drives the
current paho client with `client.loop()` (so every paho callback runs in this thread and
the session needs no lock), turns callbacks into session events, and executes the
commands the session returns.  Each connection attempt gets a fresh paho client: nothing
queued inside paho survives a disconnect, so the session alone decides what is re-sent.
MQTT 5 only, so that a refused publish is visible as a PUBACK reason code.

The uplink runs in its own process (`teiten uplink`) and only reads and deletes spool
files: a slow or absent broker can delay deletions, never capture.
This is the only module on the board that imports paho.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from sensor.edges.clock import kernel_sync_state
from sensor.edges.spool import Spool, SpoolEntry, SpoolError
from sensor.edges.uplink_config import UplinkConfig
from uplink.client import new_client
from uplink.session import (
    TRANSPORT_WS,
    Acked,
    CertValidity,
    Command,
    Connect,
    Connected,
    ConnectFailed,
    Disconnected,
    Event,
    Log,
    PubAck,
    Publish,
    PublishEnvelope,
    PublishHealth,
    Quarantine,
    RemoveFromSpool,
    RenewalDone,
    RequestRenewal,
    SpoolChanged,
    Start,
    Subscribe,
    Tick,
    UplinkSession,
    WaitReconnect,
    parse_ack,
)

log = logging.getLogger("teiten.uplink")

HealthProvider = Callable[[], dict[str, Any]]


def clock_state() -> dict[str, Any]:
    """Kernel clock discipline (adjtimex): synchronised or not, and the error estimate."""
    synchronized, maxerror_us = kernel_sync_state()
    if synchronized is None:
        return {"synchronized": None}
    return {"synchronized": synchronized, "maxerror_us": maxerror_us}


class MqttUplink:
    """Drive `UplinkSession` over paho until `stop` is set."""

    def __init__(
        self,
        config: UplinkConfig,
        spool: Spool,
        *,
        software_version: str,
        boot_time_us: int | None = None,
        health_provider: HealthProvider | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        spool_poll_s: float = 1.0,
    ) -> None:
        self.cfg = config
        self.spool = spool
        self.clock = clock
        self.wall = wall_clock
        self.spool_poll_s = spool_poll_s
        self.health_provider = health_provider
        self.session = UplinkSession(
            config,
            software_version=software_version,
            boot_time_us=boot_time_us if boot_time_us is not None else int(wall_clock() * 1e6),
            rand=rand,
        )
        self._client: mqtt.Client | None = None
        self._transport = ""
        self._connect_deadline: float | None = None
        self._mids: dict[int, int] = {}
        self._events: list[Event] = []
        self._names: tuple[str, ...] | None = None
        self._last_scan = float("-inf")
        self._drop_after_loop = False
        self._renew_nonce: bytes | None = None
        self._last_cert_check = float("-inf")

    # ------------------------------------------------------------ renewal
    def _check_cert(self, now: float) -> None:
        """Tell the session the certificate's validity (at start, then every minute)."""
        self._last_cert_check = now
        if self.cfg.insecure or self.cfg.cert is None:
            return
        from sensor.edges.enrol import cert_validity

        v = cert_validity(self.cfg.cert)
        if v is not None:
            self._execute(self.session.handle(CertValidity(now, self.wall(), v[0], v[1])))

    def _request_renewal(self, cmd: RequestRenewal) -> None:
        import secrets

        from sensor.edges.enrol import renewal_csr, rotation_csr
        from sensor.edges.keys import KeyFileError
        from wire.enrolment import NONCE_BYTES, encode_renew_request

        if self._client is None or self.cfg.key is None or self.cfg.cert is None:
            return
        try:
            key, csr = renewal_csr(self.cfg.key, self.cfg.sensor_id)
            if self.cfg.renew_rotate_key:
                csr = rotation_csr(self.cfg.key, self.cfg.sensor_id)
            cert = self.cfg.cert.read_bytes()
        except (KeyFileError, OSError) as exc:
            self._events.append(RenewalDone(self.clock(), False, str(exc)))
            return
        self._renew_nonce = secrets.token_bytes(NONCE_BYTES)
        # signed by the current key, which the current certificate certifies
        payload = encode_renew_request(self.cfg.sensor_id, self._renew_nonce, csr, cert, key)
        self._client.publish(cmd.topic, payload, qos=1, retain=False)

    def _on_renewed(self, data: bytes) -> None:
        """Central's answer: install the certificate for the next connection (this one
        goes on), or report the refusal."""
        from sensor.edges.certs import load_tls_key
        from sensor.edges.enrol import (
            EnrolmentError,
            check_certificate,
            install_certificate,
            install_rotated,
            next_tls_key,
        )
        from sensor.edges.keys import KeyFileError
        from wire.enrolment import EnrolFormatError, decode_reply

        try:
            reply = decode_reply(data)
        except EnrolFormatError:
            log.warning("ignoring a malformed renewal reply")
            return
        if self._renew_nonce is None or reply.nonce != self._renew_nonce:
            return
        self._renew_nonce = None
        if not reply.ok or reply.certificate is None or self.cfg.cert is None \
                or self.cfg.ca is None or self.cfg.key is None:
            self._events.append(RenewalDone(self.clock(), False, reply.reason))
            return
        rotate = self.cfg.renew_rotate_key
        try:
            key = next_tls_key(self.cfg.key) if rotate else load_tls_key(self.cfg.key)
            check_certificate(reply.certificate, self.cfg.ca.read_bytes(), key,
                              self.cfg.sensor_id)
            if rotate:  # this connection keeps the old key; the next one uses the new
                install_rotated(self.cfg.key, self.cfg.cert, reply.certificate)
            else:
                install_certificate(self.cfg.cert, reply.certificate)
        except (EnrolmentError, KeyFileError, OSError) as exc:
            self._events.append(RenewalDone(self.clock(), False, str(exc)))
            return
        log.info("installed a renewed certificate in %s", self.cfg.cert)
        self._events.append(RenewalDone(self.clock(), True))
        self._last_cert_check = float("-inf")

    # ------------------------------------------------------------ loop
    def run(self, stop: threading.Event) -> None:
        if self.cfg.renew_rotate_key and self.cfg.key is not None and self.cfg.cert is not None:
            from sensor.edges.enrol import finish_rotation

            done = finish_rotation(self.cfg.key, self.cfg.cert)  # a crash mid-rotation
            if done:
                log.warning("%s", done)
        self._execute(self.session.handle(Start(self.clock())))
        try:
            while not stop.is_set():
                self.step(stop)
        finally:
            self._drop_client(graceful=True)

    def step(self, stop: threading.Event | None = None) -> None:
        """One turn of the loop (public so a test can drive it)."""
        now = self.clock()
        if now - self._last_scan >= self.spool_poll_s:
            self._scan_spool(now)
        if now - self._last_cert_check >= 60.0:
            self._check_cert(now)
        client = self._client
        if client is not None:
            rc = client.loop(timeout=0.05)
            if self._drop_after_loop:
                self._drop_after_loop = False
                self._drop_client()
            elif rc != mqtt.MQTT_ERR_SUCCESS and client is self._client:
                self._events.append(Disconnected(self.clock(), mqtt.error_string(rc)))
                self._drop_client()
            if self._connect_deadline is not None and self.clock() > self._connect_deadline:
                self._events.append(ConnectFailed(self.clock(), self._transport, "no CONNACK"))
                self._drop_client()
        else:
            deadline = self.session.next_deadline()
            wait = 0.05 if deadline is None else max(0.0, min(0.05, deadline - now))
            if stop is not None:
                stop.wait(wait)
            else:
                time.sleep(wait)
        while self._events:
            ev = self._events.pop(0)
            self._execute(self.session.handle(ev))
        self._execute(self.session.handle(Tick(self.clock())))

    def _scan_spool(self, now: float) -> None:
        self._last_scan = now
        try:
            entries = self.spool.entries()
        except OSError as exc:
            log.warning("cannot list spool %s: %s", self.spool.path, exc)
            return
        names = tuple(e.name for e in entries)
        if names != self._names:
            self._names = names
            self._execute(self.session.handle(SpoolChanged(now, tuple(entries))))

    # ------------------------------------------------------------ commands
    def _execute(self, commands: list[Command]) -> None:
        for cmd in commands:
            match cmd:
                case Connect():
                    self._connect(cmd)
                case WaitReconnect(delay_s=d, failures=n):
                    log.info("reconnecting in %.1f s (failure %d)", d, n)
                case Subscribe(topic=t, qos=q):
                    if self._client is not None:
                        self._client.subscribe(t, qos=q)
                case Publish(topic=t, payload=p, qos=q, retain=r):
                    if self._client is not None:
                        self._client.publish(t, p, qos=q, retain=r)
                case PublishEnvelope():
                    self._publish_envelope(cmd)
                case PublishHealth(topic=t, fields=f):
                    self._publish_health(t, f)
                case RemoveFromSpool(entry=e):
                    self._remove(e)
                case Quarantine(entry=e, reason=reason):
                    self._quarantine(e, reason)
                case RequestRenewal():
                    self._request_renewal(cmd)
                case Log(level=level, message=m):
                    log.log(logging.WARNING if level == "warning" else logging.INFO, "%s", m)

    def _publish_envelope(self, cmd: PublishEnvelope) -> None:
        if self._client is None:
            return
        assert isinstance(cmd.entry, SpoolEntry)
        try:
            data = self.spool.read(cmd.entry)
        except SpoolError as exc:
            log.warning("%s", exc)
            self._last_scan = float("-inf")  # rescan: it was removed or evicted
            return
        info = self._client.publish(cmd.topic, data, qos=1, retain=False)
        self._mids[info.mid] = cmd.entry.sequence

    def _publish_health(self, topic: str, fields: dict[str, Any]) -> None:
        if self._client is None:
            return
        doc = dict(fields)
        doc["time_us"] = int(self.wall() * 1e6)
        doc["clock"] = clock_state()
        try:
            doc["spool_health"] = self.spool.pending_health()
        except Exception as exc:  # health must never stop delivery
            doc["spool_health"] = {"error": str(exc)}
        if self.health_provider is not None:
            try:
                doc.update(self.health_provider())
            except Exception as exc:
                doc["health_provider_error"] = str(exc)
        payload = json.dumps(doc, sort_keys=True, default=str).encode()
        self._client.publish(topic, payload, qos=0, retain=False)

    def _remove(self, entry: object) -> None:
        assert isinstance(entry, SpoolEntry)
        try:
            self.spool.remove(entry)
        except SpoolError as exc:
            log.warning("%s", exc)
        self._names = (
            None if self._names is None else tuple(n for n in self._names if n != entry.name)
        )

    def _quarantine(self, entry: object, reason: str) -> None:
        """A permanently rejected envelope: keep it for an operator, stop re-sending it."""
        assert isinstance(entry, SpoolEntry)
        target = self.spool.quarantine(entry.path, reason)
        if target is None:
            log.warning("cannot quarantine %s", entry.name)
            return
        log.warning("central rejected %s (%s): moved to %s; `teiten spool requeue` sends it "
                    "again once central is fixed", entry.name, reason, target)
        self._names = None

    # ------------------------------------------------------------ paho
    def _connect(self, cmd: Connect) -> None:
        self._drop_client()
        cfg = self.cfg
        client = new_client(
            cfg.sensor_id,
            websockets=cmd.transport == TRANSPORT_WS,
            tls=None if cfg.insecure else (cfg.ca, cfg.cert, cfg.key),
        )
        if cmd.transport == TRANSPORT_WS:
            client.ws_set_options(path=cfg.ws_path)
        will = self.session.will()
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.max_inflight_messages_set(max(cfg.max_in_flight, 1))
        client.connect_timeout = cfg.connect_timeout_s
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._client = client
        self._drop_after_loop = False
        self._transport = cmd.transport
        self._mids.clear()
        try:
            client.connect(cfg.host, cmd.port, keepalive=cfg.keepalive_s, clean_start=True)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._drop_client()
            self._events.append(ConnectFailed(self.clock(), cmd.transport, str(exc) or repr(exc)))
            return
        self._connect_deadline = self.clock() + cfg.connect_timeout_s

    def _drop_client(self, graceful: bool = False) -> None:
        client, self._client = self._client, None
        self._connect_deadline = None
        if client is None:
            return
        try:
            if graceful and client.is_connected():
                # a clean DISCONNECT suppresses the will; say offline ourselves
                will = self.session.will()
                client.publish(will.topic, will.payload, qos=1, retain=True)
                client.loop(timeout=0.2)
                client.disconnect()
                client.loop(timeout=0.1)
        except Exception:  # best effort on the way out
            pass
        sock = client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if client is not self._client:
            return
        self._connect_deadline = None
        if reason_code.is_failure:
            self._events.append(ConnectFailed(self.clock(), self._transport, str(reason_code)))
            self._drop_after_loop = True
        else:
            self._events.append(Connected(self.clock(), self._transport))

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if client is not self._client:
            return
        self._events.append(Disconnected(self.clock(), str(reason_code)))
        self._drop_after_loop = True

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if client is not self._client:
            return
        seq = self._mids.pop(mid, None)
        if seq is not None:
            self._events.append(PubAck(self.clock(), seq, int(reason_code.value)))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if client is not self._client:
            return
        if msg.topic == self.session.renewed_topic:
            self._on_renewed(bytes(msg.payload))
            return
        if msg.topic != self.session.ack_topic:
            return
        ack = parse_ack(bytes(msg.payload))
        if ack is None:
            log.warning("ignoring a malformed acknowledgement on %s", msg.topic)
            return
        self._events.append(Acked(self.clock(), ack.sequence, ack.status, ack.reason))

"""The publisher's logic, sans-I/O: events in, commands out.

Strategy: `UplinkSession` owns every decision the uplink makes (when to connect and over
which transport, what to publish next, when to re-send, when an envelope may leave the
spool) and none of the I/O.  The paho adapter (`uplink/mqtt.py`) feeds it events
(`Connected`, `PubAck`, `Acked`, `Tick`, `SpoolChanged`, ...) and executes the commands
it returns (`Connect`, `Subscribe`, `Publish`, `PublishEnvelope`, `RemoveFromSpool`,
`Quarantine`, ...).  Time and randomness are injected: every event carries `now`, and
the jitter source is a constructor argument, so a test can script a whole outage.

Delivery is end to end.  A PUBACK only moves an envelope from `PUBLISHING` to
`AWAIT_ACK`; it leaves the spool only when the central receiver says `stored` or
`duplicate` on `teiten/v1/<id>/ack`.  Anything not acknowledged within `ack_timeout_s`
is re-sent (the receiver's store is idempotent), and everything in flight is re-sent
after a reconnect.  A publish the broker refuses (PUBACK reason >= 0x80, e.g. 0x87
"not authorized") keeps the envelope and holds it for `ack_timeout_s`.  A receiver
rejection for a permanent reason (bad signature, sequence reuse, ...) moves the envelope
to the spool's quarantine: re-sending it could never succeed, and it must not block
the rest.  `unknown_sensor` and `store_error` are retried instead: enrolment at the
central site may lag the board, and a database hiccup is transient.

Per-envelope states and their allowed transitions::

    QUEUED ──publish──▶ PUBLISHING ──PUBACK ok──▶ AWAIT_ACK ──ack stored/duplicate──▶ (removed)
      ▲                    │  │                      │
      │                    │  └─PUBACK refused──▶ HELD ◀──ack rejected (retryable)──┘
      └──timeout/disconnect┴──────────────────────────┘  (HELD ──not_before──▶ QUEUED)

Connection states: IDLE ─▶ CONNECTING ─▶ CONNECTED ─▶ WAITING ─▶ CONNECTING ...
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeAlias

from sensor.edges.uplink_config import UplinkConfig
from wire.topics import parse_ack as wire_parse_ack
from wire.topics import topic

# PUBACK reason codes at or above this value are failures (MQTT 5, 3.4.2.1).
REASON_FAILURE: Final = 0x80
REASON_NOT_AUTHORIZED: Final = 0x87

# Receiver rejections worth retrying; any other reason is permanent and quarantines.
# `unknown_version` and `decompression_bomb` mean central is older or stricter than this
# board (not yet upgraded, a lower cap): fixed at central, the envelope must still arrive.
# `internal_error` is central's own bug.  `unknown_sensor`: enrolment can lag the board.
RETRYABLE_REJECTIONS: Final = frozenset(
    {"unknown_sensor", "store_error", "unknown_version", "decompression_bomb", "internal_error"}
)

TRANSPORT_TCP: Final = "tcp"
TRANSPORT_WS: Final = "websockets"

# A connection that stayed up this long resets the backoff.
_STABLE_S: Final = 30.0


class EntryLike(Protocol):
    """What the session needs of a spool entry (`sensor.edges.spool.SpoolEntry` fits)."""

    @property
    def name(self) -> str: ...
    @property
    def sequence(self) -> int: ...
    @property
    def size(self) -> int: ...


# ---------------------------------------------------------------- events
@dataclass(frozen=True, slots=True)
class Start:
    now: float


@dataclass(frozen=True, slots=True)
class Connected:
    now: float
    transport: str


@dataclass(frozen=True, slots=True)
class ConnectFailed:
    now: float
    transport: str
    reason: str


@dataclass(frozen=True, slots=True)
class Disconnected:
    now: float
    reason: str


@dataclass(frozen=True, slots=True)
class PubAck:
    now: float
    sequence: int
    reason_code: int


@dataclass(frozen=True, slots=True)
class Acked:
    """An end-to-end acknowledgement from the central receiver."""

    now: float
    sequence: int
    status: str  # stored | duplicate | rejected
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Tick:
    now: float


@dataclass(frozen=True, slots=True)
class SpoolChanged:
    now: float
    entries: tuple[EntryLike, ...]  # oldest first


@dataclass(frozen=True, slots=True)
class CertValidity:
    """The client certificate's validity (Unix seconds) and the wall clock now.

    The adapter sends it at start, after a renewal and now and then (clock steps); with
    it the session asks for a renewal `renew_before_s` before expiry (docs/enrolment.md)."""

    now: float
    wall: float
    not_before: float
    not_after: float


@dataclass(frozen=True, slots=True)
class RenewalDone:
    """Central answered a renewal: installed (`ok`) or refused with a reason."""

    now: float
    ok: bool
    reason: str | None = None


Event: TypeAlias = (
    Start | Connected | ConnectFailed | Disconnected | PubAck | Acked | Tick | SpoolChanged
    | CertValidity | RenewalDone
)


# ---------------------------------------------------------------- commands
@dataclass(frozen=True, slots=True)
class Connect:
    transport: str
    port: int


@dataclass(frozen=True, slots=True)
class WaitReconnect:
    delay_s: float
    failures: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    topic: str
    qos: int


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True)
class PublishEnvelope:
    """Read the entry from the spool and publish it (QoS 1, not retained)."""

    entry: EntryLike
    topic: str
    resend: bool


@dataclass(frozen=True, slots=True)
class PublishHealth:
    """Publish health: the adapter adds capture statistics and clock state to `fields`."""

    topic: str
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RemoveFromSpool:
    entry: EntryLike
    status: str


@dataclass(frozen=True, slots=True)
class Quarantine:
    entry: EntryLike
    reason: str


@dataclass(frozen=True, slots=True)
class RequestRenewal:
    """Make a CSR for the TLS key and publish it on `topic` (QoS 1)."""

    topic: str


@dataclass(frozen=True, slots=True)
class Log:
    level: str  # info | warning
    message: str


Command: TypeAlias = (
    Connect
    | WaitReconnect
    | Subscribe
    | Publish
    | PublishEnvelope
    | PublishHealth
    | RemoveFromSpool
    | Quarantine
    | RequestRenewal
    | Log
)


# ---------------------------------------------------------------- state
class Conn(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    WAITING = "waiting"


_CONN_TRANSITIONS: Final = {
    Conn.IDLE: {Conn.CONNECTING},
    Conn.CONNECTING: {Conn.CONNECTED, Conn.WAITING},
    Conn.CONNECTED: {Conn.WAITING},
    Conn.WAITING: {Conn.CONNECTING},
}


class St(enum.Enum):
    QUEUED = "queued"
    PUBLISHING = "publishing"
    AWAIT_ACK = "await_ack"
    HELD = "held"


@dataclass(slots=True)
class _Track:
    entry: EntryLike
    state: St = St.QUEUED
    sent_at: float = 0.0
    not_before: float = 0.0
    attempts: int = 0


@dataclass(slots=True)
class Stats:
    published: int = 0
    resent: int = 0
    refused: int = 0
    stored: int = 0
    duplicate: int = 0
    rejected: int = 0
    quarantined: int = 0
    connects: int = 0
    connect_failures: int = 0
    ack_timeouts: int = 0
    last_refusal: str | None = None
    extra: dict[str, int] = field(default_factory=dict)


def parse_ack(data: bytes) -> Acked | None:
    """The `Acked` event for an acknowledgement's bytes; None for anything malformed."""
    ack = wire_parse_ack(data)
    return None if ack is None else Acked(now=0.0, sequence=ack.sequence, status=ack.status,
                                          reason=ack.reason)


class UplinkSession:
    """The uplink state machine.  Call `handle(event)`; execute the returned commands."""

    def __init__(
        self,
        config: UplinkConfig,
        *,
        software_version: str,
        boot_time_us: int,
        rand: Callable[[], float],
    ) -> None:
        self.cfg = config
        self.version = software_version
        self.boot_time_us = boot_time_us
        self._rand = rand
        self.conn = Conn.IDLE
        self.transport = TRANSPORT_TCP
        self._preferred = TRANSPORT_TCP
        self._fails_on_transport = 0
        self.failures = 0
        self._reconnect_at = 0.0
        self._connected_at = 0.0
        self._next_health = 0.0
        self._tracks: dict[int, _Track] = {}
        self._order: list[int] = []  # spool order, oldest first
        self.stats = Stats()
        self.summary_topic = topic(config.sensor_id, "summary")
        self.status_topic = topic(config.sensor_id, "status")
        self.health_topic = topic(config.sensor_id, "health")
        self.ack_topic = topic(config.sensor_id, "ack")
        self.renew_topic = topic(config.sensor_id, "renew")
        self.renewed_topic = topic(config.sensor_id, "renewed")
        self._cert: tuple[float, float, float] | None = None  # not_before, not_after, wall-now
        self._renew_sent_at: float | None = None
        self._renew_retry_at = 0.0

    # ------------------------------------------------------------ public helpers
    def will(self) -> Publish:
        """The last-will the adapter registers with CONNECT: retained `offline`."""
        return Publish(self.status_topic, self._status_payload("offline"), 1, True)

    def in_flight(self) -> int:
        return sum(1 for t in self._tracks.values() if t.state in (St.PUBLISHING, St.AWAIT_ACK))

    def pending(self) -> int:
        """Envelopes still in the spool, as far as the session knows."""
        return len(self._tracks)

    def state_of(self, sequence: int) -> St | None:
        t = self._tracks.get(sequence)
        return t.state if t else None

    def next_deadline(self) -> float | None:
        """The earliest time at which a `Tick` would do something, or None."""
        times: list[float] = []
        if self.conn is Conn.WAITING:
            times.append(self._reconnect_at)
        if self.conn is Conn.CONNECTED:
            times.append(self._next_health)
            for t in self._tracks.values():
                if t.state in (St.PUBLISHING, St.AWAIT_ACK):
                    times.append(t.sent_at + self.cfg.ack_timeout_s)
                elif t.state is St.HELD:
                    times.append(t.not_before)
        return min(times) if times else None

    # ------------------------------------------------------------ dispatch
    def handle(self, event: Event) -> list[Command]:
        out: list[Command] = []
        match event:
            case Start(now=now):
                self._connect(out)
            case Connected(now=now, transport=tr):
                self._on_connected(now, tr, out)
            case ConnectFailed(now=now, transport=tr, reason=reason):
                self._on_connect_failed(now, tr, reason, out)
            case Disconnected(now=now, reason=reason):
                self._on_disconnected(now, reason, out)
            case PubAck(now=now, sequence=seq, reason_code=rc):
                self._on_puback(now, seq, rc, out)
            case Acked():
                self._on_ack(event, out)
            case Tick(now=now):
                self._on_tick(now, out)
            case SpoolChanged(now=now, entries=entries):
                self._on_spool(now, entries, out)
            case CertValidity(now=now, wall=wall, not_before=nb, not_after=na):
                first = self._cert is None
                self._cert = (nb, na, wall - now)
                if first and self.conn is Conn.CONNECTED:
                    out.append(Subscribe(self.renewed_topic, 1))
            case RenewalDone(now=now, ok=ok, reason=reason):
                self._renew_sent_at = None
                if not ok:
                    # refused or not installable: ask again later, delivery goes on
                    self._renew_retry_at = now + self.cfg.backoff_max_s
                    out.append(Log("warning", f"certificate renewal refused: {reason}"))
        return out

    # ------------------------------------------------------------ connection
    def _set_conn(self, new: Conn) -> None:
        if new not in _CONN_TRANSITIONS[self.conn]:
            raise RuntimeError(f"uplink: illegal transition {self.conn.value} -> {new.value}")
        self.conn = new

    def _connect(self, out: list[Command]) -> None:
        if self.conn not in (Conn.IDLE, Conn.WAITING):
            return
        self._set_conn(Conn.CONNECTING)
        port = self.cfg.ws_port if self.transport == TRANSPORT_WS else self.cfg.port
        assert port is not None
        out.append(Connect(self.transport, port))

    def _backoff(self) -> float:
        base = min(
            self.cfg.backoff_max_s, self.cfg.backoff_min_s * 2.0 ** max(0, self.failures - 1)
        )
        # "equal jitter": half fixed, half random, so reconnect storms spread out
        # but a delay never collapses to zero.
        return base / 2 + self._rand() * base / 2

    def _wait(self, now: float, out: list[Command]) -> None:
        self._set_conn(Conn.WAITING)
        delay = self._backoff()
        self._reconnect_at = now + delay
        out.append(WaitReconnect(delay, self.failures))

    def _on_connected(self, now: float, transport: str, out: list[Command]) -> None:
        if self.conn is not Conn.CONNECTING:
            return
        self._set_conn(Conn.CONNECTED)
        self.stats.connects += 1
        self._connected_at = now
        self._preferred = transport
        self._fails_on_transport = 0
        out.append(Log("info", f"connected over {transport}"))
        out.append(Subscribe(self.ack_topic, 1))
        out.append(Publish(self.status_topic, self._status_payload("online"), 1, True))
        if self._cert is not None:
            out.append(Subscribe(self.renewed_topic, 1))
        self._next_health = now  # one health message right after connecting
        self._on_tick(now, out)

    def _on_connect_failed(
        self, now: float, transport: str, reason: str, out: list[Command]
    ) -> None:
        if self.conn is not Conn.CONNECTING:
            return
        self.failures += 1
        self.stats.connect_failures += 1
        self._fails_on_transport += 1
        out.append(Log("warning", f"connect over {transport} failed: {reason}"))
        if self.cfg.ws_port is not None and self._fails_on_transport >= self.cfg.ws_after_failures:
            self.transport = TRANSPORT_WS if transport == TRANSPORT_TCP else TRANSPORT_TCP
            self._fails_on_transport = 0
        self._wait(now, out)

    def _on_disconnected(self, now: float, reason: str, out: list[Command]) -> None:
        if self.conn is Conn.CONNECTING:
            self._on_connect_failed(now, self.transport, reason, out)
            return
        if self.conn is not Conn.CONNECTED:
            return
        if now - self._connected_at >= _STABLE_S:
            self.failures = 0
        self.failures += 1
        self.transport = self._preferred
        self._renew_sent_at = None  # its reply went with the connection: ask again
        for t in self._tracks.values():
            if t.state in (St.PUBLISHING, St.AWAIT_ACK):
                t.state = St.QUEUED  # re-send after reconnecting; duplicates are harmless
        out.append(Log("warning", f"disconnected: {reason}"))
        self._wait(now, out)

    # ------------------------------------------------------------ delivery
    def _on_spool(self, now: float, entries: Iterable[EntryLike], out: list[Command]) -> None:
        seen: list[int] = []
        for e in entries:
            seen.append(e.sequence)
            if e.sequence not in self._tracks:
                self._tracks[e.sequence] = _Track(e)
        present = set(seen)
        for seq in list(self._tracks):
            if seq not in present:  # removed behind our back (eviction, operator)
                del self._tracks[seq]
        self._order = seen
        if self.conn is Conn.CONNECTED:
            self._pump(now, out)

    def _pump(self, now: float, out: list[Command]) -> None:
        window = self.cfg.max_in_flight - self.in_flight()
        if window <= 0:
            return
        for seq in self._order:
            t = self._tracks.get(seq)
            if t is None:
                continue
            if t.state is St.HELD and t.not_before <= now:
                t.state = St.QUEUED
            if t.state is not St.QUEUED:
                continue
            t.state = St.PUBLISHING
            t.sent_at = now
            resend = t.attempts > 0
            t.attempts += 1
            self.stats.published += 1
            if resend:
                self.stats.resent += 1
            out.append(PublishEnvelope(t.entry, self.summary_topic, resend))
            window -= 1
            if window == 0:
                break

    def _on_puback(self, now: float, seq: int, rc: int, out: list[Command]) -> None:
        t = self._tracks.get(seq)
        if t is None or t.state is not St.PUBLISHING:
            return
        if rc < REASON_FAILURE:
            t.state = St.AWAIT_ACK
            return
        # The broker refused it (ACL, quota, ...): keep the envelope, try again later.
        self.stats.refused += 1
        self.stats.last_refusal = f"0x{rc:02x}"
        t.state = St.HELD
        t.not_before = now + self.cfg.ack_timeout_s
        out.append(Log("warning", f"broker refused sequence {seq}: reason 0x{rc:02x}"))
        self._pump(now, out)

    def _on_ack(self, ev: Acked, out: list[Command]) -> None:
        t = self._tracks.get(ev.sequence)
        if t is None:
            return  # late or repeated ack for something already gone
        if ev.status in ("stored", "duplicate"):
            if ev.status == "stored":
                self.stats.stored += 1
            else:
                self.stats.duplicate += 1
            del self._tracks[ev.sequence]
            out.append(RemoveFromSpool(t.entry, ev.status))
        else:
            self.stats.rejected += 1
            reason = ev.reason or "unspecified"
            if reason in RETRYABLE_REJECTIONS:
                t.state = St.HELD
                t.not_before = ev.now + self.cfg.ack_timeout_s
                out.append(
                    Log("warning", f"sequence {ev.sequence} rejected ({reason}); will retry")
                )
            else:
                self.stats.quarantined += 1
                del self._tracks[ev.sequence]
                out.append(Quarantine(t.entry, reason))
        if self.conn is Conn.CONNECTED:
            self._pump(ev.now, out)

    def _on_tick(self, now: float, out: list[Command]) -> None:
        if self.conn is Conn.WAITING and now >= self._reconnect_at:
            self._connect(out)
            return
        if self.conn is not Conn.CONNECTED:
            return
        for seq, t in self._tracks.items():
            if (
                t.state in (St.PUBLISHING, St.AWAIT_ACK)
                and now - t.sent_at >= self.cfg.ack_timeout_s
            ):
                self.stats.ack_timeouts += 1
                t.state = St.QUEUED
                out.append(Log("info", f"no acknowledgement for sequence {seq}; re-sending"))
        if now >= self._next_health:
            self._next_health = now + self.cfg.health_interval_s
            out.append(PublishHealth(self.health_topic, self._health_fields(now)))
        self._renew_if_due(now, out)
        self._pump(now, out)

    def renewal_due(self, now: float) -> bool:
        """Is the certificate within its renewal margin (and no request outstanding)?"""
        if self._cert is None:
            return False
        nb, na, offset = self._cert
        margin = self.cfg.renew_before_s
        if margin is None:
            margin = (na - nb) / 3  # a third of the lifetime, as ACME clients do
        return now + offset >= na - margin

    def _renew_if_due(self, now: float, out: list[Command]) -> None:
        if self._renew_sent_at is not None:
            if now - self._renew_sent_at < self.cfg.ack_timeout_s:
                return
            self._renew_sent_at = None  # no answer: ask again
        if now < self._renew_retry_at or not self.renewal_due(now):
            return
        self._renew_sent_at = now
        out.append(Log("info", "certificate within its renewal margin: asking central"))
        out.append(RequestRenewal(self.renew_topic))

    # ------------------------------------------------------------ payloads
    def _status_payload(self, state: str) -> bytes:
        doc: dict[str, Any] = {"state": state, "sensor_id": self.cfg.sensor_id}
        if state == "online":
            doc["version"] = self.version
            doc["boot_time_us"] = self.boot_time_us
        return json.dumps(doc, sort_keys=True).encode()

    def _health_fields(self, now: float) -> dict[str, Any]:
        s = self.stats
        return {
            "sensor_id": self.cfg.sensor_id,
            "time_us": int(now * 1_000_000),
            "spool_entries": len(self._tracks),
            "spool_bytes": sum(t.entry.size for t in self._tracks.values()),
            "in_flight": self.in_flight(),
            "transport": self.transport,
            "uplink": {
                "published": s.published,
                "resent": s.resent,
                "refused": s.refused,
                "stored": s.stored,
                "duplicate": s.duplicate,
                "rejected": s.rejected,
                "quarantined": s.quarantined,
                "connects": s.connects,
                "connect_failures": s.connect_failures,
            },
        }


def handle_all(session: UplinkSession, events: Sequence[Event]) -> list[Command]:
    """Feed several events; return every command, in order (handy in tests)."""
    out: list[Command] = []
    for ev in events:
        out.extend(session.handle(ev))
    return out

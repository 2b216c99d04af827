"""Scripted scenarios for the sans-I/O uplink session: no broker, no clock, no sockets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from sensor.edges.uplink_config import UplinkConfig
from uplink.session import (
    Acked,
    Conn,
    Connect,
    Connected,
    ConnectFailed,
    Disconnected,
    PubAck,
    Publish,
    PublishEnvelope,
    PublishHealth,
    Quarantine,
    RemoveFromSpool,
    SpoolChanged,
    St,
    Start,
    Subscribe,
    Tick,
    UplinkSession,
    WaitReconnect,
    parse_ack,
)
from wire.topics import ack_payload


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    sequence: int
    size: int = 100


def entries(*seqs: int) -> tuple[Entry, ...]:
    return tuple(Entry(f"{s:020d}.env", s) for s in seqs)


def cfg(**kw: object) -> UplinkConfig:
    base: dict[str, object] = dict(
        sensor_id="tokyo-01",
        spool=Path("/nonexistent"),
        host="127.0.0.1",
        port=8883,
        ws_port=443,
        insecure=True,
        max_in_flight=3,
        ack_timeout_s=10.0,
        backoff_min_s=1.0,
        backoff_max_s=60.0,
        health_interval_s=300.0,
    )
    base.update(kw)
    return UplinkConfig(**base)  # type: ignore[arg-type]


def session(rand: float = 0.5, **kw: object) -> UplinkSession:
    return UplinkSession(cfg(**kw), software_version="0.1.0", boot_time_us=123, rand=lambda: rand)


def sent(cmds: list[object]) -> list[int]:
    return [c.entry.sequence for c in cmds if isinstance(c, PublishEnvelope)]


def connected(s: UplinkSession, now: float = 0.0) -> list[object]:
    out: list[object] = list(s.handle(Start(now)))
    assert out == [Connect("tcp", 8883)]
    out = list(s.handle(Connected(now, "tcp")))
    return out


def test_connect_subscribes_announces_online_and_sends_oldest_first_within_window() -> None:
    s = session()
    s.handle(SpoolChanged(0.0, entries(5, 6, 7, 8, 9)))
    out = connected(s)
    assert out[1] == Subscribe("teiten/v1/tokyo-01/ack", 1)
    status = out[2]
    assert isinstance(status, Publish) and status.retain and status.qos == 1
    assert status.topic == "teiten/v1/tokyo-01/status"
    doc = json.loads(status.payload)
    assert doc == {
        "state": "online",
        "sensor_id": "tokyo-01",
        "version": "0.1.0",
        "boot_time_us": 123,
    }
    assert any(isinstance(c, PublishHealth) for c in out)
    assert sent(out) == [5, 6, 7]  # window of 3
    assert all(
        c.topic == "teiten/v1/tokyo-01/summary" for c in out if isinstance(c, PublishEnvelope)
    )
    will = s.will()
    assert will.retain and json.loads(will.payload)["state"] == "offline"


def test_puback_alone_never_removes_only_the_end_to_end_ack_does() -> None:
    s = session()
    s.handle(SpoolChanged(0.0, entries(1, 2)))
    connected(s)
    assert s.handle(PubAck(0.1, 1, 0)) == []
    assert s.state_of(1) is St.AWAIT_ACK
    out = s.handle(Acked(0.2, 1, "stored"))
    assert out == [RemoveFromSpool(Entry(f"{1:020d}.env", 1), "stored")]
    assert s.state_of(1) is None
    out = s.handle(Acked(0.3, 2, "duplicate"))
    assert isinstance(out[0], RemoveFromSpool) and out[0].status == "duplicate"
    assert s.pending() == 0


def test_window_refills_as_acks_arrive() -> None:
    s = session()
    s.handle(SpoolChanged(0.0, entries(*range(1, 8))))
    out = connected(s)
    assert sent(out) == [1, 2, 3]
    assert sent(s.handle(Acked(1.0, 2, "stored"))) == [4]
    assert s.in_flight() == 3


def test_resend_after_ack_timeout() -> None:
    s = session()
    s.handle(SpoolChanged(0.0, entries(1)))
    connected(s)
    s.handle(PubAck(0.1, 1, 0))
    assert sent(s.handle(Tick(9.9))) == []
    out = s.handle(Tick(10.0))
    resends = [c for c in out if isinstance(c, PublishEnvelope)]
    assert [c.entry.sequence for c in resends] == [1] and resends[0].resend
    assert s.stats.ack_timeouts == 1 and s.stats.resent == 1


def test_refused_publish_keeps_envelope_and_holds_it() -> None:
    s = session(max_in_flight=1)
    s.handle(SpoolChanged(0.0, entries(1, 2)))
    connected(s)
    out = s.handle(PubAck(0.1, 1, 0x87))
    assert s.state_of(1) is St.HELD
    assert not any(isinstance(c, RemoveFromSpool) for c in out)
    assert sent(out) == [2]  # the refused one does not block the others
    assert s.stats.refused == 1 and s.stats.last_refusal == "0x87"
    s.handle(PubAck(0.2, 2, 0))
    assert sent(s.handle(Tick(5.0))) == []  # 2 in flight fills the window of 1
    assert sent(s.handle(Acked(5.0, 2, "stored"))) == []  # 1 is held until 10.1
    assert sent(s.handle(Tick(10.1))) == [1]


def test_permanent_rejection_quarantines_retryable_one_is_held() -> None:
    s = session()
    s.handle(SpoolChanged(0.0, entries(1, 2)))
    connected(s)
    out = s.handle(Acked(0.5, 1, "rejected", "bad_signature"))
    assert out[0] == Quarantine(Entry(f"{1:020d}.env", 1), "bad_signature")
    out = s.handle(Acked(0.5, 2, "rejected", "unknown_sensor"))
    assert s.state_of(2) is St.HELD
    assert sent(s.handle(Tick(10.5))) == [2]


def test_disconnect_requeues_in_flight_and_backs_off_with_jitter() -> None:
    s = session(rand=0.0)
    s.handle(SpoolChanged(0.0, entries(1, 2)))
    connected(s)
    s.handle(PubAck(0.1, 1, 0))
    out = s.handle(Disconnected(1.0, "broker gone"))
    assert s.conn is Conn.WAITING
    assert s.state_of(1) is St.QUEUED and s.state_of(2) is St.QUEUED
    wait = next(c for c in out if isinstance(c, WaitReconnect))
    assert wait.delay_s == pytest.approx(0.5)  # base 1 s, equal jitter with rand=0
    assert s.handle(Tick(1.4)) == []
    assert s.handle(Tick(1.5)) == [Connect("tcp", 8883)]
    out = s.handle(Connected(1.6, "tcp"))
    assert sent(out) == [1, 2]


def test_backoff_doubles_and_is_capped() -> None:
    s = session(rand=1.0, ws_port=None, backoff_max_s=8.0)
    s.handle(Start(0.0))
    delays = []
    now = 0.0
    for _ in range(6):
        out = s.handle(ConnectFailed(now, "tcp", "refused"))
        d = next(c for c in out if isinstance(c, WaitReconnect)).delay_s
        delays.append(d)
        now += d
        assert s.handle(Tick(now)) == [Connect("tcp", 8883)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_websockets_fallback_when_primary_port_fails_then_sticks() -> None:
    s = session(rand=0.0)
    assert s.handle(Start(0.0)) == [Connect("tcp", 8883)]
    s.handle(ConnectFailed(0.0, "tcp", "timed out"))
    assert s.handle(Tick(100.0)) == [Connect("websockets", 443)]
    s.handle(Connected(100.0, "websockets"))
    s.handle(Disconnected(200.0, "keepalive"))
    assert s.handle(Tick(300.0)) == [Connect("websockets", 443)]


def test_offline_spool_is_delivered_in_order_after_reconnect() -> None:
    s = session(max_in_flight=4)
    s.handle(Start(0.0))
    s.handle(ConnectFailed(0.0, "tcp", "no route"))
    s.handle(SpoolChanged(10.0, entries(*range(72))))
    assert s.handle(Tick(3600.0 * 72)) != []  # reconnect attempt
    out = s.handle(Connected(3600.0 * 72, "websockets"))
    order = sent(out)
    now = 3600.0 * 72
    delivered = []
    while order:
        seq = order.pop(0)
        s.handle(PubAck(now, seq, 0))
        delivered.append(seq)
        order.extend(sent(s.handle(Acked(now, seq, "stored"))))
    assert delivered == list(range(72))
    assert s.pending() == 0


def test_spool_entries_removed_elsewhere_are_forgotten() -> None:
    s = session()
    s.handle(SpoolChanged(0.0, entries(1, 2, 3)))
    s.handle(SpoolChanged(1.0, entries(2, 3)))
    assert s.state_of(1) is None and s.pending() == 2


def test_late_ack_for_unknown_sequence_is_ignored() -> None:
    s = session()
    connected(s)
    assert s.handle(Acked(0.0, 99, "stored")) == []


def test_health_every_interval() -> None:
    s = session(health_interval_s=60.0)
    out = connected(s)
    h = [c for c in out if isinstance(c, PublishHealth)]
    assert h and h[0].topic == "teiten/v1/tokyo-01/health"
    assert h[0].fields["spool_entries"] == 0
    assert not any(isinstance(c, PublishHealth) for c in s.handle(Tick(59.0)))
    assert any(isinstance(c, PublishHealth) for c in s.handle(Tick(60.0)))


def test_ack_payload_round_trip_and_garbage() -> None:
    a = parse_ack(ack_payload(7, "rejected", "sequence_reuse"))
    assert a is not None and (a.sequence, a.status, a.reason) == (7, "rejected", "sequence_reuse")
    assert parse_ack(b"\xc1") is None
    assert parse_ack(ack_payload(-1, "stored", None)) is None
    assert parse_ack(ack_payload(1, "maybe", None)) is None

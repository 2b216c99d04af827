"""The uplink end to end against a real Mosquitto with mutual TLS (never a mock).

Each test starts its own broker on free loopback ports and `teiten central receive` as a
subprocess; sensors run the real paho uplink in threads (or, for the last-will test, in a
process that is SIGKILLed).  Timeouts are short so the whole set stays fast.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from mqtt_fixtures import REPO, Broker, Central, Pki, SensorSim, free_port, wait_for
from paho.mqtt.enums import CallbackAPIVersion

pytestmark = pytest.mark.privileged
pytest_plugins = ("mqtt_fixtures",)  # the pki, broker and central fixtures


def sensors(tmp_path: Path, pki: Pki, *ids: str) -> list[SensorSim]:
    return [SensorSim(tmp_path / "boards", i, pki) for i in ids]


def test_three_sensors_48_hours_each_stored_exactly_once(
    tmp_path: Path, pki: Pki, broker: Broker, central: Central
) -> None:
    boards = sensors(tmp_path, pki, "s-a", "s-b", "s-c")
    central.enroll(*boards)
    central.start()
    for b in boards:
        b.fill(48)
        b.start(broker)
    try:
        wait_for(lambda: all(b.pending() == 0 for b in boards), 60, "every spool to drain")
    finally:
        for b in boards:
            b.stop()
    with central.store() as st:
        assert st.count_summaries() == 144
        for b in boards:
            rows = st.summaries(b.id)
            assert len(rows) == 48
            assert [r.sequence for r in rows] == sorted(r.sequence for r in rows)
            assert st.gaps(b.id) == []
        assert st.rejected() == []
        wait_for(lambda: st.health_count() >= 3, 10, "health messages")

        def states() -> dict[str, str]:
            return {k: v["state"] for k, v in st.latest_status().items()}

        # a clean stop says offline; the receiver stores it a moment after the stop
        wait_for(lambda: set(states().values()) == {"offline"}, 10, "offline statuses")
        assert states() == {"s-a": "offline", "s-b": "offline", "s-c": "offline"}


def test_broker_sigkill_mid_stream_loses_nothing_stores_nothing_twice(
    tmp_path: Path, pki: Pki, broker: Broker, central: Central
) -> None:
    (s,) = sensors(tmp_path, pki, "s-kill")
    central.enroll(s)
    central.start()
    s.fill(60)
    s.start(broker, max_in_flight=4)
    try:
        wait_for(lambda: central.count() >= 10, 30, "part of the stream")
        broker.kill()  # SIGKILL: no autosave, in-flight state gone
        assert 0 < s.pending() < 60
        time.sleep(0.5)
        broker.restart()
        wait_for(lambda: s.pending() == 0, 60, "the spool to drain after the restart")
    finally:
        s.stop()
    with central.store() as st:
        rows = st.summaries("s-kill")
        assert len(rows) == 60
        assert len({r.sequence for r in rows}) == 60
        assert st.gaps("s-kill") == []


def test_sensor_offline_72_hours_delivers_whole_spool(
    tmp_path: Path, pki: Pki, broker: Broker, central: Central
) -> None:
    (s,) = sensors(tmp_path, pki, "s-off")
    central.enroll(s)
    central.start()
    broker.kill()  # the central site is unreachable while 72 hours accumulate
    s.start(broker)
    s.fill(72)
    time.sleep(1.0)
    assert s.pending() == 72
    broker.start()
    try:
        wait_for(lambda: s.pending() == 0, 60, "72 envelopes after reconnecting")
    finally:
        s.stop()
    assert central.count() == 72


CRASH_AT_COMMIT = """
import os
import central.store as _st
_orig_store = _st.Store.store_summary
_orig_commit = _st.Store._commit
_state = {"armed": False}
def _store(self, **kw):
    _state["armed"] = True
    return _orig_store(self, **kw)
def _commit(self):
    if _state["armed"]:
        os._exit(42)  # killed between receipt and commit
    return _orig_commit(self)
_st.Store.store_summary = _store
_st.Store._commit = _commit
"""


def test_receiver_killed_before_commit_gets_redelivery_and_stores_once(
    tmp_path: Path, pki: Pki, broker: Broker, central: Central
) -> None:
    (s,) = sensors(tmp_path, pki, "s-rx")
    central.enroll(s)
    central.start(prelude=CRASH_AT_COMMIT)
    (seq,) = s.fill(1)
    # long ack timeout: the sensor does not re-send within the test, so what arrives
    # after the restart is the broker's redelivery from the receiver's persistent session
    s.start(broker, ack_timeout_s=120.0)
    try:
        assert central.proc is not None
        assert central.proc.wait(timeout=20) == 42
        assert central.count() == 0
        central.start()
        wait_for(lambda: s.pending() == 0, 20, "the redelivered envelope to be stored")
        assert s.uplink is not None
        assert s.uplink.session.stats.resent == 0  # type: ignore[attr-defined]
    finally:
        s.stop()
    with central.store() as st:
        assert [r.sequence for r in st.summaries("s-rx")] == [seq]


def test_publishing_under_another_sensors_topic_is_not_authorized(
    tmp_path: Path, pki: Pki, broker: Broker, central: Central
) -> None:
    a, b = sensors(tmp_path, pki, "s-good", "s-victim")
    central.enroll(a, b)
    central.start()
    env = a.seal(1_800_000_000 // 3600 * 3600, 7)
    # a's certificate, b's topic: the broker answers PUBACK 0x87
    got: dict[str, int] = {}
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="s-good", protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(pki.ca), certfile=str(a.cert), keyfile=str(a.tls_key))
    c.on_publish = lambda cl, ud, mid, rc, props: got.__setitem__("rc", rc.value)
    c.connect("127.0.0.1", broker.tls_port)
    c.loop_start()
    try:
        c.publish("teiten/v1/s-victim/summary", env, qos=1).wait_for_publish(5)
        wait_for(lambda: "rc" in got, 5, "PUBACK")
    finally:
        c.loop_stop()
        c.disconnect()
    assert got["rc"] == 0x87  # Not authorized
    # and the real uplink keeps the envelope it was refused
    h = 1_800_000_000 // 3600 * 3600
    a.spool.write(env, h, 7)
    a.id = "s-victim"  # misconfigured board: publishes in another name with its own cert
    a.start(broker)
    try:
        wait_for(
            lambda: a.uplink is not None and a.uplink.session.stats.refused >= 1,  # type: ignore[attr-defined]
            15,
            "a refused publish",
        )
        assert a.pending() == 1
        assert a.uplink.session.stats.last_refusal == "0x87"  # type: ignore[union-attr]
    finally:
        a.stop()
    assert central.count() == 0


def test_tampered_reused_and_unknown_are_rejected_with_reason(
    tmp_path: Path, pki: Pki, broker: Broker, central: Central
) -> None:
    good, stranger = sensors(tmp_path, pki, "s-t", "s-unknown")
    central.enroll(good)  # s-unknown has a certificate but is not in sensors.toml
    central.start()
    h = 1_800_000_000 // 3600 * 3600
    ok = good.seal(h, 1)
    tampered = bytearray(good.seal(h + 3600, 2))
    tampered[-3] ^= 0x01  # inside the signature
    good.spool.write(ok, h, 1)
    good.spool.write(bytes(tampered), h + 3600, 2)
    stranger.spool.write(stranger.seal(h, 1), h, 1)
    good.start(broker)
    stranger.start(broker)
    try:
        wait_for(lambda: good.pending() == 0, 20, "good and tampered to leave the spool")
        # same sequence 1 again with other bytes: a sequence reuse
        good.spool.write(good.seal(h, 1, packets=5), h, 1)
        wait_for(lambda: good.pending() == 0, 20, "the reused sequence to be rejected")
        wait_for(
            lambda: stranger.uplink is not None and stranger.uplink.session.stats.rejected >= 1,  # type: ignore[attr-defined]
            20,
            "unknown sensor rejection",
        )
        assert stranger.pending() == 1  # unknown_sensor is retried, not dropped
    finally:
        good.stop()
        stranger.stop()
    q = sorted(p.name for p in good.spool.quarantine_path.iterdir())
    assert len([n for n in q if n.endswith(".reason")]) == 2
    with central.store() as st:
        assert [r.sequence for r in st.summaries("s-t")] == [1]
        reasons = sorted({r["reason"] for r in st.rejected()})
        assert reasons == ["bad_signature", "sequence_reuse", "unknown_sensor"]
        assert st.envelope("s-t", 1) == ok


def test_last_will_marks_killed_sensor_offline(
    tmp_path: Path, pki: Pki, broker: Broker, central: Central
) -> None:
    (s,) = sensors(tmp_path, pki, "s-will")
    central.enroll(s)
    central.start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sensor.cli", "uplink", "-v", "--config", str(s.toml(broker))],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def state() -> str | None:
            with central.store() as st:
                v = st.latest_status().get("s-will")
                return None if v is None else str(v["state"])

        wait_for(lambda: state() == "online", 20, "online status")
        with central.store() as st:
            doc = json.loads(st.latest_status()["s-will"]["payload"])
        assert doc["version"] and doc["boot_time_us"] > 0
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
        wait_for(lambda: state() == "offline", 15, "the last-will")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_websockets_fallback_delivers_when_8883_is_closed(
    tmp_path: Path, pki: Pki, broker: Broker, central: Central
) -> None:
    (s,) = sensors(tmp_path, pki, "s-ws")
    central.enroll(s)
    central.start()
    s.fill(5)
    closed = free_port()  # nothing listens there: the "blocked 8883"
    s.start(broker, port=closed)
    try:
        wait_for(lambda: s.pending() == 0, 30, "delivery over WebSockets")
        assert s.uplink is not None
        assert s.uplink.session.transport == "websockets"  # type: ignore[attr-defined]
    finally:
        s.stop()
    assert central.count() == 5
    assert "websockets" in broker.log_text().lower()


DB_ERROR_ONCE = """
import sqlite3
import central.store as _st
_orig_store = _st.Store.store_summary
_state = {"failed": False}
def _store(self, **kw):
    if not _state["failed"]:
        _state["failed"] = True
        raise sqlite3.OperationalError("disk I/O error (injected)")
    return _orig_store(self, **kw)
_st.Store.store_summary = _store
"""


def test_receiver_survives_a_database_error_and_a_poison_status(
    tmp_path: Path, pki: Pki, broker: Broker, central: Central
) -> None:
    """A failed commit is not acknowledged and comes back after a reconnect; a status
    message that breaks json (deep nesting) is ignored; the receiver keeps running."""
    (s,) = sensors(tmp_path, pki, "s-res")
    central.enroll(s)
    central.start(prelude=DB_ERROR_ONCE)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="s-res-raw", protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(pki.ca), certfile=str(s.cert), keyfile=str(s.tls_key))
    c.connect("127.0.0.1", broker.tls_port)
    c.loop_start()
    try:
        c.publish("teiten/v1/s-res/status", b"[" * 200_000, qos=1).wait_for_publish(5)
    finally:
        c.loop_stop()
        c.disconnect()
    seqs = s.fill(3)
    s.start(broker, ack_timeout_s=120.0)  # no re-send: recovery is the receiver's own
    try:
        wait_for(lambda: s.pending() == 0, 30, "all envelopes stored after the db error")
        assert central.proc is not None and central.proc.poll() is None
    finally:
        s.stop()
    with central.store() as st:
        assert [r.sequence for r in st.summaries("s-res")] == sorted(seqs)
    assert "database error" in central.log.read_text()  # the fault did happen

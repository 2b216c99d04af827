"""Zero-touch enrolment against a real Mosquitto (docs/enrolment.md).

A board with a real FAT card: `teiten firstboot` makes its keys, `teiten enrol` presents the
one-time token from teiten.toml on the enrolment listener (CA pinned by fingerprint) and
installs the certificate; then the board publishes and the receiver stores.  The same token
fails a second time, after expiry and for another sensor id, each with a reason on the card,
and leaves the board without a certificate (its uplink and capture units, which require
`teiten enrol`, do not start).  A token login can use nothing but its own two topics.
"""

from __future__ import annotations

import dataclasses
import json
import ssl
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import pytest
from mqtt_fixtures import summary_bytes, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from central.keyring import load_keyring
from sensor.edges.keys import load_private_key
from sensor.edges.spool import Spool
from sensor.edges.uplink_config import load_uplink
from wire.enrolment import parse_token, reply_topic, request_topic
from wire.keys import public_key_text

if TYPE_CHECKING:
    from enrol_fixtures import CardBoard, Site

pytestmark = pytest.mark.privileged
pytest_plugins = ("mqtt_fixtures", "enrol_fixtures")  # pki, site, make_site
HOUR0 = 1_800_000_000 // 3600 * 3600


def enrolled_board(site: Site, name: str, sensor_id: str, *extra: str) -> CardBoard:
    tok = site.enroll(sensor_id, *extra)
    b = site.board(name, sensor_id, tok["teiten_toml"])
    assert b.firstboot()["network"] is True
    rc, out = b.enrol()
    assert rc == 0 and out["action"] == "enrolled", out
    return b


def publish(site: Site, b: CardBoard, seqs: list[int], hour0: int = HOUR0,
            **cfg_overrides: object) -> None:
    """Seal one summary per sequence with the board's key; send them with the uplink."""
    from uplink.mqtt import MqttUplink
    from wire.envelope import seal

    key = load_private_key(b.signing_key)
    spool = Spool(b.spool)
    for i, seq in enumerate(seqs):
        h = hour0 + 3600 * i
        spool.write(seal(summary_bytes(b.sensor_id, h), sensor_id=b.sensor_id, sequence=seq,
                         hour_start=h, created_us=(h + 3600) * 1_000_000, key=key), h, seq)
    cfg = dataclasses.replace(load_uplink(b.etc / "sensor.toml"), ack_timeout_s=3.0,
                              backoff_min_s=0.2, backoff_max_s=1.0, connect_timeout_s=2.0,
                              **cfg_overrides)
    up = MqttUplink(cfg, spool, software_version="test", spool_poll_s=0.2)
    stop = threading.Event()
    t = threading.Thread(target=up.run, args=(stop,), daemon=True)
    t.start()
    try:
        wait_for(lambda: not spool.entries(), 30, "the spool to drain")
    finally:
        stop.set()
        t.join(timeout=10)


def test_board_enrols_with_a_token_then_publishes(site: Site) -> None:
    tok = site.enroll("tyo-01", "--expires", "1h")
    assert tok["sensor_id"] == "tyo-01" and "ca_fingerprint" in tok["teiten_toml"]
    # recorded as pending at central
    _, out = site.teiten("central", "sensors", "--config", str(site.central.conf), "--json")
    pending = json.loads(out)["pending_enrolments"]
    assert [(p["sensor_id"], p["state"]) for p in pending] == [("tyo-01", "pending")]
    b = site.board("a", "tyo-01", tok["teiten_toml"])
    assert b.firstboot()["network"] is True
    assert not b.cert.exists()
    rc, out = b.enrol()
    assert rc == 0 and out["action"] == "enrolled", out
    assert b.cert.exists() and b.ca.read_bytes() == site.pki.files.ca_crt.read_bytes()
    # central added the board's signing key; the token left the card, the result is there
    entry = load_keyring(site.central.sensors).get("tyo-01")
    assert entry is not None and not entry.revoked
    assert public_key_text(entry.public_key) == \
        public_key_text(load_private_key(b.signing_key).public_key())
    card = b.get("teiten.toml") or ""
    assert parse_token(tok["token"])[1] not in card and "[enrol]" in card
    assert "ENROLLED" in (b.get("teiten-enrolment.txt") or "")
    # enrolled again at the next boot: nothing to do, still fine
    rc, out = b.enrol()
    assert rc == 0 and out["action"] == "already"
    _, out = site.teiten("central", "sensors", "--config", str(site.central.conf), "--json")
    assert json.loads(out)["pending_enrolments"] == []
    # and it publishes: the receiver stores its summaries
    publish(site, b, [(7 << 32) | 1, (7 << 32) | 2])
    assert site.central.count() == 2


def _refused(b: CardBoard, reason: str) -> None:
    rc, out = b.enrol()
    assert rc == 1 and out["enrolled"] is False and out["reason"] == reason, out
    assert not b.cert.exists()  # no certificate: uplink and capture stay off
    text = b.get("teiten-enrolment.txt") or ""
    assert "FAILED" in text and reason in text and "captures nothing" in text
    assert "token" in (b.get("teiten.toml") or "")  # the token stays for staff to replace


def test_the_same_token_fails_a_second_time(site: Site) -> None:
    tok = site.enroll("tyo-02")
    enrolled = site.board("first", "tyo-02", tok["teiten_toml"])
    enrolled.firstboot()
    assert enrolled.enrol()[0] == 0
    second = site.board("copy", "tyo-02", tok["teiten_toml"])  # other keys, same token
    second.firstboot()
    _refused(second, "token_used")
    # the key enrolled is still the first board's
    entry = load_keyring(site.central.sensors).get("tyo-02")
    assert entry is not None and public_key_text(entry.public_key) == \
        public_key_text(load_private_key(enrolled.signing_key).public_key())


def test_a_token_fails_after_expiry(site: Site) -> None:
    tok = site.enroll("tyo-03", "--expires", "2s")
    b = site.board("late", "tyo-03", tok["teiten_toml"])
    b.firstboot()
    time.sleep(2.5)
    _refused(b, "token_expired")
    assert "tyo-03" not in load_keyring(site.central.sensors)


def test_a_token_fails_for_another_sensor_id(site: Site) -> None:
    tok = site.enroll("tyo-04")
    b = site.board("other", "tyo-05", tok["teiten_toml"])
    b.firstboot()
    _refused(b, "wrong_sensor")
    assert "tyo-05" not in load_keyring(site.central.sensors)
    assert "tyo-04" not in load_keyring(site.central.sensors)


def test_a_token_removed_from_the_broker_is_refused_at_login(make_site: Any) -> None:
    """After use + grace the broker itself refuses the login (not_authorized)."""
    site = make_site(grace="2s")
    tok = site.enroll("tyo-06")
    first = site.board("one", "tyo-06", tok["teiten_toml"])
    first.firstboot()
    assert first.enrol()[0] == 0
    tid = parse_token(tok["token"])[0]
    wait_for(lambda: tid not in site.broker.passwd.read_text(), 15,
             "the used token to leave the password file")
    time.sleep(0.5)  # the broker re-reads its password file on SIGHUP
    late = site.board("two", "tyo-06", tok["teiten_toml"])
    late.firstboot()
    _refused(late, "not_authorized")


# ---------------------------------------------------------------- the enrolment listener
def _token_client(site: Site, token: str) -> tuple[mqtt.Client, dict[str, object]]:
    tid, secret = parse_token(token)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=tid, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(site.pki.files.ca_crt), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    c.username_pw_set(tid, secret)
    state: dict[str, object] = {"pub": {}, "sub": {}}
    c.on_connect = lambda cl, u, f, rc, p: state.setdefault("connack", rc)
    c.on_publish = lambda cl, u, mid, rc, p: state["pub"].__setitem__(mid, rc)  # type: ignore[attr-defined]
    c.on_subscribe = lambda cl, u, mid, rcs, p: state["sub"].__setitem__(mid, rcs)  # type: ignore[attr-defined]
    c.connect("127.0.0.1", site.broker.enrol_port)
    deadline = time.monotonic() + 10
    while "connack" not in state and time.monotonic() < deadline:
        c.loop(0.05)
    return c, state


def _wait(c: mqtt.Client, box: dict[int, object], mid: int) -> object:
    deadline = time.monotonic() + 10
    while mid not in box and time.monotonic() < deadline:
        c.loop(0.05)
    return box.get(mid)


def test_the_enrolment_listener_allows_nothing_else(site: Site) -> None:
    mine = site.enroll("tyo-07")
    other = site.enroll("tyo-08")
    tid = parse_token(mine["token"])[0]
    oid = parse_token(other["token"])[0]
    c, state = _token_client(site, mine["token"])
    assert not getattr(state["connack"], "is_failure", True), state
    pub: dict[int, object] = state["pub"]  # type: ignore[assignment]
    sub: dict[int, object] = state["sub"]  # type: ignore[assignment]
    try:
        # every other topic the system uses, for this sensor, another, and the site
        topics = [f"teiten/v1/{s}/{k}" for s in ("tyo-07", "tyo-08", tid, "central-receiver")
                  for k in ("summary", "status", "health", "ack", "renew", "renewed")]
        topics += [request_topic(oid), reply_topic(oid), reply_topic(tid),
                   "teiten/v1/enrol/x/request", "teiten/v1", "teiten/v1/enrol",
                   "$SYS/broker/uptime", "$CONTROL/dynamic-security/v1", "anything"]
        for t in topics:
            rc = _wait(c, pub, c.publish(t, b"x", qos=1).mid)
            assert getattr(rc, "value", None) == 0x87, (t, rc)
        # Mosquitto 2.0 grants a SUBSCRIBE and filters each delivery by the read ACL:
        # subscribe to everything, publish on every topic with real identities, receive
        # only the token's own reply.
        got: list[str] = []
        c.on_message = lambda cl, u, m: got.append(m.topic)
        filters = ["#", "$SYS/#", "teiten/#", "+/+/+/+", "+/+/+/+/+", request_topic(tid),
                   request_topic(oid), reply_topic(oid), "teiten/v1/enrol/+/request"]
        for f in filters:
            _wait(c, sub, c.subscribe(f, qos=1)[1])
        _wait(c, sub, c.subscribe(reply_topic(tid), qos=1)[1])
        from uplink.client import new_client

        files = site.pki.files
        cert, key = site.pki.sensor("tyo-07")
        peers = [(new_client("tyo-07", websockets=False, tls=(files.ca_crt, cert, key)),
                  [f"teiten/v1/tyo-07/{k}" for k in ("summary", "status", "health", "renew")]),
                 (new_client("central-receiver", websockets=False,
                             tls=(files.ca_crt, files.receiver_crt, files.receiver_key)),
                  ["teiten/v1/tyo-07/ack"]),
                 (new_client("central-enrol", websockets=False,
                             tls=(files.ca_crt, files.enrol_crt, files.enrol_key)),
                  ["teiten/v1/tyo-07/renewed", reply_topic(oid), reply_topic(tid)])]
        for peer, ts in peers:
            peer.connect("127.0.0.1", site.broker.tls_port)
            peer.loop_start()
            for t in ts:
                peer.publish(t, b"probe", qos=1).wait_for_publish(5)
        # a request on the other token's topic, by the other token's own login
        c3, _ = _token_client(site, other["token"])
        c3.publish(request_topic(oid), b"probe", qos=1)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            c.loop(0.05)
            c3.loop(0.05)
        c3.disconnect()
        for peer, _ts in peers:
            peer.disconnect()
            peer.loop_stop()
        assert set(got) == {reply_topic(tid)}, got
        # its own request topic works (the positive control)
        rc = _wait(c, pub, c.publish(request_topic(tid), b"not a request", qos=1).mid)
        assert getattr(rc, "value", None) == 0
    finally:
        c.disconnect()
    # and no certificate, no token: not even a login
    bad = mine["token"][:-1] + ("A" if mine["token"][-1] != "A" else "B")
    c2, st2 = _token_client(site, bad)
    c2.disconnect()
    assert getattr(st2.get("connack"), "is_failure", True)


def test_a_rogue_broker_never_sees_the_token(site: Site, tmp_path: Path) -> None:
    """teiten.toml pins another CA: the board refuses before it sends anything."""
    tok = site.enroll("tyo-09")
    wrong = tok["teiten_toml"].replace(
        tok["teiten_toml"].split('ca_fingerprint = "')[1].split('"')[0], "sha256:" + "0" * 64)
    b = site.board("pinned", "tyo-09", wrong)
    b.firstboot()
    _refused(b, "rogue_broker")
    assert site.store.token(parse_token(tok["token"])[0]).refusals == 0  # type: ignore[union-attr]

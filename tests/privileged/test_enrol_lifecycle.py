"""Renewal, replacement and cloned cards against a real Mosquitto (docs/enrolment.md).

- A certificate near expiry is renewed over the live connection while summaries keep
  flowing; after the old certificate expired the board reconnects with the new one, and
  the old one is refused by the broker.
- Replacing a board (enrol --replace, the old certificates revoked): the old board is
  refused at the TLS handshake and its envelopes at the receiver; the new board's
  summaries continue the sensor's history; what was stored before stays; no clone alarm.
- Two boards with the same keys (a copied card) are detected by the enrolment service's
  own periodic scan and shown by `teiten central sensors` and the report.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import ssl
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from mqtt_fixtures import summary_bytes, wait_for

from central.clones import detect, recorded
from sensor.edges.keys import load_private_key
from sensor.edges.spool import Spool
from sensor.edges.uplink_config import UplinkConfig, load_uplink
from uplink.client import new_client
from uplink.mqtt import MqttUplink
from wire.envelope import seal

if TYPE_CHECKING:
    from enrol_fixtures import CardBoard, Site

pytestmark = pytest.mark.privileged
pytest_plugins = ("mqtt_fixtures", "enrol_fixtures")  # pki, site, make_site
HOUR0 = 1_800_000_000 // 3600 * 3600  # 2027-01-15, in 2027Q1


def enrolled_board(site: Site, name: str, sensor_id: str, *extra: str) -> CardBoard:
    tok = site.enroll(sensor_id, *extra)
    b = site.board(name, sensor_id, tok["teiten_toml"])
    assert b.firstboot()["network"] is True
    rc, out = b.enrol()
    assert rc == 0 and out["action"] == "enrolled", out
    return b


class Uplink:
    """A board's uplink in a thread (its spool, its config)."""

    def __init__(self, cfg: UplinkConfig, spool: Spool, boot_time_us: int | None = None) -> None:
        self.spool = spool
        self.up = MqttUplink(cfg, spool, software_version="test", spool_poll_s=0.2,
                             boot_time_us=boot_time_us)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.up.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def config(b: CardBoard, **kw: Any) -> UplinkConfig:
    return dataclasses.replace(load_uplink(b.etc / "sensor.toml"), ack_timeout_s=3.0,
                               backoff_min_s=0.2, backoff_max_s=1.0, connect_timeout_s=2.0,
                               health_interval_s=1.0, keepalive_s=5, **kw)


def write(b: CardBoard, spool: Spool, seq: int, hour: int) -> None:
    key = load_private_key(b.signing_key)
    spool.write(seal(summary_bytes(b.sensor_id, hour), sensor_id=b.sensor_id, sequence=seq,
                     hour_start=hour, created_us=(hour + 3600) * 1_000_000, key=key),
                hour, seq)


def tls_refused(site: Site, cert: Path, key: Path, port: int, cid: str) -> bool:
    """True when the broker refuses this certificate (handshake or CONNACK)."""
    c = new_client(cid, websockets=False, tls=(site.pki.files.ca_crt, cert, key))
    state: dict[str, Any] = {}
    c.on_connect = lambda cl, u, f, rc, p: state.setdefault("rc", rc)
    try:
        c.connect("127.0.0.1", port)
        deadline = time.monotonic() + 5
        while "rc" not in state and time.monotonic() < deadline:
            if c.loop(0.1) != mqtt.MQTT_ERR_SUCCESS:
                return True
    except (OSError, ssl.SSLError):
        return True
    finally:
        c.disconnect()
    return "rc" not in state or bool(state["rc"].is_failure)


def renew_over(site: Site, b: CardBoard, port: int, *, websockets: bool) -> Any:
    """Send one renewal request with the board's certificate; central's reply (or None)."""
    import secrets

    from sensor.edges.enrol import renewal_csr
    from wire.enrolment import decode_reply, encode_renew_request, renew_topic, renewed_topic

    key, csr = renewal_csr(b.tls_key, b.sensor_id)
    nonce = secrets.token_bytes(16)
    c = new_client(b.sensor_id, websockets=websockets,
                   tls=(site.pki.files.ca_crt, b.cert, b.tls_key))
    if websockets:
        c.ws_set_options(path="/mqtt")
    got: list[Any] = []
    c.on_message = lambda cl, u, m: got.append(decode_reply(bytes(m.payload)))
    c.on_connect = lambda cl, u, f, rc, p: (
        cl.subscribe(renewed_topic(b.sensor_id), qos=1),
        cl.publish(renew_topic(b.sensor_id), encode_renew_request(
            b.sensor_id, nonce, csr, b.cert.read_bytes(), key), qos=1))
    c.connect("127.0.0.1", port)
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        c.loop(0.1)
    c.disconnect()
    return got[0] if got else None


# ---------------------------------------------------------------- renewal
def test_a_certificate_near_expiry_is_renewed_without_a_gap(make_site: Any) -> None:
    site = make_site(cert_lifetime="25s")
    b = enrolled_board(site, "r", "tyo-30")
    old_cert = b.root / "old.crt"
    shutil.copy(b.cert, old_cert)
    old = x509.load_pem_x509_certificate(old_cert.read_bytes())
    spool = Spool(b.spool)
    up = Uplink(config(b, renew_before_s=18.0), spool)
    seq = (0x30 << 32)
    try:
        # one envelope a second for 40 s: through the renewal (~7 s in), the old
        # certificate's expiry (25 s) and a broker restart after it (30 s)
        restarted = False
        for i in range(40):
            write(b, spool, seq + i, HOUR0 + 3600 * i)
            time.sleep(1.0)
            if i == 30:
                assert old.not_valid_after_utc.timestamp() < time.time()
                site.broker.restart()  # every connection drops: the new certificate must do
                site.broker.pid_file.write_text(f"{site.broker.proc.pid}\n")  # type: ignore[union-attr]
                restarted = True
        assert restarted
        wait_for(lambda: not spool.entries(), 30, "the spool to drain")
    finally:
        up.close()
    new = x509.load_pem_x509_certificate(b.cert.read_bytes())
    assert new.serial_number != old.serial_number
    assert new.public_key() == old.public_key()  # the key was kept
    renewals = site.store.renewals("tyo-30")
    assert renewals and renewals[0]["refused"] is None
    with site.central.store() as st:
        rows = st.summaries("tyo-30")
    assert len(rows) == 40  # every envelope arrived
    rx = sorted(r.received_us for r in rows)
    gaps = [(b_ - a) / 1e6 for a, b_ in itertools.pairwise(rx)]
    # no gap from the renewal; the one from the broker restart is a few seconds at most
    assert max(gaps) < 8.0, gaps
    # and the broker refuses the expired certificate
    assert tls_refused(site, old_cert, b.tls_key, site.broker.tls_port, "tyo-30")
    assert not tls_refused(site, b.cert, b.tls_key, site.broker.tls_port, "tyo-30")


def test_renewal_can_rotate_the_key(make_site: Any) -> None:
    site = make_site(cert_lifetime="20s")
    b = enrolled_board(site, "k", "tyo-32")
    old_key = b.tls_key.read_bytes()
    old = x509.load_pem_x509_certificate(b.cert.read_bytes())
    spool = Spool(b.spool)
    up = Uplink(config(b, renew_before_s=16.0, renew_rotate_key=True), spool)
    try:
        for i in range(8):
            write(b, spool, (0x32 << 32) | i, HOUR0 + 3600 * i)
            time.sleep(1.0)
        wait_for(lambda: b.tls_key.read_bytes() != old_key, 20, "the rotated key")
        site.broker.restart()  # the next connection uses the new key and certificate
        site.broker.pid_file.write_text(f"{site.broker.proc.pid}\n")  # type: ignore[union-attr]
        for i in range(8, 12):
            write(b, spool, (0x32 << 32) | i, HOUR0 + 3600 * i)
        wait_for(lambda: not spool.entries(), 30, "the spool to drain")
    finally:
        up.close()
    new = x509.load_pem_x509_certificate(b.cert.read_bytes())
    assert new.public_key() != old.public_key()
    # the installed pair matches (a further renewal may be in flight: with a 20 s lifetime
    # the new certificate is soon within its margin again, and <key>.next is its key)
    from sensor.edges.certs import load_tls_key

    assert load_tls_key(b.tls_key).public_key() == new.public_key()
    assert not (b.etc / "sensor.crt.next").exists()
    assert site.central.count() == 12
    assert not tls_refused(site, b.cert, b.tls_key, site.broker.tls_port, "tyo-32")


def test_an_expired_certificate_is_refused_and_the_board_needs_a_new_token(
        make_site: Any) -> None:
    site = make_site(cert_lifetime="3s")
    b = enrolled_board(site, "x", "tyo-31")
    time.sleep(4)
    assert tls_refused(site, b.cert, b.tls_key, site.broker.tls_port, "tyo-31")
    rc, out = b.enrol()  # the token was used: the board asks for a new one
    assert rc == 1 and out["reason"] == "no_token", out
    tok = site.enroll("tyo-31", "--replace")  # field staff put a new token on the card
    b.put("teiten.toml", site.card_toml(b.root, "tyo-31") + "\n" + tok["teiten_toml"])
    rc, out = b.enrol()
    assert rc == 0 and out["action"] == "enrolled", out


# ---------------------------------------------------------------- replacement
def test_replacement_continues_the_history_and_refuses_the_old_board(site: Site) -> None:
    old = enrolled_board(site, "old", "tyo-10")
    spool = Spool(old.spool)
    up = Uplink(config(old), spool)
    try:
        for i in range(3):
            write(old, spool, (0x10 << 32) | i, HOUR0 + 3600 * i)
        wait_for(lambda: not spool.entries(), 30, "the old board's summaries")
    finally:
        up.close()
    new = enrolled_board(site, "new", "tyo-10", "--replace")
    site.broker.restart()  # the CRL with the old board's certificate (docs/central.md)
    site.broker.pid_file.write_text(f"{site.broker.proc.pid}\n")  # type: ignore[union-attr]
    # the old board: refused at the TLS handshake, and its envelopes by the receiver
    assert tls_refused(site, old.cert, old.tls_key, site.broker.tls_port, "tyo-10")
    write(old, spool, (0x10 << 32) | 3, HOUR0 + 3 * 3600)
    up = Uplink(config(old), spool)  # refused on 8883, it falls back to WebSockets-TLS
    wait_for(lambda: not spool.entries(), 30, "the old board's envelope to be refused")
    up.close()
    # nor can it renew its way back in over WebSockets-TLS (which may ignore the CRL)
    # (refused at the handshake, or by central, which checks the CA's record itself)
    reply = renew_over(site, old, site.broker.ws_port, websockets=True)
    assert reply is None or (reply.status == "refused" and reply.reason == "revoked"), reply
    from sensor.edges.enrol import renewal_csr
    from wire.enrolment import encode_renew_request

    key, csr = renewal_csr(old.tls_key, "tyo-10")
    direct = site.service.enrolment.renew("tyo-10", encode_renew_request(
        "tyo-10", bytes(16), csr, old.cert.read_bytes(), key))
    assert direct.reason == "revoked", direct
    # the new board: a new epoch under the new key, counter from 0
    nspool = Spool(new.spool)
    up = Uplink(config(new), nspool)
    try:
        for i in range(3):
            write(new, nspool, (0x99 << 32) | i, HOUR0 + 3600 * (3 + i))
        wait_for(lambda: not nspool.entries(), 30, "the new board's summaries")
    finally:
        up.close()
    with site.central.store() as st:
        rows = st.summaries("tyo-10")
        gaps = st.gaps("tyo-10")
        rejected = [r for r in st.rejected() if r["sensor_id"] == "tyo-10"]
    assert [r.sequence >> 32 for r in rows] == [0x10] * 3 + [0x99] * 3  # history kept
    assert [r.hour_start for r in rows] == [HOUR0 + 3600 * i for i in range(6)]
    assert gaps == []
    assert [r["reason"] for r in rejected] == ["bad_signature"]  # the old board's, refused
    _, out = site.teiten("central", "sensors", "--config", str(site.central.conf), "--json")
    doc = json.loads(out)
    row = next(s for s in doc["sensors"] if s["sensor"] == "tyo-10")
    assert row["summaries"] == 6 and row["missing_sequences"] == 0 and not row["revoked"]
    assert "tyo-10" not in doc["clone_alarms"]


def test_replacing_a_stolen_board_after_revoke_acl(site: Site) -> None:
    """revoke --acl denies the name; the replacement's enrolment rewrites the ACL."""
    stolen = enrolled_board(site, "stolen", "tyo-11")
    rc, _ = site.teiten("central", "revoke", "tyo-11", "--dir", str(site.pki.files.dir),
                        "--reason", "key-compromise", "--acl", str(site.broker.dir / "acl"),
                        "--config", str(site.central.conf), "--json")
    assert rc == 0 and "user tyo-11" in (site.broker.dir / "acl").read_text()
    site.broker.restart()
    site.broker.pid_file.write_text(f"{site.broker.proc.pid}\n")  # type: ignore[union-attr]
    wait_for(site.service.connected.is_set, 40, "the enrolment service to reconnect")
    assert tls_refused(site, stolen.cert, stolen.tls_key, site.broker.tls_port, "tyo-11")
    new = enrolled_board(site, "spare", "tyo-11", "--replace")
    assert "user tyo-11" not in (site.broker.dir / "acl").read_text()
    time.sleep(0.5)  # the reload
    spool = Spool(new.spool)
    up = Uplink(config(new), spool)
    try:
        write(new, spool, (0x77 << 32) | 0, HOUR0)
        wait_for(lambda: not spool.entries(), 30, "the new board's summary")
    finally:
        up.close()
    assert site.central.count() == 1


# ---------------------------------------------------------------- cloned cards
def test_a_cloned_card_is_detected_and_reported(site: Site, tmp_path: Path) -> None:
    a = enrolled_board(site, "orig", "tyo-20")
    # the copy: the same card and keys, its own spool, started later
    copy_spool = tmp_path / "copy-spool"
    sa, sb = Spool(a.spool), Spool(copy_spool)
    ua = Uplink(config(a), sa, boot_time_us=1_000_000)
    time.sleep(1)
    ub = Uplink(config(a, spool=copy_spool), sb, boot_time_us=2_000_000)
    try:
        for i in range(3):  # both copies send the same hours under their own epochs
            write(a, sa, (0xAAAA << 32) | i, HOUR0 + 3600 * i)
            write(a, sb, (0xBBBB << 32) | i, HOUR0 + 3600 * i)
        wait_for(lambda: not sa.entries() and not sb.entries(), 60, "both copies to send")
        # the enrolment service's own scan (every 2 s here, 5 min by default) records it
        wait_for(lambda: {al.kind for al in _alarms(site) if al.sensor_id == "tyo-20"}
                 >= {"overlapping_epochs", "two_live_connections"}, 30, "the clone alarms")
    finally:
        ua.close()
        ub.close()
    # never merged: both copies' summaries are stored as they came
    with site.central.store() as st:
        assert len(st.summaries("tyo-20")) == 6
    rc, out = site.teiten("central", "sensors", "--config", str(site.central.conf), "--json")
    assert rc == 1
    kinds = {al["kind"] for al in json.loads(out)["clone_alarms"]["tyo-20"]}
    assert {"overlapping_epochs", "two_live_connections"} <= kinds
    rc, text = site.teiten("central", "sensors", "--config", str(site.central.conf))
    assert "CLONE? tyo-20" in text
    out_dir = tmp_path / "report"
    rc, _ = site.teiten("central", "report", "--config", str(site.central.conf), "--quarter",
                        "2027Q1", "--out", str(out_dir))
    assert rc == 0
    assert "tyo-20: SUSPECTED CLONED CARD" in (out_dir / "report.md").read_text()


def _alarms(site: Site) -> list[Any]:
    import sqlite3

    db = sqlite3.connect(site.cfg.database)
    try:
        return recorded(db)
    finally:
        db.close()


def test_restarts_and_replacements_are_not_clones() -> None:
    """Pure: a restart shares one (partial) hour; a new key is another era."""
    h = HOUR0
    restart = [((1 << 32) | 0, h, 1), ((1 << 32) | 1, h + 3600, 2),
               ((2 << 32) | 0, h + 3600, 3), ((2 << 32) | 1, h + 7200, 4)]
    assert detect("s", restart, [], []) == []
    eras = [("ed25519:old", 0, 10), ("ed25519:new", 10, None)]
    replaced = [((1 << 32) | i, h + 3600 * i, i) for i in range(5)] + \
               [((9 << 32) | i, h + 3600 * i, 10 + i) for i in range(5)]
    assert detect("s", replaced, [], [], eras) == []
    assert {a.kind for a in detect("s", replaced, [], [])} == {"overlapping_epochs"}
    st = [(1, json.dumps({"state": "online", "boot_time_us": t}).encode()) for t in (5, 6, 5)]
    assert [a.kind for a in detect("s", [], [], st)] == ["two_live_connections"]
    reboot = [(1, json.dumps({"state": "online", "boot_time_us": t}).encode())
              for t in (5, 5, 6, 6)]
    assert detect("s", [], [], reboot) == []
    assert [a.kind for a in detect("s", [], [(7, 1)], [])] == ["sequence_reuse"]

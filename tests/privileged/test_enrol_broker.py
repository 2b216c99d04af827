"""The broker side of enrolment: reloads (SIGHUP) that the enrolment service sends.

The enrolment service reloads Mosquitto after every change of the tokens' password file.
docs/central.md warns that Mosquitto 2.0.11 once segfaulted on a refused WebSockets-TLS
client after a SIGHUP with a CRL loaded; with this configuration (per_listener_settings
true, the enrolment listener) repeated reloads after a revocation keep the broker up, the
revoked board refused on 8883 and a good one served on both listeners.  (On WebSockets-TLS
the CRL is honoured only sometimes after a reload, eclipse-mosquitto/mosquitto#3042: there
the ACL and the receiver's keyring are what refuse a revoked board.)
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mqtt_fixtures import Pki
from test_revocation import handshake, publish

from central.ca import init_ca, revoke

pytestmark = pytest.mark.privileged
pytest_plugins = ("mqtt_fixtures",)


def test_reloads_after_a_revocation_keep_the_broker_up(tmp_path: Path) -> None:
    from enrol_fixtures import EnrolBroker

    files = init_ca(tmp_path / "ca", hosts=["localhost", "127.0.0.1"])
    (tmp_path / "boards").mkdir()
    pki = Pki(files, tmp_path / "boards")
    b = EnrolBroker(tmp_path / "broker", pki)
    b.start()
    try:
        for s in ("s-gone", "s-stay"):
            assert handshake(pki, s, b.tls_port) == "ok"
        revoke(files.dir, "s-gone")
        b.restart()
        for _ in range(5):
            b.reload()
            time.sleep(0.3)
            assert "REVOKED" in handshake(pki, "s-gone", b.tls_port)
            publish(pki, "s-gone", b.ws_port, "websockets")  # must not crash the broker
            assert publish(pki, "s-stay", b.ws_port, "websockets") == "No matching subscribers"
            assert publish(pki, "s-stay", b.tls_port) == "No matching subscribers"
            assert b.proc is not None and b.proc.poll() is None, b.log_text()[-2000:]
    finally:
        b.stop()

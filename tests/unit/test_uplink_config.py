"""[uplink] validation: typed, immutable, precise errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensor.edges.uplink_config import UplinkConfigError, load_uplink, parse_uplink

TLS = {"host": "broker.example.org", "ca": "ca.crt", "cert": "s.crt", "key": "s.key"}


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    c = parse_uplink(TLS, sensor_id="tokyo-01", spool="spool", base_dir=tmp_path)
    assert (c.port, c.ws_port, c.ws_path, c.insecure) == (8883, 443, "/mqtt", False)
    assert c.ca == tmp_path / "ca.crt" and c.spool == tmp_path / "spool"
    with pytest.raises(UplinkConfigError, match="copy the central CA certificate"):
        c.check_files()


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"host": "b"}, "mutual TLS needs ca, cert, key"),
        ({**TLS, "insecure": True}, "insecure = true with ca/cert/key"),
        ({**TLS, "port": 70000}, "port = 70000"),
        ({**TLS, "port": True}, "expected a number"),
        ({**TLS, "max_in_flight": 0}, "max_in_flight = 0"),
        ({**TLS, "backoff_min_s": 10, "backoff_max_s": 1}, "below backoff_min_s"),
        ({**TLS, "ack_timeout_s": 0}, "greater than 0"),
        ({**TLS, "ws_path": "mqtt"}, "must start with '/'"),
        ({**TLS, "colour": "red"}, "unknown key"),
        ({"ca": "a", "cert": "b", "key": "c"}, "host missing"),
    ],
)
def test_precise_errors(table: dict[str, object], match: str) -> None:
    with pytest.raises(UplinkConfigError, match=match):
        parse_uplink(table, sensor_id="tokyo-01", spool="/s")


def test_insecure_plain_tcp_and_ws_disabled() -> None:
    c = parse_uplink(
        {"host": "127.0.0.1", "insecure": True, "ws_port": 0}, sensor_id="a", spool="/s"
    )
    assert c.insecure and c.ws_port is None


def test_load_from_sensor_toml(tmp_path: Path) -> None:
    p = tmp_path / "sensor.toml"
    p.write_text(
        '[sensor]\nid = "osaka-2"\n[spool]\npath = "/var/spool/teiten"\n'
        '[uplink]\nhost = "127.0.0.1"\ninsecure = true\n'
    )
    c = load_uplink(p)
    assert c.sensor_id == "osaka-2" and c.spool == Path("/var/spool/teiten")
    p.write_text('[sensor]\nid = "Bad_Id"\n[uplink]\nhost = "h"\ninsecure = true\nspool = "s"\n')
    with pytest.raises(UplinkConfigError, match="invalid sensor id"):
        load_uplink(p)
    with pytest.raises(UplinkConfigError, match="no such config"):
        load_uplink(tmp_path / "missing.toml")

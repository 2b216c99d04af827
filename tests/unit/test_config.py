"""sensor.config: a good config parses; each bad one is refused naming its field."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from sensor.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]

GOOD = """
[sensor]
id = "tyo-01"
topology = "routed"
key = "/var/lib/teiten/sensor.key"

[capture]
interface = "eth0"
darknet = ["198.51.100.0/24", "2001:db8:dead::/48"]
exclude = ["198.51.100.0/28"]
snaplen = 256
buffer_bytes = 8388608
extra_bpf = "not udp port 5353"

[spool]
path = "/var/lib/teiten/spool"
max_bytes = 268435456

[limits]
max_sources = 262144

[uplink]
host = "central.example.org"
ca = "/etc/teiten/ca.crt"
cert = "/etc/teiten/sensor.crt"
key = "/etc/teiten/tls.key"
"""


def parse(text: str):  # type: ignore[no-untyped-def]
    return parse_config(tomllib.loads(text))


def test_good_config_parses_into_frozen_records() -> None:
    cfg = parse(GOOD)
    assert cfg.sensor_id == "tyo-01" and cfg.topology == "routed"
    assert cfg.capture.darknet == ("198.51.100.0/24", "2001:db8:dead::/48")
    assert cfg.capture.exclude == ("198.51.100.0/28",)
    assert cfg.bucket_seconds == 3600  # production always uses the hour
    assert cfg.uplink is not None and cfg.uplink.sensor_id == "tyo-01"
    assert cfg.uplink.spool == cfg.spool.path
    assert "not ip dst net 198.51.100.0/28" in cfg.bpf()
    assert not cfg.responder.enabled
    with pytest.raises(AttributeError):
        cfg.topology = "onlink"  # type: ignore[misc]


def test_board_example_config_is_valid() -> None:
    cfg = load_config(REPO / "board/rpi/sensor.toml")
    assert cfg.bucket_seconds == 3600


def test_onlink_turns_the_responder_on_by_default() -> None:
    cfg = parse(GOOD.replace('topology = "routed"', 'topology = "onlink"'))
    assert cfg.responder.enabled


def _replace(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


BAD = [
    ("wrong CIDR", _replace('"198.51.100.0/24", ', '"198.51.100.0/33", '),
     "capture.darknet[0]", "not a CIDR"),
    ("host bits", _replace('"198.51.100.0/24", ', '"198.51.100.7/24", '),
     "capture.darknet[0]", "host bits"),
    ("overlapping blocks",
     _replace('"198.51.100.0/24", ', '"198.51.100.0/24", "198.51.100.128/25", '),
     "capture.darknet", "overlap"),
    ("exclude outside", _replace('exclude = ["198.51.100.0/28"]', 'exclude = ["192.0.2.0/28"]'),
     "capture.exclude", "not inside"),
    ("missing key", _replace('key = "/var/lib/teiten/sensor.key"\n', ""),
     "sensor.key", "missing"),
    ("missing darknet", _replace('darknet = ["198.51.100.0/24", "2001:db8:dead::/48"]\n', ""),
     "capture.darknet", "missing"),
    ("missing id", _replace('id = "tyo-01"\n', ""), "sensor.id", "missing"),
    ("bad id", _replace('id = "tyo-01"', 'id = "Tokyo 01"'), "sensor.id", ""),
    ("unknown field", _replace("snaplen = 256", "snaplen = 256\nsnaplenght = 96"),
     "capture.snaplenght", "unknown field"),
    ("unknown table", GOOD + "\n[captrue]\ninterface = 'eth1'\n", "captrue", "unknown"),
    ("negative limit", _replace("max_sources = 262144", "max_sources = -5"),
     "limits.max_sources", "below"),
    ("too many sources", _replace("max_sources = 262144", "max_sources = 4294967296"),
     "limits.max_sources", "exceed"),
    ("negative spool", _replace("max_bytes = 268435456", "max_bytes = -1"),
     "spool.max_bytes", "below"),
    ("negative buffer", _replace("buffer_bytes = 8388608", "buffer_bytes = -8"),
     "capture.buffer_bytes", "below"),
    ("unknown topology", _replace('topology = "routed"', 'topology = "bridged"'),
     "sensor.topology", "unknown topology"),
    ("wrong type", _replace("snaplen = 256", 'snaplen = "256"'), "capture.snaplen", "expected"),
    ("bool for int", _replace("snaplen = 256", "snaplen = true"), "capture.snaplen", "expected"),
    ("bad interface", _replace('interface = "eth0"', 'interface = "eth0; rm -rf /"'),
     "capture.interface", "not an interface"),
    ("responder off-topology", GOOD + "\n[responder]\nenabled = true\n",
     "responder.enabled", "onlink"),
    ("bucket not dividing an hour", GOOD + "\n[test]\nbucket_seconds = 7\n",
     "test.bucket_seconds", "divide an hour"),
    ("uplink unknown key", _replace('host = "central.example.org"',
                                    'host = "central.example.org"\nprot = 8883'),
     "uplink", "unknown key"),
    ("uplink missing host", _replace('host = "central.example.org"\n', ""), "uplink", "host"),
]


@pytest.mark.parametrize(("name", "text", "field", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_config_names_the_field(name: str, text: str, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    fields = {f.field: f.reason for f in info.value.findings}
    assert field in fields, f"{name}: findings were {fields}"
    assert words.lower() in fields[field].lower()
    assert field in str(info.value)


def test_every_problem_is_reported_at_once() -> None:
    text = _replace('topology = "routed"', 'topology = "ring"').replace(
        "max_sources = 262144", "max_sources = -1")
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert {"sensor.topology", "limits.max_sources"} <= {f.field for f in info.value.findings}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sensor.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("name", "text", "field", "words"), BAD[:6] + BAD[8:11] + BAD[14:15],
                         ids=[b[0] for b in BAD[:6] + BAD[8:11] + BAD[14:15]])
def test_config_check_command_rejects(tmp_path: Path, name: str, text: str, field: str,
                                      words: str) -> None:
    p = tmp_path / "sensor.toml"
    p.write_text(text)
    r = _cli("config", "check", str(p), "--no-files")
    assert r.returncode == 2, r.stdout + r.stderr
    assert field in r.stderr and words.lower() in r.stderr.lower()


def test_config_check_finds_missing_files(tmp_path: Path) -> None:
    p = tmp_path / "sensor.toml"
    p.write_text(GOOD.replace("/var/lib/teiten/sensor.key", str(tmp_path / "nokey")))
    r = _cli("config", "check", str(p), "--json")
    assert r.returncode == 2
    import json

    doc = json.loads(r.stdout)
    assert not doc["ok"]
    assert any(f["field"] == "sensor.key" and "teiten keygen" in f["reason"]
               for f in doc["findings"])
    ok = _cli("config", "check", str(p), "--no-files")
    assert ok.returncode == 0 and "OK" in ok.stdout


def test_run_refuses_an_invalid_config(tmp_path: Path) -> None:
    p = tmp_path / "sensor.toml"
    p.write_text(_replace('topology = "routed"', 'topology = "bridged"'))
    r = _cli("run", "--config", str(p))
    assert r.returncode == 2 and "sensor.topology" in r.stderr

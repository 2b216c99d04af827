"""Sensor ids, key files, fingerprints and the sensors.toml keyring."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from central.keyring import load_keyring
from sensor.cli import main
from sensor.edges.keys import KeyFileError, generate_key, load_private_key
from wire.envelope import RevokedSensor, UnknownSensor
from wire.ids import validate_sensor_id
from wire.keys import KeyringError, fingerprint, parse_public_key, public_key_text


@pytest.mark.parametrize("good", ["a", "0", "tokyo-01", "a" * 63, "9-", "x-y-z"])
def test_valid_sensor_ids(good: str) -> None:
    assert validate_sensor_id(good) == good


@pytest.mark.parametrize(
    "bad", ["", "-a", "A", "tokyo_01", "a" * 64, "tökyo", "a b", "a\n", "a.b"]
)
def test_invalid_sensor_ids_say_what_is_allowed(bad: str) -> None:
    with pytest.raises(ValueError, match="a-z, 0-9 and '-'"):
        validate_sensor_id(bad)


def test_generate_key_is_0600_and_loads(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        key = generate_key(tmp_path / "k.pem")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    loaded = load_private_key(tmp_path / "k.pem")
    assert public_key_text(loaded.public_key()) == public_key_text(key.public_key())


def test_generate_key_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_text("precious")
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_key(path)
    assert path.read_text() == "precious"


def test_load_refuses_group_readable_key(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    generate_key(path)
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_private_key(path)


def test_load_missing_key_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="teiten keygen"):
        load_private_key(tmp_path / "nope.pem")


def test_public_key_text_round_trips_and_fingerprint_is_short(tmp_path: Path) -> None:
    pub = generate_key(tmp_path / "k.pem").public_key()
    text = public_key_text(pub)
    assert text.startswith("ed25519:") and len(text) == 8 + 44
    assert public_key_text(parse_public_key(text)) == text
    fp = fingerprint(pub)
    assert len(fp) == 19 and fp.count("-") == 3
    assert fp == fingerprint(parse_public_key(text))


@pytest.mark.parametrize(
    "text", ["", "ed25519:", "ssh-ed25519 AAAA", "ed25519:not*base64", "ed25519:AAAA"]
)
def test_bad_public_key_text(text: str) -> None:
    with pytest.raises(ValueError):
        parse_public_key(text)


def _toml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "sensors.toml"
    path.write_text(body)
    return path


def test_keyring_from_toml(tmp_path: Path) -> None:
    a = public_key_text(generate_key(tmp_path / "a.pem").public_key())
    b = public_key_text(generate_key(tmp_path / "b.pem").public_key())
    path = _toml(
        tmp_path,
        f'[sensors.tokyo-01]\npublic_key = "{a}"\n\n'
        f'[sensors.osaka-02]\npublic_key = "{b}"\nrevoked = true\nnote = "stolen 2026-10"\n\n'
        '[broker]\nhost = "example"\n',  # other sections belong to other parts of central
    )
    ring = load_keyring(path)
    assert ring.sensor_ids() == ["osaka-02", "tokyo-01"]
    assert public_key_text(ring.lookup("tokyo-01")) == a
    with pytest.raises(RevokedSensor):
        ring.lookup("osaka-02")
    with pytest.raises(UnknownSensor):
        ring.lookup("kyoto-03")


@pytest.mark.parametrize(
    "body,match",
    [
        ("[sensors.Bad_Id]\npublic_key = 'x'\n", "invalid sensor id"),
        ("[sensors.a]\n", "missing public_key"),
        ("[sensors.a]\npublic_key = 'rsa:xx'\n", "ed25519:"),
        ("[sensors.a]\npublic_key = 'ed25519:AAAA'\nrevokd = true\n", "unknown field"),
        ("[sensors.a]\npublic_key = 'ed25519:AAAA'\nrevoked = 'yes'\n", "revoked must be"),
        ("sensors = 3\n", "must be a table"),
        ("[sensors\n", "not valid TOML"),
    ],
)
def test_keyring_errors_name_the_problem(tmp_path: Path, body: str, match: str) -> None:
    if "AAAA" in body and "revok" in body:
        key = public_key_text(generate_key(tmp_path / "k.pem").public_key())
        body = body.replace("ed25519:AAAA", key)
    with pytest.raises(KeyringError, match=match):
        load_keyring(_toml(tmp_path, body))


def test_missing_keyring_file(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match=r"docs/central\.md"):
        load_keyring(tmp_path / "sensors.toml")


def test_cli_keygen_pubkey(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "k.pem"
    assert main(["keygen", "--key", str(key), "--sensor-id", "tokyo-01"]) == 0
    out = capsys.readouterr().out
    assert "[sensors.tokyo-01]" in out and "fingerprint:" in out
    assert main(["keygen", "--key", str(key)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["pubkey", "--key", str(key), "--json"]) == 0
    out = capsys.readouterr().out
    pub = load_private_key(key).public_key()
    assert public_key_text(pub) in out and fingerprint(pub) in out


def test_the_sensors_toml_example_in_the_docs_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "central.md").read_text()
    section = doc.split("## Sensor keyring", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    path = _toml(tmp_path, example)
    ring = load_keyring(path)
    assert ring.sensor_ids() == ["osaka-02", "tokyo-01"]
    with pytest.raises(RevokedSensor):
        ring.lookup("osaka-02")
    assert main(["keyring", "--keys", str(path)]) == 0
    out = capsys.readouterr().out
    assert fingerprint(ring.lookup("tokyo-01")) in out and "REVOKED" in out
    assert fingerprint(ring.lookup("tokyo-01")) in section  # the fingerprint quoted in the text

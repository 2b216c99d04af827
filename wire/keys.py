"""The public half of sensor keys, as both ends see it: key text, fingerprint, keyring.

Strategy: a signing key's public half travels as text, `ed25519:` followed by the standard
base64 of the 32 raw bytes, with a fingerprint short enough to read over the phone (80
bits of SHA-256 as RFC 4648 base32, in four groups of four).  `Keyring` maps sensor ids to
enrolled keys and is what envelope verification asks; it is built from a mapping and
validated in full, so a typo fails at start-up, not at the first envelope.  Reading
`sensors.toml` is the central site's job (`central.keyring.load_keyring`); the private
key files are the board's (`sensor.edges.keys`).
"""

from __future__ import annotations

import base64
import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from wire.envelope import RevokedSensor, UnknownSensor
from wire.ids import validate_sensor_id

PUBLIC_KEY_PREFIX: Final = "ed25519:"
_SENSOR_FIELDS: Final = frozenset({"public_key", "revoked", "note"})


class KeyringError(Exception):
    """sensors.toml is missing or invalid; the message names the file and entry."""


def public_key_text(pub: Ed25519PublicKey) -> str:
    """`ed25519:<base64 of the 32 raw bytes>`, the form sensors.toml uses."""
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def parse_public_key(text: str) -> Ed25519PublicKey:
    """Inverse of `public_key_text`; ValueError with a clear message on anything else."""
    if not isinstance(text, str) or not text.startswith(PUBLIC_KEY_PREFIX):
        raise ValueError(
            f"public key must look like 'ed25519:<base64>' (from `teiten pubkey`), got {text!r}"
        )
    try:
        raw = base64.b64decode(text[len(PUBLIC_KEY_PREFIX) :], validate=True)
    except ValueError:
        raise ValueError(f"public key {text!r} is not valid base64") from None
    if len(raw) != 32:
        raise ValueError(f"public key {text!r} is {len(raw)} bytes, an Ed25519 key is 32")
    return Ed25519PublicKey.from_public_bytes(raw)


def fingerprint(pub: Ed25519PublicKey) -> str:
    """80-bit SHA-256 fingerprint of the raw key, base32 in groups: `ABCD-EFGH-IJKL-MNOP`."""
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    b32 = base64.b32encode(hashlib.sha256(raw).digest()[:10]).decode("ascii")
    return "-".join(b32[i : i + 4] for i in range(0, 16, 4))


@dataclass(frozen=True, slots=True)
class SensorKey:
    """One enrolled sensor."""

    sensor_id: str
    public_key: Ed25519PublicKey
    revoked: bool = False
    note: str = ""


class Keyring:
    """Enrolled sensors by id; `lookup` is what envelope verification calls."""

    __slots__ = ("_sensors",)

    def __init__(self, sensors: Mapping[str, SensorKey]) -> None:
        self._sensors: dict[str, SensorKey] = dict(sensors)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], *, source: str = "keyring") -> Keyring:
        """Build from `{sensor_id: {"public_key": ..., "revoked": bool}}`.

        A value may also be a public key text or an Ed25519PublicKey (convenient in tests).
        """
        sensors: dict[str, SensorKey] = {}
        for sensor_id, entry in mapping.items():
            where = f"{source}: sensor {sensor_id!r}"
            try:
                validate_sensor_id(sensor_id)
            except ValueError as exc:
                raise KeyringError(f"{source}: {exc}") from None
            if isinstance(entry, Ed25519PublicKey):
                sensors[sensor_id] = SensorKey(sensor_id, entry)
                continue
            if isinstance(entry, str):
                entry = {"public_key": entry}
            if not isinstance(entry, Mapping):
                raise KeyringError(f"{where}: expected a table with public_key")
            unknown = set(entry) - _SENSOR_FIELDS
            if unknown:
                raise KeyringError(
                    f"{where}: unknown field(s) {sorted(unknown)}; "
                    f"allowed: {sorted(_SENSOR_FIELDS)}"
                )
            if "public_key" not in entry:
                raise KeyringError(f"{where}: missing public_key (from `teiten pubkey`)")
            try:
                pub = parse_public_key(entry["public_key"])
            except ValueError as exc:
                raise KeyringError(f"{where}: {exc}") from None
            revoked = entry.get("revoked", False)
            note = entry.get("note", "")
            if not isinstance(revoked, bool):
                raise KeyringError(f"{where}: revoked must be true or false")
            if not isinstance(note, str):
                raise KeyringError(f"{where}: note must be a string")
            sensors[sensor_id] = SensorKey(sensor_id, pub, revoked, note)
        return cls(sensors)

    def lookup(self, sensor_id: str) -> Ed25519PublicKey:
        """The enrolled key; raises UnknownSensor or RevokedSensor."""
        entry = self._sensors.get(sensor_id)
        if entry is None:
            raise UnknownSensor(
                f"sensor {sensor_id!r} is not enrolled; add it to sensors.toml "
                "with the key `teiten pubkey` prints on the board"
            )
        if entry.revoked:
            raise RevokedSensor(f"sensor {sensor_id!r} is revoked in sensors.toml")
        return entry.public_key

    def get(self, sensor_id: str) -> SensorKey | None:
        return self._sensors.get(sensor_id)

    def __contains__(self, sensor_id: object) -> bool:
        return sensor_id in self._sensors

    def __len__(self) -> int:
        return len(self._sensors)

    def sensor_ids(self) -> list[str]:
        return sorted(self._sensors)


def parse_keyring_toml(data: bytes, *, source: str) -> Keyring:
    """The keyring in a sensors.toml's bytes (shape in docs/central.md); `source` names it
    in errors.  Reading the file is the caller's: `central.keyring.load_keyring`."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise KeyringError(f"{source} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise KeyringError(f"{source} is not valid TOML: {exc}") from None
    sensors = doc.get("sensors", {})
    if not isinstance(sensors, dict):
        raise KeyringError(f"{source}: [sensors] must be a table of sensor tables")
    return Keyring.from_mapping(sensors, source=source)

"""Sensor identity and keys: Ed25519 signing keys on the board, the keyring at central.

Strategy: the private key is a PKCS#8 PEM file created with O_EXCL and mode 0600 and never
overwritten; losing it means enrolling a new key, never silently replacing one.  The public
key travels as text, `ed25519:` followed by the standard base64 of the 32 raw bytes, and a
fingerprint short enough to read over the phone (80 bits of SHA-256 as RFC 4648 base32,
in four groups of four).  The central keyring is `sensors.toml` (docs/central.md), validated
in full when loaded so that a typo fails at start-up, not at the first envelope.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from sensor.durable import fsync_dir, write_all
from sensor.ids import validate_sensor_id as validate_sensor_id
from uplink.envelope import RevokedSensor, UnknownSensor

PUBLIC_KEY_PREFIX: Final = "ed25519:"
_SENSOR_FIELDS: Final = frozenset({"public_key", "revoked", "note"})


class KeyFileError(Exception):
    """A key file that cannot be created or used; the message says what to do."""


class KeyringError(Exception):
    """sensors.toml is missing or invalid; the message names the file and entry."""


def generate_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Create a new signing key at `path` (mode 0600); refuse to overwrite any file."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private_file(
        Path(path), pem, "a signing key. Use another path, or remove it yourself if you "
        "really mean to re-enrol",
    )
    return key


def write_private_file(target: Path, pem: bytes, what: str) -> None:
    """Create a private key file: mode 0600, never over an existing file, fsynced."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{target} already exists; refusing to overwrite {what}") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {target}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is filtered by umask; be explicit
        write_all(fd, pem)
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        target.unlink(missing_ok=True)
        raise KeyFileError(f"cannot write {target}: {exc.strerror}") from None
    os.close(fd)
    fsync_dir(target.parent)


def read_private_file(target: Path, missing: str) -> bytes:
    """Read a private key file; refuse one that group or others can read."""
    try:
        st = target.stat()
        data = target.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(missing) from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {target}: {exc.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise KeyFileError(
            f"{target} is readable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run `chmod 600 {target}`"
        )
    return data


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load a signing key made by `generate_key`; refuse one readable by group or others."""
    target = Path(path)
    data = read_private_file(
        target, f"no signing key at {target}; create one with `teiten keygen --key {target}`"
    )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{target} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{target} holds a {type(key).__name__}, not an Ed25519 key")
    return key


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

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Keyring:
        """Load sensors.toml (shape in docs/central.md)."""
        target = Path(path)
        try:
            with target.open("rb") as fh:
                doc = tomllib.load(fh)
        except FileNotFoundError:
            raise KeyringError(
                f"no keyring at {target}; create it as described in docs/central.md"
            ) from None
        except OSError as exc:
            raise KeyringError(f"cannot read {target}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise KeyringError(f"{target} is not valid TOML: {exc}") from None
        sensors = doc.get("sensors", {})
        if not isinstance(sensors, dict):
            raise KeyringError(f"{target}: [sensors] must be a table of sensor tables")
        return cls.from_mapping(sensors, source=str(target))

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

"""The board's private key files: the Ed25519 signing key (and the TLS key, `certs`).

Strategy: a private key is a PKCS#8 PEM file created with O_EXCL and mode 0600 and never
overwritten; losing it means enrolling a new key, never silently replacing one.  Nothing
here is needed at the central site, which sees only the public half (`wire.keys`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sensor.edges.durable import fsync_dir, write_all


class KeyFileError(Exception):
    """A key file that cannot be created or used; the message says what to do."""


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



"""The board's side of enrolment and renewal, without MQTT (docs/enrolment.md).

Strategy: what the board decides and the files it touches; the MQTT exchange itself is
`uplink.enrol` (only the publisher's edge speaks MQTT).
- `parse_enrol_table` checks `[enrol]` of teiten.toml (token, CA fingerprint, port, host):
  pure, findings like every other table.
- `fetch_pinned_ca` opens a TLS connection to the enrolment listener *without sending
  anything*, takes the certificate chain the broker presents (server, then CA) and keeps
  the CA only if its SHA-256 is the fingerprint field staff copied into teiten.toml and it
  signed the server's certificate.  Only then does the board send its token, over a
  second connection that verifies the broker against that CA: a rogue broker never sees
  the token.
- `check_certificate` / `install_certificate` accept a certificate only for this board's
  TLS key and sensor id, issued by the pinned CA, and replace the file atomically, so the
  uplink's next connection uses it and the current one carries on (renewal without a gap).
- What to do at a boot, and the card's text, are decided in `sensor.core.enrol` (pure).
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sensor.core.enrol import ENROL_TABLE, remove_token, result_text
from sensor.edges.config import Finding
from sensor.edges.durable import write_durably
from wire.enrolment import EnrolFormatError, parse_fingerprint, parse_token

__all__ = ["ENROL_TABLE", "remove_token", "result_text"]  # the card's text: sensor.core.enrol
CARD_RESULT: Final = "teiten-enrolment.txt"
DEFAULT_ENROL_PORT: Final = 8884
_FIELDS: Final = frozenset({"token", "ca_fingerprint", "port", "host"})


class EnrolmentError(Exception):
    """Enrolment cannot go on; `reason` is a stable key, the message says what to do."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class EnrolSettings:
    token_id: str
    secret: str
    ca_sha256: bytes
    port: int = DEFAULT_ENROL_PORT
    host: str | None = None  # default: [uplink] host


def parse_enrol_table(table: Any) -> tuple[EnrolSettings | None, list[Finding]]:
    """`[enrol]` of teiten.toml; (None, []) without a token (already enrolled)."""
    if table is None:
        return None, []
    if not isinstance(table, Mapping):
        return None, [Finding("enrol", "expected a table [enrol]")]
    found = [Finding(f"enrol.{k}", "unknown field; known fields of [enrol]: "
                     + ", ".join(sorted(_FIELDS))) for k in sorted(set(table) - _FIELDS)]
    token = table.get("token")
    fp = table.get("ca_fingerprint")
    port = table.get("port", DEFAULT_ENROL_PORT)
    host = table.get("host")
    if token is None:
        return None, found
    tid = secret = ""
    try:
        tid, secret = parse_token(token)
    except EnrolFormatError as exc:
        found.append(Finding("enrol.token", str(exc)))
    digest = b""
    try:
        digest = parse_fingerprint(fp if isinstance(fp, str) else "")
    except EnrolFormatError as exc:
        found.append(Finding("enrol.ca_fingerprint", str(exc)))
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        found.append(Finding("enrol.port", f"{port!r}: the enrolment listener's TCP port"))
    if host is not None and not isinstance(host, str):
        found.append(Finding("enrol.host", "expected the broker's name or address"))
    if found:
        return None, found
    return EnrolSettings(tid, secret, digest, int(port), host), []


# ---------------------------------------------------------------- the pinned CA
def fetch_pinned_ca(host: str, port: int, ca_sha256: bytes, *, timeout: float = 10.0) -> bytes:
    """The broker's CA certificate (PEM), accepted only by its pinned fingerprint."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # nothing is sent on this connection
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as tls:
            sslobj: Any = tls._sslobj  # type: ignore[attr-defined]
            chain = [c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
                     for c in sslobj.get_unverified_chain()]
    except (OSError, ssl.SSLError) as exc:
        raise EnrolmentError("unreachable", f"cannot reach the enrolment listener "
                             f"{host}:{port}: {exc}; check [uplink] host, [enrol] port and "
                             "the management network") from None
    import hashlib

    for der in chain:
        if hashlib.sha256(der).digest() != ca_sha256:
            continue
        ca = x509.load_der_x509_certificate(der)
        leaf = x509.load_der_x509_certificate(chain[0])
        try:
            bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
            leaf.verify_directly_issued_by(ca)
        except (x509.ExtensionNotFound, ValueError, TypeError, InvalidSignature):
            break
        if not bc.ca:
            break
        return ca.public_bytes(serialization.Encoding.PEM)
    raise EnrolmentError("rogue_broker", f"the broker at {host}:{port} does not present the "
                         "CA whose fingerprint is in teiten.toml: wrong host, a mistyped "
                         "fingerprint, or not our broker. Nothing was sent to it")


# ---------------------------------------------------------------- certificates
def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def check_certificate(pem: bytes, ca_pem: bytes, tls_key: ec.EllipticCurvePrivateKey,
                      sensor_id: str) -> x509.Certificate:
    """The certificate, if it is for this key and sensor id and signed by this CA."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise EnrolmentError("bad_certificate", f"central sent a certificate that does not "
                             f"verify with the pinned CA: {exc}") from None
    pub = cert.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey) or \
            _spki(pub) != _spki(tls_key.public_key()):
        raise EnrolmentError("bad_certificate", "central sent a certificate for another key")
    cns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [sensor_id]:
        raise EnrolmentError("bad_certificate", f"the certificate is for {cns}, not {sensor_id}")
    return cert


def install_certificate(path: Path, pem: bytes) -> None:
    """Replace the certificate file atomically (write, fsync, rename, fsync directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, pem, mode=0o644)


def cert_validity(path: Path) -> tuple[float, float] | None:
    """(not_before, not_after) in Unix seconds of a PEM certificate; None if unreadable."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


def renewal_csr(key_path: Path, sensor_id: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A CSR for the board's existing TLS key (renewal keeps the key)."""
    from sensor.edges.certs import load_tls_key

    key = load_tls_key(key_path)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sensor_id)]))
           .sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.PEM)


# ---------------------------------------------------------------- key rotation
def _next(path: Path) -> Path:
    return path.with_name(path.name + ".next")


def rotation_csr(key_path: Path, sensor_id: str) -> bytes:
    """A CSR for a fresh TLS key, `<key>.next` (made once, 0600, kept until installed)."""
    from sensor.edges.certs import make_csr

    return make_csr(_next(key_path), sensor_id)


def next_tls_key(key_path: Path) -> ec.EllipticCurvePrivateKey:
    from sensor.edges.certs import load_tls_key

    return load_tls_key(_next(key_path))


def install_rotated(key_path: Path, cert_path: Path, pem: bytes) -> None:
    """The renewed certificate for `<key>.next`: cert to `<cert>.next`, then the key, then
    the certificate renamed into place; `finish_rotation` completes a crash in between."""
    write_durably(_next(cert_path), pem, mode=0o644)
    finish_rotation(key_path, cert_path)


def finish_rotation(key_path: Path, cert_path: Path) -> str | None:
    """Complete (or discard) a key rotation a crash interrupted; what was done, if any."""
    from sensor.edges.certs import load_tls_key
    from sensor.edges.durable import fsync_dir

    cnext, knext = _next(cert_path), _next(key_path)
    if not cnext.exists():
        return None
    try:
        pub = x509.load_pem_x509_certificate(cnext.read_bytes()).public_key()
    except (OSError, ValueError):
        cnext.unlink(missing_ok=True)
        return "discarded an unreadable renewed certificate"
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        cnext.unlink(missing_ok=True)
        return "discarded a renewed certificate for a non-EC key"
    if knext.exists() and _spki(load_tls_key(knext).public_key()) == _spki(pub):
        os.replace(knext, key_path)  # the new key, then its certificate
        fsync_dir(key_path.parent)
    if _spki(load_tls_key(key_path).public_key()) == _spki(pub):
        os.replace(cnext, cert_path)
        fsync_dir(cert_path.parent)
        return f"installed the rotated key and certificate in {key_path}, {cert_path}"
    cnext.unlink(missing_ok=True)
    return "discarded a renewed certificate for another key"


def key_file_ok(path: Path | None) -> bool:
    return path is not None and os.path.exists(path)

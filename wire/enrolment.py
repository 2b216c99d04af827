"""The enrolment and renewal contract between a board and the central site (sans-I/O).

Strategy: everything both ends must agree on, and nothing else: the one-time token's text,
the CA fingerprint's text, the topics, and the four messages (enrolment request and reply,
renewal request and reply), each a msgpack map with fixed keys, checked strictly on
decode.  The byte-level layout is in docs/enrolment.md; vectors are built by the unit tests
from these functions.

- A **token** is `<ID>.<SECRET>`: ID is 10 and SECRET 26 characters of RFC 4648 base32
  (A-Z, 2-7; 50 and 130 bits).  The ID is public (it is the MQTT username on the
  enrolment listener and names the topics); the SECRET is the MQTT password and is never
  stored at central, only its hashes.  Upper case keeps a token id from ever being a
  sensor id (lower case), so the client id the broker pins to it cannot displace a
  sensor's or the receiver's connection.
- The **CA fingerprint** is `sha256:` and the 64 hex digits of SHA-256 over the CA
  certificate's DER bytes (colons and case are ignored when parsing).
- The **proof** binds the request to the signing key it enrols: an Ed25519 signature by
  that key over `PROOF_CONTEXT || u8 len || token id || u8 len || sensor id || nonce(16)
  || SHA-256(CSR PEM)`.  A token holder therefore cannot enrol a key they do not hold, and
  a reply can be matched to its request by the nonce.
- A **renewal** carries the board's current certificate and an ECDSA (P-256, SHA-256)
  signature by its current TLS key over `RENEW_CONTEXT || u8 len || sensor id || nonce(16)
  || SHA-256(CSR PEM)`: central renews only for the holder of a certificate it issued and
  has not revoked, whatever listener the request came in on.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any, Final

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from wire.ids import is_valid_sensor_id
from wire.keys import parse_public_key, public_key_text

ENROL_VERSION: Final = 1
ENROL_PREFIX: Final = "teiten/v1/enrol"
TOKEN_ID_CHARS: Final = 10
TOKEN_SECRET_CHARS: Final = 26
_B32: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
NONCE_BYTES: Final = 16
MAX_CSR_BYTES: Final = 4096
MAX_CERT_BYTES: Final = 8192
MAX_MESSAGE_BYTES: Final = 32768
PROOF_CONTEXT: Final = b"teiten-enrol-v1\x00"
RENEW_CONTEXT: Final = b"teiten-renew-v1\x00"
MAX_PROOF_BYTES: Final = 80  # an ECDSA P-256 signature in DER is at most 72 bytes

# Why a request was refused: stable keys (docs/enrolment.md says what each means).
REASONS: Final = (
    "token_unknown",  # no such token (never issued, mistyped, or removed after use/expiry)
    "token_used",  # the token enrolled another key already
    "token_expired",  # past its expiry
    "wrong_sensor",  # the token was issued for another sensor id
    "bad_request",  # not a message of this contract
    "bad_csr",  # the certificate request does not verify or is not for this sensor
    "bad_proof",  # the proof does not verify with the signing key given
    "revoked",  # the sensor is revoked at central (renewal)
    "not_enrolled",  # renewal for a sensor central does not know
    "key_mismatch",  # renewal signed by a key that is not the enrolled one
    "internal_error",  # central failed; try again later
)
RETRYABLE: Final = frozenset({"internal_error"})


class EnrolFormatError(ValueError):
    """A token, fingerprint or message that is not of this contract."""


# ---------------------------------------------------------------- tokens and fingerprints
def _b32(n_bytes: int, chars: int, raw: bytes) -> str:
    if len(raw) < n_bytes:
        raise ValueError("not enough random bytes")
    return base64.b32encode(raw[:n_bytes]).decode("ascii")[:chars]


def make_token(random_bytes: bytes) -> str:
    """A token from 24 random bytes (the caller's `secrets.token_bytes(24)`)."""
    if len(random_bytes) != 24:
        raise ValueError("make_token needs exactly 24 random bytes")
    tid = _b32(7, TOKEN_ID_CHARS, random_bytes[:7])
    secret = _b32(17, TOKEN_SECRET_CHARS, random_bytes[7:])
    return f"{tid}.{secret}"


def parse_token(text: str) -> tuple[str, str]:
    """(token id, secret) of a token; EnrolFormatError saying what is wrong."""
    if not isinstance(text, str):
        raise EnrolFormatError("a token is text like ABCDEFGHJK.ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    t = text.strip().replace(" ", "").upper()
    tid, dot, secret = t.partition(".")
    if (
        not dot
        or len(tid) != TOKEN_ID_CHARS
        or len(secret) != TOKEN_SECRET_CHARS
        or not set(tid) <= _B32
        or not set(secret) <= _B32
    ):
        raise EnrolFormatError(
            f"token {text!r} is not of the form {'X' * TOKEN_ID_CHARS}.{'Y' * TOKEN_SECRET_CHARS} "
            "(letters A-Z and digits 2-7); copy it again from `teiten central enroll`"
        )
    return tid, secret


def is_token_id(value: str) -> bool:
    return isinstance(value, str) and len(value) == TOKEN_ID_CHARS and set(value) <= _B32


def secret_digest(secret: str) -> bytes:
    """What central keeps of a secret (besides the broker's PBKDF2 hash): its SHA-256."""
    return hashlib.sha256(secret.encode("ascii")).digest()


def ca_fingerprint(der: bytes) -> str:
    """`sha256:<64 hex>` of a CA certificate's DER bytes."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def parse_fingerprint(text: str) -> bytes:
    """The 32 digest bytes of a `sha256:...` fingerprint (colons, spaces and case ignored)."""
    if not isinstance(text, str):
        raise EnrolFormatError("ca_fingerprint must be text: sha256:<64 hex digits>")
    t = text.strip().lower()
    if t.startswith("sha256:"):
        t = t[7:]
    t = t.replace(":", "").replace(" ", "")
    try:
        raw = bytes.fromhex(t)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise EnrolFormatError(
            f"ca_fingerprint {text!r}: expected sha256: and 64 hex digits, as "
            "`teiten central enroll` prints it"
        )
    return raw


# ---------------------------------------------------------------- topics
def request_topic(token_id: str) -> str:
    return f"{ENROL_PREFIX}/{token_id}/request"


def reply_topic(token_id: str) -> str:
    return f"{ENROL_PREFIX}/{token_id}/reply"


def renew_topic(sensor_id: str) -> str:
    return f"teiten/v1/{sensor_id}/renew"


def renewed_topic(sensor_id: str) -> str:
    return f"teiten/v1/{sensor_id}/renewed"


def token_of_request_topic(topic: str) -> str | None:
    parts = topic.split("/")
    if len(parts) == 5 and "/".join(parts[:3]) == ENROL_PREFIX and parts[4] == "request":
        return parts[3] if is_token_id(parts[3]) else None
    return None


def sensor_of_renew_topic(topic: str) -> str | None:
    parts = topic.split("/")
    if len(parts) == 4 and parts[:2] == ["teiten", "v1"] and parts[3] == "renew":
        return parts[2] if is_valid_sensor_id(parts[2]) else None
    return None


# ---------------------------------------------------------------- messages
def proof_bytes(token_id: str, sensor_id: str, nonce: bytes, csr_pem: bytes) -> bytes:
    tid, sid = token_id.encode("ascii"), sensor_id.encode("ascii")
    return (
        PROOF_CONTEXT
        + bytes([len(tid)]) + tid
        + bytes([len(sid)]) + sid
        + nonce
        + hashlib.sha256(csr_pem).digest()
    )


@dataclass(frozen=True, slots=True)
class EnrolRequest:
    """A board asks for a certificate: sent on `request_topic(token_id)`."""

    sensor_id: str
    nonce: bytes
    csr: bytes  # PEM
    signing_key: Ed25519PublicKey
    proof: bytes  # Ed25519 over proof_bytes(...)

    def verify_proof(self, token_id: str) -> bool:
        try:
            self.signing_key.verify(
                self.proof, proof_bytes(token_id, self.sensor_id, self.nonce, self.csr)
            )
        except InvalidSignature:
            return False
        return True


def renew_proof_bytes(sensor_id: str, nonce: bytes, csr_pem: bytes) -> bytes:
    sid = sensor_id.encode("ascii")
    return RENEW_CONTEXT + bytes([len(sid)]) + sid + nonce + hashlib.sha256(csr_pem).digest()


@dataclass(frozen=True, slots=True)
class RenewRequest:
    """A board asks for a fresh certificate over its authenticated connection."""

    sensor_id: str
    nonce: bytes
    csr: bytes  # PEM
    certificate: bytes  # PEM: the certificate the board holds now
    proof: bytes  # ECDSA by that certificate's key over renew_proof_bytes(...)

    def verify_proof(self, key: ec.EllipticCurvePublicKey) -> bool:
        try:
            key.verify(self.proof, renew_proof_bytes(self.sensor_id, self.nonce, self.csr),
                       ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True, slots=True)
class Reply:
    """Central's answer to either request (on `reply_topic` or `renewed_topic`)."""

    nonce: bytes
    status: str  # issued | refused
    reason: str | None
    detail: str
    certificate: bytes | None  # PEM, when issued
    ca: bytes | None  # PEM of the CA, when issued
    not_after_us: int | None

    @property
    def ok(self) -> bool:
        return self.status == "issued"


def _pack(obj: dict[str, Any]) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def encode_enrol_request(
    token_id: str, sensor_id: str, nonce: bytes, csr: bytes, key: Ed25519PrivateKey
) -> bytes:
    if len(nonce) != NONCE_BYTES:
        raise ValueError("nonce must be 16 bytes")
    proof = key.sign(proof_bytes(token_id, sensor_id, nonce, csr))
    return _pack({
        "v": ENROL_VERSION, "kind": "enrol", "sensor_id": sensor_id, "nonce": nonce,
        "csr": csr, "signing_key": public_key_text(key.public_key()), "proof": proof,
    })


def encode_renew_request(sensor_id: str, nonce: bytes, csr: bytes, certificate: bytes,
                         tls_key: ec.EllipticCurvePrivateKey) -> bytes:
    """`certificate` is the board's current one, `tls_key` its key (not the CSR's, when the
    renewal rotates the key)."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError("nonce must be 16 bytes")
    proof = tls_key.sign(renew_proof_bytes(sensor_id, nonce, csr), ec.ECDSA(hashes.SHA256()))
    return _pack({"v": ENROL_VERSION, "kind": "renew", "sensor_id": sensor_id,
                  "nonce": nonce, "csr": csr, "certificate": certificate, "proof": proof})


def encode_reply(reply: Reply) -> bytes:
    return _pack({
        "v": ENROL_VERSION, "nonce": reply.nonce, "status": reply.status,
        "reason": reply.reason, "detail": reply.detail[:500],
        "certificate": reply.certificate, "ca": reply.ca, "not_after_us": reply.not_after_us,
    })


def _unpack(data: bytes, keys: frozenset[str]) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) > MAX_MESSAGE_BYTES:
        raise EnrolFormatError("message missing or larger than 32 KiB")
    try:
        obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True,
                              max_bin_len=MAX_MESSAGE_BYTES, max_str_len=MAX_MESSAGE_BYTES)
    except Exception as exc:
        raise EnrolFormatError(f"not msgpack: {exc}") from None
    if not isinstance(obj, dict) or set(obj) != keys:
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise EnrolFormatError(f"expected a map with keys {sorted(keys)}, got {got}")
    if obj["v"] != ENROL_VERSION or isinstance(obj["v"], bool):
        raise EnrolFormatError(f"unknown version {obj['v']!r}")
    return obj


def _nonce(obj: dict[str, Any]) -> bytes:
    n = obj["nonce"]
    if not isinstance(n, bytes) or len(n) != NONCE_BYTES:
        raise EnrolFormatError("nonce must be 16 bytes")
    return n


def _sid(obj: dict[str, Any]) -> str:
    sid = obj["sensor_id"]
    if not isinstance(sid, str) or not is_valid_sensor_id(sid):
        raise EnrolFormatError(f"invalid sensor id {sid!r}")
    return sid


def _csr(obj: dict[str, Any]) -> bytes:
    csr = obj["csr"]
    if not isinstance(csr, bytes) or not 0 < len(csr) <= MAX_CSR_BYTES:
        raise EnrolFormatError("csr must be a PEM request of at most 4096 bytes")
    return csr


_ENROL_KEYS: Final = frozenset({"v", "kind", "sensor_id", "nonce", "csr", "signing_key", "proof"})
_RENEW_KEYS: Final = frozenset(
    {"v", "kind", "sensor_id", "nonce", "csr", "certificate", "proof"})
_REPLY_KEYS: Final = frozenset(
    {"v", "nonce", "status", "reason", "detail", "certificate", "ca", "not_after_us"}
)


def decode_enrol_request(data: bytes) -> EnrolRequest:
    obj = _unpack(data, _ENROL_KEYS)
    if obj["kind"] != "enrol":
        raise EnrolFormatError("kind must be 'enrol'")
    try:
        key = parse_public_key(obj["signing_key"])
    except (ValueError, TypeError) as exc:
        raise EnrolFormatError(f"signing_key: {exc}") from None
    proof = obj["proof"]
    if not isinstance(proof, bytes) or len(proof) != 64:
        raise EnrolFormatError("proof must be a 64-byte Ed25519 signature")
    return EnrolRequest(_sid(obj), _nonce(obj), _csr(obj), key, proof)


def decode_renew_request(data: bytes) -> RenewRequest:
    obj = _unpack(data, _RENEW_KEYS)
    if obj["kind"] != "renew":
        raise EnrolFormatError("kind must be 'renew'")
    cert, proof = obj["certificate"], obj["proof"]
    if not isinstance(cert, bytes) or not 0 < len(cert) <= MAX_CERT_BYTES:
        raise EnrolFormatError("certificate must be PEM bytes of at most 8 KiB")
    if not isinstance(proof, bytes) or not 0 < len(proof) <= MAX_PROOF_BYTES:
        raise EnrolFormatError("proof must be an ECDSA signature (DER)")
    return RenewRequest(_sid(obj), _nonce(obj), _csr(obj), cert, proof)


def decode_reply(data: bytes) -> Reply:
    obj = _unpack(data, _REPLY_KEYS)
    status, reason, detail = obj["status"], obj["reason"], obj["detail"]
    if status not in ("issued", "refused"):
        raise EnrolFormatError(f"status {status!r}: issued or refused")
    if status == "refused" and reason not in REASONS:
        raise EnrolFormatError(f"unknown reason {reason!r}")
    if status == "issued" and reason is not None:
        raise EnrolFormatError("an issued reply has no reason")
    if not isinstance(detail, str):
        raise EnrolFormatError("detail must be text")
    cert, ca, na = obj["certificate"], obj["ca"], obj["not_after_us"]
    for name, v in (("certificate", cert), ("ca", ca)):
        if v is not None and (not isinstance(v, bytes) or len(v) > MAX_CERT_BYTES):
            raise EnrolFormatError(f"{name} must be PEM bytes of at most 8 KiB")
    if status == "issued" and (cert is None or ca is None or not isinstance(na, int)):
        raise EnrolFormatError("an issued reply carries certificate, ca and not_after_us")
    if na is not None and (isinstance(na, bool) or not isinstance(na, int)):
        raise EnrolFormatError("not_after_us must be an integer")
    return Reply(_nonce(obj), status, reason, detail, cert, ca, na)


def refused(nonce: bytes, reason: str, detail: str) -> Reply:
    if reason not in REASONS:
        raise ValueError(f"unknown reason {reason!r}")
    return Reply(nonce, "refused", reason, detail, None, None, None)

"""The central CA: it certifies the broker, the receiver and every sensor's TLS key.

Strategy: one ECDSA P-256 CA (OpenSSL and Mosquitto accept it everywhere; Ed25519 TLS
certificates are not universally supported).  `init_ca` creates the CA and, with the same
CA, a server certificate for the broker (SANs from `hosts`) and a client certificate for
the receiver (CN `central-receiver`): keys made at central stay at central.  Sensors'
keys never come here: `issue_sensor` signs a CSR the board made (`teiten csr`) after
checking its self-signature and that its CN is exactly the sensor id being enrolled.
The broker takes the certificate's CN as the MQTT username, and the ACL grants topics by
username, so the CN *is* the sensor's authority to write under `teiten/v1/<id>/`.

Revocation: every certificate the CA signs is recorded in `issued.json` (serial, CN, kind,
validity; written atomically under a lock).  `revoke` marks every certificate issued to a
sensor id as revoked and re-issues the CRL (`crl.pem`, PEM, next to `ca.crt`), which the
broker's TLS listeners load with `crlfile`; `refresh_crl` re-signs it with a fresh
next_update (default 365 days: the broker refuses *every* client once it has passed, so
refresh it from cron well before).  `init_ca` writes an empty CRL so the broker starts.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wire.ids import validate_sensor_id

RECEIVER_CN = "central-receiver"
ENROL_CN = "central-enrol"  # the enrolment service (docs/enrolment.md)
_RESERVED = {RECEIVER_CN, ENROL_CN, "central-broker"}
CRL_DAYS = 365  # long: a forgotten refresh must not lock the fleet out soon
CRL_NAME = "crl.pem"
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
}


class CAError(Exception):
    """A CA operation that cannot proceed; the message says what to do."""


@dataclass(frozen=True, slots=True)
class CAFiles:
    dir: Path

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def server_crt(self) -> Path:
        return self.dir / "server.crt"

    @property
    def receiver_key(self) -> Path:
        return self.dir / "receiver.key"

    @property
    def receiver_crt(self) -> Path:
        return self.dir / "receiver.crt"

    @property
    def enrol_key(self) -> Path:
        return self.dir / "enrol.key"

    @property
    def enrol_crt(self) -> Path:
        return self.dir / "enrol.crt"

    @property
    def server_chain(self) -> Path:
        return self.dir / "server-chain.crt"

    @property
    def crl(self) -> Path:
        return self.dir / CRL_NAME

    @property
    def issued(self) -> Path:
        return self.dir / "issued.json"

    @property
    def lock(self) -> Path:
        return self.dir / ".lock"


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        raise CAError(f"{path} already exists; refusing to overwrite it") from None
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _cn(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _leaf(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    days: int,
    eku: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
    lifetime_s: int | None = None,
) -> x509.Certificate:
    now = _now()
    life = dt.timedelta(days=days) if lifetime_s is None else dt.timedelta(seconds=lifetime_s)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + life)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(ca_key, hashes.SHA256())


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def init_ca(
    directory: str | os.PathLike[str],
    *,
    hosts: list[str] | None = None,
    name: str = "Teiten central CA",
    days: int = 3650,
    leaf_days: int = 825,
) -> CAFiles:
    """Create CA, broker server and receiver client key pairs and certificates in `directory`."""
    files = CAFiles(Path(directory))
    files.dir.mkdir(parents=True, exist_ok=True)
    if files.ca_key.exists():
        raise CAError(f"{files.ca_key} exists: this folder already holds a CA")
    hosts = hosts or ["localhost", "127.0.0.1"]
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_cn(name))
        .issuer_name(_cn(name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_new(files.ca_key, _key_pem(ca_key), 0o600)
    _write_new(files.ca_crt, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)

    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = _leaf(
        _cn(hosts[0]),
        srv_key.public_key(),
        ca_key,
        ca_cert,
        leaf_days,
        ExtendedKeyUsageOID.SERVER_AUTH,
        [_san(h) for h in hosts],
    )
    # the broker may run as user mosquitto: group-readable is set up by the operator (docs)
    _write_new(files.server_key, _key_pem(srv_key), 0o600)
    _write_new(files.server_crt, srv.public_bytes(serialization.Encoding.PEM), 0o644)

    rcv_key = ec.generate_private_key(ec.SECP256R1())
    rcv = _leaf(
        _cn(RECEIVER_CN),
        rcv_key.public_key(),
        ca_key,
        ca_cert,
        leaf_days,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    _write_new(files.receiver_key, _key_pem(rcv_key), 0o600)
    _write_new(files.receiver_crt, rcv.public_bytes(serialization.Encoding.PEM), 0o644)
    with _locked(files):
        doc = _read_index(files)
        _add(doc, srv, "server")
        _add(doc, rcv, "receiver")
        _write_crl(files, doc, ca_key, ca_cert, CRL_DAYS)  # empty: the broker needs one to start
        _write_index(files, doc)
    return files


def _load_ca(files: CAFiles) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(files.ca_crt.read_bytes())
    except FileNotFoundError as exc:
        raise CAError(
            f"no CA in {files.dir} ({exc.filename} missing); run `teiten central ca init` first"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(f"{files.ca_key} is not an EC key")
    return key, cert


def issue_sensor(
    directory: str | os.PathLike[str],
    sensor_id: str,
    csr_pem: bytes,
    *,
    days: int = 825,
    lifetime_s: int | None = None,
) -> bytes:
    """Sign a sensor's CSR; returns the certificate PEM.  The key stays on the board.

    `lifetime_s`, when given, replaces `days` (enrolment and renewal use it; tests use
    lifetimes of seconds)."""
    try:
        validate_sensor_id(sensor_id)
    except ValueError as exc:
        raise CAError(str(exc)) from None
    if sensor_id in _RESERVED:
        raise CAError(f"{sensor_id!r} is reserved for the central site")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CAError(f"not a PEM certificate request: {exc}; make one with `teiten csr`") from None
    if not csr.is_signature_valid:
        raise CAError("the request's signature does not verify: it was altered or is corrupt")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or cns[0].value != sensor_id:
        got = [c.value for c in cns]
        raise CAError(
            f"the request is for CN={got}, not {sensor_id!r}; make it on the board with "
            f"`teiten csr` using sensor id {sensor_id!r}"
        )
    pub = csr.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        raise CAError("the request's key is not an EC key; `teiten csr` makes a P-256 key")
    files = CAFiles(Path(directory))
    ca_key, ca_cert = _load_ca(files)
    cert = _leaf(_cn(sensor_id), pub, ca_key, ca_cert, days, ExtendedKeyUsageOID.CLIENT_AUTH,
                 lifetime_s=lifetime_s)
    _record(files, cert, "sensor")  # before the certificate leaves: revocable by sensor id
    return cert.public_bytes(serialization.Encoding.PEM)


def issue_local_client(
    directory: str | os.PathLike[str], cn: str, key_path: Path, cert_path: Path, *, days: int = 825
) -> None:
    """Make a key and certificate for a client at central itself (tests, demo, extra receivers)."""
    files = CAFiles(Path(directory))
    ca_key, ca_cert = _load_ca(files)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(_cn(cn), key.public_key(), ca_key, ca_cert, days, ExtendedKeyUsageOID.CLIENT_AUTH)
    _record(files, cert, "client")
    _write_new(key_path, _key_pem(key), 0o600)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def ensure_enrol_client(directory: str | os.PathLike[str], *, days: int = 825) -> CAFiles:
    """The enrolment service's key and certificate (CN `central-enrol`), made once."""
    files = CAFiles(Path(directory))
    if not files.enrol_crt.exists():
        issue_local_client(files.dir, ENROL_CN, files.enrol_key, files.enrol_crt, days=days)
    return files


def write_server_chain(directory: str | os.PathLike[str]) -> Path:
    """`server-chain.crt`: the broker's certificate followed by the CA's, for the enrolment
    listener, so a board can pin the CA by fingerprint before it sends its token."""
    files = CAFiles(Path(directory))
    data = files.server_crt.read_bytes().rstrip(b"\n") + b"\n" + files.ca_crt.read_bytes()
    atomic_write(files.server_chain, data, 0o644)
    return files.server_chain


def ca_fingerprint_of(directory: str | os.PathLike[str]) -> str:
    """`sha256:<hex>` of the CA certificate's DER bytes (what teiten.toml pins)."""
    from wire.enrolment import ca_fingerprint

    cert = x509.load_pem_x509_certificate(CAFiles(Path(directory)).ca_crt.read_bytes())
    return ca_fingerprint(cert.public_bytes(serialization.Encoding.DER))


# ---------------------------------------------------------------- issued record and CRL
def atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data`, mode `mode`, so that a crash leaves the old file or the
    new one: a temporary file in the same directory, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@contextmanager
def _locked(files: CAFiles) -> Iterator[None]:
    """One CA operation at a time on `issued.json` and `crl.pem` (issue, revoke, refresh)."""
    fd = os.open(files.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_index(files: CAFiles) -> dict[str, Any]:
    try:
        doc = json.loads(files.issued.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"version": 1, "crl_number": 0, "certificates": []}
    except (OSError, ValueError) as exc:
        raise CAError(f"cannot read {files.issued}: {exc}; restore it from a backup") from None
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise CAError(f"{files.issued} is not a version 1 record of issued certificates")
    return doc


def _write_index(files: CAFiles, doc: dict[str, Any]) -> None:
    atomic_write(files.issued, (json.dumps(doc, indent=1) + "\n").encode(), 0o644)


def _serial(n: int) -> str:
    return f"{n:X}"


def _add(doc: dict[str, Any], cert: x509.Certificate, kind: str) -> dict[str, Any]:
    serial = _serial(cert.serial_number)
    for entry in doc["certificates"]:
        if entry["serial"] == serial:
            return dict(entry)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    entry = {
        "serial": serial,
        "cn": str(cns[0].value) if cns else "",
        "kind": kind,
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "revoked_at": None,
        "reason": None,
    }
    doc["certificates"].append(entry)
    return entry


def _record(files: CAFiles, cert: x509.Certificate, kind: str) -> None:
    with _locked(files):
        doc = _read_index(files)
        _add(doc, cert, kind)
        _write_index(files, doc)


def _write_crl(
    files: CAFiles,
    doc: dict[str, Any],
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    days: int,
) -> x509.CertificateRevocationList:
    """Sign and write a CRL of every revoked, not yet expired certificate in `doc`."""
    if days < 1:
        raise CAError("the CRL must be valid for at least one day")
    now = _now()
    doc["crl_number"] = int(doc.get("crl_number", 0)) + 1
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(doc["crl_number"]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    for entry in doc["certificates"]:
        if entry["revoked_at"] is None:
            continue
        if dt.datetime.fromisoformat(entry["not_after"]) < now:
            continue  # expired: the broker refuses it anyway; keeps the CRL bounded
        r = x509.RevokedCertificateBuilder().serial_number(int(entry["serial"], 16))
        r = r.revocation_date(dt.datetime.fromisoformat(entry["revoked_at"]))
        reason = REASONS.get(entry.get("reason") or "unspecified", x509.ReasonFlags.unspecified)
        if reason is not x509.ReasonFlags.unspecified:  # RFC 5280: omit when unspecified
            r = r.add_extension(x509.CRLReason(reason), critical=False)
        b = b.add_revoked_certificate(r.build())
    crl = b.sign(ca_key, hashes.SHA256())
    atomic_write(files.crl, crl.public_bytes(serialization.Encoding.PEM), 0o644)
    return crl


@dataclass(frozen=True, slots=True)
class CRLInfo:
    path: Path
    number: int
    revoked: int
    next_update: dt.datetime


@dataclass(frozen=True, slots=True)
class Revocation:
    sensor_id: str
    revoked: list[str]  # serials (hex) revoked now
    already: list[str]  # serials that were revoked before
    crl: CRLInfo


def _info(files: CAFiles, crl: x509.CertificateRevocationList) -> CRLInfo:
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    nu = crl.next_update_utc
    assert nu is not None
    return CRLInfo(files.crl, number, len(crl), nu)


def issued_certificates(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """What the CA has signed (recorded since revocation support), oldest first."""
    files = CAFiles(Path(directory))
    with _locked(files):
        return list(_read_index(files)["certificates"])


def refresh_crl(directory: str | os.PathLike[str], *, days: int = CRL_DAYS) -> CRLInfo:
    """Re-sign the CRL with a new number and next_update (cron: well within `days`)."""
    files = CAFiles(Path(directory))
    ca_key, ca_cert = _load_ca(files)
    with _locked(files):
        doc = _read_index(files)
        crl = _write_crl(files, doc, ca_key, ca_cert, days)
        _write_index(files, doc)
    return _info(files, crl)


def revoke(
    directory: str | os.PathLike[str],
    sensor_id: str,
    *,
    reason: str = "unspecified",
    certificates: list[bytes] | None = None,
    days: int = CRL_DAYS,
) -> Revocation:
    """Revoke every certificate issued to `sensor_id` (and `certificates`, PEM, e.g. ones
    signed before the CA kept a record) and write the new CRL."""
    try:
        validate_sensor_id(sensor_id)
    except ValueError as exc:
        raise CAError(str(exc)) from None
    if sensor_id in _RESERVED:
        raise CAError(f"{sensor_id!r} is a central certificate, not a sensor's")
    if reason not in REASONS:
        raise CAError(f"unknown reason {reason!r}; use one of {', '.join(REASONS)}")
    files = CAFiles(Path(directory))
    ca_key, ca_cert = _load_ca(files)
    extra: list[x509.Certificate] = []
    for pem in certificates or []:
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            raise CAError(f"not a PEM certificate: {exc}") from None
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            raise CAError(
                f"certificate {_serial(cert.serial_number)} was not issued by this CA"
            ) from None
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [c.value for c in cns] != [sensor_id]:
            raise CAError(
                f"certificate {_serial(cert.serial_number)} is for CN="
                f"{[c.value for c in cns]}, not {sensor_id!r}"
            )
        extra.append(cert)
    now = _now().replace(microsecond=0)
    with _locked(files):
        doc = _read_index(files)
        for cert in extra:
            _add(doc, cert, "sensor")
        mine = [e for e in doc["certificates"] if e["cn"] == sensor_id and e["kind"] == "sensor"]
        if not mine:
            raise CAError(
                f"{files.issued} records no certificate issued to {sensor_id!r}; if it was "
                f"signed before the CA kept a record, pass its file with --cert"
            )
        done, already = [], []
        for entry in mine:
            if entry["revoked_at"] is not None:
                already.append(entry["serial"])
                continue
            entry["revoked_at"] = now.isoformat()
            entry["reason"] = reason
            done.append(entry["serial"])
        crl = _write_crl(files, doc, ca_key, ca_cert, days)
        _write_index(files, doc)
    return Revocation(sensor_id, done, already, _info(files, crl))


def revoke_serials(
    directory: str | os.PathLike[str],
    sensor_id: str,
    *,
    keep: set[str],
    reason: str = "superseded",
    days: int = CRL_DAYS,
) -> list[str]:
    """Revoke every certificate of `sensor_id` except the serials in `keep` (a replaced
    board's, once the new board enrolled under the same id); returns the serials revoked."""
    files = CAFiles(Path(directory))
    ca_key, ca_cert = _load_ca(files)
    now = _now().replace(microsecond=0)
    with _locked(files):
        doc = _read_index(files)
        done = []
        for e in doc["certificates"]:
            if (e["cn"] == sensor_id and e["kind"] == "sensor" and e["revoked_at"] is None
                    and e["serial"] not in keep):
                e["revoked_at"] = now.isoformat()
                e["reason"] = reason
                done.append(e["serial"])
        if done:
            _write_crl(files, doc, ca_key, ca_cert, days)
            _write_index(files, doc)
    return done


def revoked_acl(directory: str | os.PathLike[str]) -> str:
    """ACL lines denying every topic to each revoked, unexpired sensor certificate's CN.

    Appended to the broker's ACL: Mosquitto 2.0's WebSockets-TLS listener ignores `crlfile`,
    and a connection made before the revocation outlives a reload; the ACL covers both.
    """
    files = CAFiles(Path(directory))
    now = _now()
    with _locked(files):
        entries = _read_index(files)["certificates"]
    # A sensor id whose board was replaced (enrolment with --replace) has revoked
    # certificates and a valid one: denying the name would lock out the new board.  Its
    # old board is refused by the CRL on 8883 and by its key at the receiver.
    valid = {
        e["cn"]
        for e in entries
        if e["revoked_at"] is None
        and e["kind"] == "sensor"
        and dt.datetime.fromisoformat(e["not_after"]) >= now
    }
    cns = sorted(
        {
            e["cn"]
            for e in entries
            if e["revoked_at"] is not None
            and e["kind"] == "sensor"
            and dt.datetime.fromisoformat(e["not_after"]) >= now
        }
        - valid
    )
    if not cns:
        return ""
    lines = ["", "# Revoked sensors (`teiten central revoke`): no topic at all."]
    for cn in cns:
        lines += [f"user {cn}", "topic deny #"]
    return "\n".join(lines) + "\n"


def write_acl(directory: str | os.PathLike[str], path: Path, base: str) -> None:
    """Write the broker ACL: `base` (central/mosquitto/acl) and the revoked sensors' denials."""
    atomic_write(path, (base + revoked_acl(directory)).encode(), 0o644)


def mark_revoked_in_keyring(path: Path, sensor_id: str) -> bool:
    """Set `revoked = true` in the `[sensors.<id>]` table of sensors.toml.

    Returns False (file unchanged) when the sensor is not there as such a table; the
    result is checked by loading it with the receiver's own parser before it replaces the
    file, and the receiver picks the change up when the file changes.
    """
    from central.keyring import load_keyring
    from wire.keys import KeyringError

    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    headers = {f"[sensors.{sensor_id}]", f'[sensors."{sensor_id}"]'}
    start = next((i for i, ln in enumerate(lines) if ln.strip() in headers), None)
    if start is None:
        return False
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")),
        len(lines),
    )
    for i in range(start + 1, end):
        if lines[i].split("=", 1)[0].strip() == "revoked":
            lines[i] = "revoked = true\n"
            break
    else:
        lines.insert(start + 1, "revoked = true\n")
    new = "".join(lines)
    tmp = path.with_name(f".{path.name}.check")
    tmp.write_text(new, encoding="utf-8")
    try:
        entry = load_keyring(tmp).get(sensor_id)
    except KeyringError:
        entry = None
    finally:
        tmp.unlink()
    if entry is None or not entry.revoked:
        return False
    atomic_write(path, new.encode(), path.stat().st_mode & 0o777)
    return True

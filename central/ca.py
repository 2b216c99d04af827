"""The central CA: it certifies the broker, the receiver and every sensor's TLS key.

Strategy: one ECDSA P-256 CA (OpenSSL and Mosquitto accept it everywhere; Ed25519 TLS
certificates are not universally supported).  `init_ca` creates the CA and, with the same
CA, a server certificate for the broker (SANs from `hosts`) and a client certificate for
the receiver (CN `central-receiver`): keys made at central stay at central.  Sensors'
keys never come here: `issue_sensor` signs a CSR the board made (`teiten csr`) after
checking its self-signature and that its CN is exactly the sensor id being enrolled.
The broker takes the certificate's CN as the MQTT username, and the ACL grants topics by
username, so the CN *is* the sensor's authority to write under `teiten/v1/<id>/`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from uplink.keys import validate_sensor_id

RECEIVER_CN = "central-receiver"
_RESERVED = {RECEIVER_CN, "central-broker"}


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
) -> x509.Certificate:
    now = _now()
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
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
    directory: str | os.PathLike[str], sensor_id: str, csr_pem: bytes, *, days: int = 825
) -> bytes:
    """Sign a sensor's CSR; returns the certificate PEM.  The key stays on the board."""
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
    ca_key, ca_cert = _load_ca(CAFiles(Path(directory)))
    cert = _leaf(_cn(sensor_id), pub, ca_key, ca_cert, days, ExtendedKeyUsageOID.CLIENT_AUTH)
    return cert.public_bytes(serialization.Encoding.PEM)


def issue_local_client(
    directory: str | os.PathLike[str], cn: str, key_path: Path, cert_path: Path, *, days: int = 825
) -> None:
    """Make a key and certificate for a client at central itself (tests, demo, extra receivers)."""
    ca_key, ca_cert = _load_ca(CAFiles(Path(directory)))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(_cn(cn), key.public_key(), ca_key, ca_cert, days, ExtendedKeyUsageOID.CLIENT_AUTH)
    _write_new(key_path, _key_pem(key), 0o600)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)

"""The board's TLS identity: a P-256 key made on the board and a CSR for the central CA.

Strategy: the TLS key never leaves the board.  `teiten csr` creates it (mode 0600, never
overwritten) and prints a PKCS#10 request whose subject CN is the sensor id; the central
site signs it with `teiten central issue` and only the certificate travels back.  This key
is for mutual TLS with the broker and is separate from the Ed25519 key that signs
envelopes: P-256 ECDSA is what every TLS stack, Mosquitto's OpenSSL included, accepts
for client certificates.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sensor.edges.keys import KeyFileError, read_private_file, write_private_file
from wire.ids import validate_sensor_id


def generate_tls_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePrivateKey:
    """Create a P-256 key at `path` (mode 0600); refuse to overwrite an existing file."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private_file(Path(path), pem, "a TLS key")
    return key


def load_tls_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePrivateKey:
    target = Path(path)
    data = read_private_file(
        target, f"no TLS key at {target}; `teiten csr --key {target}` creates one"
    )
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{target} is not an EC private key")
    return key


def make_csr(key_path: str | os.PathLike[str], sensor_id: str) -> bytes:
    """PEM CSR with CN=sensor_id for the key at `key_path`, creating the key if absent."""
    validate_sensor_id(sensor_id)
    p = Path(key_path)
    key = load_tls_key(p) if p.exists() else generate_tls_key(p)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sensor_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)

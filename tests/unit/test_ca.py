"""Central CA: init, sensor issuance from a board-made CSR, refusals."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from central.ca import RECEIVER_CN, CAError, init_ca, issue_sensor
from uplink.certs import make_csr


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_init_creates_ca_server_receiver(tmp_path: Path) -> None:
    f = init_ca(tmp_path / "ca", hosts=["localhost", "127.0.0.1"])
    ca = x509.load_pem_x509_certificate(f.ca_crt.read_bytes())
    srv = x509.load_pem_x509_certificate(f.server_crt.read_bytes())
    rcv = x509.load_pem_x509_certificate(f.receiver_crt.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    srv.verify_directly_issued_by(ca)
    rcv.verify_directly_issued_by(ca)
    sans = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert _cn(rcv) == RECEIVER_CN
    assert stat.S_IMODE(f.ca_key.stat().st_mode) == 0o600
    with pytest.raises(CAError, match="already holds a CA"):
        init_ca(tmp_path / "ca")


def test_issue_from_board_csr_key_stays_on_board(tmp_path: Path) -> None:
    f = init_ca(tmp_path / "ca")
    board_key = tmp_path / "board" / "tls.key"
    board_key.parent.mkdir()
    csr = make_csr(board_key, "tokyo-01")
    assert stat.S_IMODE(board_key.stat().st_mode) == 0o600
    assert b"PRIVATE" not in csr
    pem = issue_sensor(f.dir, "tokyo-01", csr)
    cert = x509.load_pem_x509_certificate(pem)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(f.ca_crt.read_bytes()))
    assert _cn(cert) == "tokyo-01"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    # the same key is reused when the board asks again
    assert x509.load_pem_x509_csr(make_csr(board_key, "tokyo-01")).public_key() == (
        cert.public_key()
    )


def test_issue_refuses_mismatched_cn_bad_id_tampered_csr(tmp_path: Path) -> None:
    f = init_ca(tmp_path / "ca")
    csr = make_csr(tmp_path / "k", "tokyo-01")
    with pytest.raises(CAError, match="not 'osaka-02'"):
        issue_sensor(f.dir, "osaka-02", csr)
    with pytest.raises(CAError, match="invalid sensor id"):
        issue_sensor(f.dir, "Bad_ID", csr)
    with pytest.raises(CAError, match="reserved"):
        issue_sensor(f.dir, RECEIVER_CN, make_csr(tmp_path / "k2", RECEIVER_CN))
    der = bytearray(x509.load_pem_x509_csr(csr).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # flip a bit in the signature

    bad = (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(bytes(der))
        + b"-----END CERTIFICATE REQUEST-----\n"
    )
    with pytest.raises(CAError):
        issue_sensor(f.dir, "tokyo-01", bad)
    with pytest.raises(CAError, match="ca init"):
        issue_sensor(tmp_path / "nothing", "tokyo-01", csr)

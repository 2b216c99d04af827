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

from central.ca import (
    CRL_DAYS,
    RECEIVER_CN,
    CAError,
    CAFiles,
    init_ca,
    issue_sensor,
    issued_certificates,
    mark_revoked_in_keyring,
    refresh_crl,
    revoke,
    revoked_acl,
)
from sensor.edges.certs import make_csr


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


# ---------------------------------------------------------------- revocation and CRL
def _crl(f: CAFiles) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(f.crl.read_bytes())


def _ca_key(f: CAFiles) -> ec.EllipticCurvePublicKey:
    pub = x509.load_pem_x509_certificate(f.ca_crt.read_bytes()).public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    return pub


def test_init_writes_empty_crl_signed_by_ca_and_records_issued(tmp_path: Path) -> None:
    f = init_ca(tmp_path / "ca")
    crl = _crl(f)
    assert len(crl) == 0
    assert crl.is_signature_valid(_ca_key(f))
    assert crl.issuer == x509.load_pem_x509_certificate(f.ca_crt.read_bytes()).subject
    assert crl.next_update_utc is not None and crl.last_update_utc is not None
    days = (crl.next_update_utc - crl.last_update_utc).days
    assert CRL_DAYS - 1 <= days <= CRL_DAYS
    kinds = {e["kind"]: e["cn"] for e in issued_certificates(f.dir)}
    assert kinds == {"server": "localhost", "receiver": RECEIVER_CN}


def test_revoke_puts_every_serial_of_the_sensor_in_the_crl(tmp_path: Path) -> None:
    f = init_ca(tmp_path / "ca")
    a1 = x509.load_pem_x509_certificate(
        issue_sensor(f.dir, "tokyo-01", make_csr(tmp_path / "a", "tokyo-01"))
    )
    a2 = x509.load_pem_x509_certificate(  # re-enrolled board: a second certificate
        issue_sensor(f.dir, "tokyo-01", make_csr(tmp_path / "a2", "tokyo-01"))
    )
    b = x509.load_pem_x509_certificate(
        issue_sensor(f.dir, "osaka-02", make_csr(tmp_path / "b", "osaka-02"))
    )
    rec = {e["serial"]: e for e in issued_certificates(f.dir)}
    assert rec[f"{a1.serial_number:X}"]["cn"] == "tokyo-01"
    assert rec[f"{b.serial_number:X}"]["not_after"] == b.not_valid_after_utc.isoformat()

    before = _crl(f).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    r = revoke(f.dir, "tokyo-01", reason="key-compromise")
    assert sorted(r.revoked) == sorted(f"{c.serial_number:X}" for c in (a1, a2))
    crl = _crl(f)
    assert crl.is_signature_valid(_ca_key(f))
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > before
    assert {rc.serial_number for rc in crl} == {a1.serial_number, a2.serial_number}
    assert crl.get_revoked_certificate_by_serial_number(b.serial_number) is None
    entry = crl.get_revoked_certificate_by_serial_number(a1.serial_number)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    # revoking again changes nothing but says so; the other sensor is unaffected
    again = revoke(f.dir, "tokyo-01")
    assert again.revoked == [] and sorted(again.already) == sorted(r.revoked)
    assert "user tokyo-01\ntopic deny #" in revoked_acl(f.dir)
    assert "osaka-02" not in revoked_acl(f.dir)


def test_refresh_crl_resigns_with_new_number_and_next_update(tmp_path: Path) -> None:
    f = init_ca(tmp_path / "ca")
    c = x509.load_pem_x509_certificate(issue_sensor(f.dir, "s-1", make_csr(tmp_path / "k", "s-1")))
    revoke(f.dir, "s-1")
    old = _crl(f)
    info = refresh_crl(f.dir, days=7)
    new = _crl(f)
    assert new.is_signature_valid(_ca_key(f))
    n_old = old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert info.number == n_old + 1
    assert [rc.serial_number for rc in new] == [c.serial_number]  # still revoked
    assert new.next_update_utc is not None and old.next_update_utc is not None
    assert new.next_update_utc < old.next_update_utc  # 7 days, not 30
    assert info.next_update == new.next_update_utc


def test_revoke_refusals_and_cert_signed_before_the_record(tmp_path: Path) -> None:
    f = init_ca(tmp_path / "ca")
    with pytest.raises(CAError, match="records no certificate"):
        revoke(f.dir, "never-issued")
    with pytest.raises(CAError, match="not a sensor"):
        revoke(f.dir, RECEIVER_CN)
    with pytest.raises(CAError, match="unknown reason"):
        revoke(f.dir, "s-1", reason="bored")
    pem = issue_sensor(f.dir, "s-1", make_csr(tmp_path / "k", "s-1"))
    f.issued.unlink()  # as if signed by a CA from before the record existed
    with pytest.raises(CAError, match="--cert"):
        revoke(f.dir, "s-1")
    with pytest.raises(CAError, match="not 's-2'"):
        revoke(f.dir, "s-2", certificates=[pem])
    other = init_ca(tmp_path / "other")
    foreign = issue_sensor(other.dir, "s-1", make_csr(tmp_path / "k2", "s-1"))
    with pytest.raises(CAError, match="not issued by this CA"):
        revoke(f.dir, "s-1", certificates=[foreign])
    r = revoke(f.dir, "s-1", certificates=[pem])
    assert [int(s, 16) for s in r.revoked] == [x509.load_pem_x509_certificate(pem).serial_number]


def test_mark_revoked_in_keyring(tmp_path: Path) -> None:

    k = "ed25519:" + base64.b64encode(bytes(32)).decode()
    p = tmp_path / "sensors.toml"
    p.write_text(
        f'[sensors]\n\n[sensors.s-1]\npublic_key = "{k}"\n\n'
        f'[sensors.s-2]\npublic_key = "{k}"\nrevoked = false\nnote = "x"\n'
    )
    assert mark_revoked_in_keyring(p, "s-2")
    assert mark_revoked_in_keyring(p, "s-1")
    from central.keyring import load_keyring

    ring = load_keyring(p)
    assert ring.get("s-1").revoked and ring.get("s-2").revoked  # type: ignore[union-attr]
    assert ring.get("s-2").note == "x"  # type: ignore[union-attr]
    assert not mark_revoked_in_keyring(p, "s-3")


def test_cli_revoke_json_and_ca_crl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from sensor.cli import main

    f = init_ca(tmp_path / "ca")
    issue_sensor(f.dir, "s-1", make_csr(tmp_path / "k", "s-1"))
    acl = tmp_path / "acl"
    assert main(["central", "revoke", "s-1", "--dir", str(f.dir), "--acl", str(acl), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sensor_id"] == "s-1" and len(out["revoked_serials"]) == 1
    assert any("systemctl restart mosquitto" in s for s in out["next_steps"])
    assert any("revoked = true" in s for s in out["next_steps"])
    assert acl.read_text().endswith("user s-1\ntopic deny #\n")
    assert main(["central", "ca", "crl", "--dir", str(f.dir), "--json"]) == 0
    crl = json.loads(capsys.readouterr().out)
    assert crl["revoked_certificates"] == 1
    assert main(["central", "revoke", "nope", "--dir", str(f.dir)]) == 2
    assert "--cert" in capsys.readouterr().err

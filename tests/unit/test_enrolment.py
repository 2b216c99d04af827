"""The enrolment contract (wire/enrolment.py) and the board's key-rotation file steps."""

from __future__ import annotations

import secrets
from pathlib import Path

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sensor.edges.enrol import (
    _next,
    finish_rotation,
    parse_enrol_table,
    remove_token,
    rotation_csr,
)
from wire.enrolment import (
    EnrolFormatError,
    Reply,
    decode_enrol_request,
    decode_renew_request,
    decode_reply,
    encode_enrol_request,
    encode_renew_request,
    encode_reply,
    make_token,
    parse_fingerprint,
    parse_token,
    refused,
    token_of_request_topic,
)

CSR = b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"


def test_token_text() -> None:
    tok = make_token(bytes(range(24)))
    tid, secret = parse_token(tok)
    assert len(tid) == 10 and len(secret) == 26 and tok == f"{tid}.{secret}"
    assert parse_token(" " + tok.lower() + " ") == (tid, secret)  # as typed from a phone
    for bad in ("", tid, tok + "A", tok.replace(".", "-"), tok[:-1] + "1", 5):
        with pytest.raises(EnrolFormatError):
            parse_token(bad)  # type: ignore[arg-type]
    assert token_of_request_topic(f"teiten/v1/enrol/{tid}/request") == tid
    assert token_of_request_topic("teiten/v1/enrol/tyo-01/request") is None  # lower case


def test_fingerprint_text() -> None:
    raw = secrets.token_bytes(32)
    hexed = raw.hex()
    assert parse_fingerprint("sha256:" + hexed) == raw
    assert parse_fingerprint(":".join(hexed[i:i + 2] for i in range(0, 64, 2)).upper()) == raw
    for bad in ("sha256:" + hexed[:-2], "md5:xx", ""):
        with pytest.raises(EnrolFormatError):
            parse_fingerprint(bad)


def test_enrol_request_round_trip_and_proof() -> None:
    key = Ed25519PrivateKey.generate()
    nonce = bytes(16)
    data = encode_enrol_request("ABCDEFGHIJ", "tyo-01", nonce, CSR, key)
    req = decode_enrol_request(data)
    assert (req.sensor_id, req.nonce, req.csr) == ("tyo-01", nonce, CSR)
    assert req.verify_proof("ABCDEFGHIJ")
    assert not req.verify_proof("ABCDEFGHIK")  # bound to the token
    obj = msgpack.unpackb(data)
    obj["sensor_id"] = "tyo-02"  # bound to the sensor id
    assert not decode_enrol_request(msgpack.packb(obj, use_bin_type=True)).verify_proof(
        "ABCDEFGHIJ")
    for broken in ({**obj, "extra": 1}, {k: v for k, v in obj.items() if k != "proof"},
                   {**obj, "v": 2}, {**obj, "kind": "renew"}, {**obj, "nonce": b"x"}):
        with pytest.raises(EnrolFormatError):
            decode_enrol_request(msgpack.packb(broken, use_bin_type=True))
    with pytest.raises(EnrolFormatError):
        decode_enrol_request(b"\xc1")


def test_renew_and_reply_round_trip() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    r = decode_renew_request(encode_renew_request("tyo-01", bytes(16), CSR, b"CERT", key))
    assert (r.sensor_id, r.csr, r.certificate) == ("tyo-01", CSR, b"CERT")
    assert r.verify_proof(key.public_key())
    assert not r.verify_proof(ec.generate_private_key(ec.SECP256R1()).public_key())
    ok = Reply(bytes(16), "issued", None, "fine", b"CERT", b"CA", 123)
    assert decode_reply(encode_reply(ok)) == ok
    no = refused(bytes(16), "token_used", "used")
    assert decode_reply(encode_reply(no)) == no
    with pytest.raises(ValueError):
        refused(bytes(16), "made_up", "")
    bad = msgpack.unpackb(encode_reply(ok))
    bad["certificate"] = None  # issued without a certificate
    with pytest.raises(EnrolFormatError):
        decode_reply(msgpack.packb(bad, use_bin_type=True))


def test_enrol_table_and_token_removal() -> None:
    tok = make_token(bytes(24))
    s, found = parse_enrol_table({"token": tok, "ca_fingerprint": "sha256:" + "ab" * 32})
    assert s is not None and not found and s.port == 8884
    s, found = parse_enrol_table({"token": "nope", "ca_fingerprint": "x", "what": 1})
    assert s is None and {f.field for f in found} == {"enrol.token", "enrol.ca_fingerprint",
                                                      "enrol.what"}
    assert parse_enrol_table(None) == (None, [])
    text = f'[sensor]\nid = "a"\ntoken = "keep"\n[enrol]\ntoken = "{tok}"\nport = 1\n'
    out = remove_token(text)
    assert tok not in out and 'token = "keep"' in out and "port = 1" in out


def test_key_rotation_survives_a_crash_between_its_steps(tmp_path: Path) -> None:
    from cryptography import x509

    from central.ca import init_ca, issue_sensor
    from sensor.edges.certs import make_csr

    ca = init_ca(tmp_path / "ca")
    key, cert = tmp_path / "tls.key", tmp_path / "sensor.crt"
    cert.write_bytes(issue_sensor(ca.dir, "tyo-01", make_csr(key, "tyo-01")))
    new_pem = issue_sensor(ca.dir, "tyo-01", rotation_csr(key, "tyo-01"))
    # crash 1: the new certificate written, nothing renamed yet
    _next(cert).write_bytes(new_pem)
    assert finish_rotation(key, cert) is not None
    assert cert.read_bytes() == new_pem and not _next(key).exists()
    mine = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    from sensor.edges.certs import load_tls_key

    assert load_tls_key(key).public_key() == mine
    # crash 2: the key renamed, the certificate not yet
    newer = issue_sensor(ca.dir, "tyo-01", rotation_csr(key, "tyo-01"))
    _next(key).replace(key)
    _next(cert).write_bytes(newer)
    assert finish_rotation(key, cert) is not None and cert.read_bytes() == newer
    # a stray certificate for some other key is discarded, the pair untouched
    other = issue_sensor(ca.dir, "tyo-01", make_csr(tmp_path / "other.key", "tyo-01"))
    _next(cert).write_bytes(other)
    assert "discarded" in (finish_rotation(key, cert) or "")
    assert cert.read_bytes() == newer and finish_rotation(key, cert) is None


def test_what_a_boot_does() -> None:
    from sensor.core.enrol import Action, decide

    now = 1_800_000_000.0
    assert decide(now + 10, now, False, "a").action is Action.NOTHING
    assert decide(now + 10, now, True, "a").action is Action.TIDY  # token left by a power cut
    assert decide(None, now, True, "a").action is Action.ENROL
    assert decide(now - 10, now, True, "a").action is Action.ENROL  # expired: a new token
    stuck = decide(now - 10, now, False, "a")
    assert stuck.action is Action.STUCK and stuck.reason == "no_token"
    assert "--replace" in stuck.detail
    assert "--replace" not in decide(None, now, False, "a").detail

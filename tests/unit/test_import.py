"""`teiten central import`: envelope files and spool directories through the receiver's checks.

The good envelopes are stored once however often they are imported; a flipped bit, a
foreign key and a revoked sensor are each refused with their reason, and none of them is
stored.  The importer and the MQTT handler share `Ingest.store_envelope`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.store import Store
from sensor.cli import main as teiten
from tests.central_dataset import sensor_key
from wire.envelope import seal
from wire.keys import public_key_text
from wire.summary import PortRow, SourceRow, Summary, encode_summary

HOUR = 1_735_689_600  # 2025-01-01T00:00Z


def summary(sid: str, hour: int) -> bytes:
    s = Summary(
        sensor_id=sid, hour_start=hour, bucket_seconds=3600, darknet=("192.0.2.0/24",),
        packets=10, bytes=600, fragments=0, sources_distinct=1,
        sources_distinct_estimated=False, sources_overflow=0, destinations_overflow=0,
        ports=(PortRow(6, 23, 10, 600, 0, 1),), icmp_codes=(),
        sources=(SourceRow(bytes([1, 0, 16, 1]), 10, 600, hour * 10**6, hour * 10**6, 1, 1,
                           50, 0),),
        destinations=(), tcp_flags=(), ttl=(), sizes=(), fingerprints={}, backscatter={},
        malformed={}, health={})
    return encode_summary(s)


def envelope(sid: str, seq: int, key: Ed25519PrivateKey | None = None) -> bytes:
    hour = HOUR + 3600 * seq
    return seal(summary(sid, hour), sensor_id=sid, sequence=(1 << 32) + seq, hour_start=hour,
                created_us=(hour + 3600) * 10**6, key=key or sensor_key(sid))


def pub(sid: str) -> str:
    return public_key_text(sensor_key(sid).public_key())


def spool_name(env_seq: int) -> str:
    return f"{HOUR + 3600 * env_seq:016x}-{(1 << 32) + env_seq:016x}.tenv"


def run(argv: list[str], capsys: Any) -> tuple[int, dict[str, Any]]:
    rc = teiten(argv)
    out = capsys.readouterr().out
    return rc, json.loads(out)


def test_import_twice_and_the_bad_ones(tmp_path: Path, capsys: Any) -> None:
    keys = tmp_path / "sensors.toml"
    keys.write_text(
        f'[sensors.tokyo-01]\npublic_key = "{pub("tokyo-01")}"\n'
        f'[sensors.osaka-02]\npublic_key = "{pub("osaka-02")}"\n'
        "revoked = true\n")
    spool = tmp_path / "spool"
    (spool / "quarantine").mkdir(parents=True)
    for seq in range(5):
        (spool / spool_name(seq)).write_bytes(envelope("tokyo-01", seq))
    (spool / ".tmp-half.abc").write_bytes(b"partial")
    (spool / "quarantine" / spool_name(9)).write_bytes(b"never read")
    db = tmp_path / "central.db"
    argv = ["central", "import", str(spool), "--db", str(db), "--keys", str(keys), "--json"]

    rc, first = run(argv, capsys)
    assert rc == 0 and first["stored"] == 5 and first["rejected"] == 0, first
    rc, again = run(argv, capsys)
    assert rc == 0 and again["stored"] == 0 and again["duplicate"] == 5, again

    bad = tmp_path / "bad"
    bad.mkdir()
    flipped = bytearray(envelope("tokyo-01", 7))
    flipped[len(flipped) // 2] ^= 0x10
    (bad / "flipped.tenv").write_bytes(bytes(flipped))
    foreign = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
    (bad / "foreign.tenv").write_bytes(envelope("tokyo-01", 8, foreign))
    (bad / "revoked.tenv").write_bytes(envelope("osaka-02", 1))
    (bad / "good.tenv").write_bytes(envelope("tokyo-01", 6))
    rc, res = run(["central", "import", str(bad), str(spool / spool_name(0)), "--db", str(db),
                   "--keys", str(keys), "--json"], capsys)
    assert rc == 1
    assert res["stored"] == 1 and res["duplicate"] == 1 and res["rejected"] == 3
    why = {Path(r["path"]).name: r["reason"] for r in res["rejections"]}
    assert why["foreign.tenv"] == "bad_signature"
    assert why["revoked.tenv"] == "revoked"
    assert why["flipped.tenv"] in ("bad_signature", "malformed")
    with Store(db) as st:
        stored = [(s.sensor_id, s.sequence - (1 << 32)) for s in st.summaries()]
        assert stored == [("tokyo-01", i) for i in (0, 1, 2, 3, 4, 6)]
        reasons = sorted(r["reason"] for r in st.rejected())
        assert reasons == sorted(why.values())
        assert all(r["topic"].startswith("import:") for r in st.rejected())


def test_import_with_central_toml_and_text_output(tmp_path: Path, capsys: Any) -> None:
    keys = tmp_path / "sensors.toml"
    keys.write_text(
        f'[sensors.tokyo-01]\npublic_key = "{pub("tokyo-01")}"\n')
    conf = tmp_path / "central.toml"
    conf.write_text(f'[receiver]\nhost = "127.0.0.1"\ninsecure = true\n'
                    f'database = "{tmp_path / "c.db"}"\nsensors = "{keys}"\n')
    f = tmp_path / "one.tenv"
    f.write_bytes(envelope("tokyo-01", 1))
    assert teiten(["central", "import", str(f), "--config", str(conf)]) == 0
    assert "1 stored" in capsys.readouterr().out
    assert teiten(["central", "import", str(tmp_path / "nope"), "--config", str(conf)]) == 2

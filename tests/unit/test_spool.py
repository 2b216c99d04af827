"""Spool: ordering, bound and eviction reporting, quarantine, faults at the write boundary."""

from __future__ import annotations

import errno
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from sensor.cli import main
from sensor.edges import spool as spoolmod
from sensor.edges.sealer import Sealer, open_sealer, spool_summaries
from sensor.edges.sequence import SequenceAllocator
from sensor.edges.spool import Spool, SpoolFullError, SpoolWriteError, entry_name
from wire import envelope as ev
from wire.keys import Keyring, public_key_text
from wire.summary import decode_summary, encode_summary

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def _load_vectors_module() -> ModuleType:
    if "make_envelope_vectors" in sys.modules:
        return sys.modules["make_envelope_vectors"]
    spec = importlib.util.spec_from_file_location(
        "make_envelope_vectors", VECTORS / "make_envelope_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_envelope_vectors"] = module
    spec.loader.exec_module(module)
    return module


mv = _load_vectors_module()
KEY = mv.vector_key()
SID = mv.SENSOR_ID
H = mv.HOUR


def _envelope(hour: int, seq: int, sources: int = 20) -> bytes:
    data = encode_summary(mv.make_summary(hour_start=hour, sources=sources, seed=seq))
    return ev.seal(data, sensor_id=SID, sequence=seq, hour_start=hour,
                   created_us=hour * 1_000_000, key=KEY)


def test_entries_sort_by_hour_then_sequence(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    order = [(H + 7200, 1), (H, 2**40 + 5), (H, 3), (H + 3600, 2**63)]
    for hour, seq in order:
        spool.write(_envelope(hour, seq), hour, seq)
    got = [(e.hour_start, e.sequence) for e in spool.entries()]
    assert got == sorted(order)
    assert [e.name for e in spool.entries()] == sorted(e.name for e in spool.entries())
    entry = spool.entries()[0]
    assert ev.parse_envelope(spool.read(entry)).sequence == entry.sequence
    spool.remove(entry)
    spool.remove(entry)  # already gone is fine
    assert len(spool.entries()) == 3


def test_name_format() -> None:
    assert entry_name(1, 2) == "0000000000000001-0000000000000002.tenv"


def test_same_name_twice_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.write(_envelope(H, 1), H, 1)
    with pytest.raises(SpoolWriteError, match="reused"):
        spool.write(_envelope(H, 1), H, 1)


def test_bound_evicts_oldest_first_and_reports_it(tmp_path: Path) -> None:
    envs = [(H + 3600 * i, i, _envelope(H + 3600 * i, i)) for i in range(10)]
    size = max(len(e) for _, _, e in envs)
    spool = Spool(tmp_path, max_bytes=size * 4)
    for hour, seq, data in envs:
        spool.write(data, hour, seq)
        assert spool.total_bytes() <= spool.max_bytes
    kept = [e.sequence for e in spool.entries()]
    assert kept == list(range(10 - len(kept), 10)) and len(kept) >= 4
    health = spool.take_evictions()
    assert health["spool_evicted"] == 10 - len(kept)
    assert health["spool_evicted_hours"] == [H + 3600 * i for i in range(10 - len(kept))]
    assert spool.take_evictions()["spool_evicted"] == 0  # reset after taking


def test_eviction_report_survives_a_restart(tmp_path: Path) -> None:
    data = _envelope(H, 1)
    spool = Spool(tmp_path, max_bytes=len(data) + 10)
    spool.write(data, H, 1)
    spool.write(_envelope(H + 3600, 2), H + 3600, 2)
    again = Spool(tmp_path, max_bytes=len(data) + 10)
    assert again.take_evictions()["spool_evicted_hours"] == [H]
    assert Spool(tmp_path).take_evictions()["spool_evicted"] == 0


def test_envelope_larger_than_the_bound(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=100)
    with pytest.raises(SpoolFullError, match="raise the spool max_bytes"):
        spool.write(_envelope(H, 1), H, 1)


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[: len(d) // 2],  # torn by a power cut
        lambda d: b"",  # rename reached disk, data did not
        lambda d: b"\x00" * len(d),  # zero-filled blocks
        lambda d: d + b"junk",
    ],
    ids=["truncated", "empty", "zeros", "trailing"],
)
def test_corrupt_entries_are_quarantined_and_reported(tmp_path: Path, damage: object) -> None:
    spool = Spool(tmp_path)
    good = spool.write(_envelope(H, 1), H, 1)
    bad = spool.write(_envelope(H, 2), H, 2)
    bad.path.write_bytes(damage(bad.path.read_bytes()))  # type: ignore[operator]
    (tmp_path / ".tmp-leftover.tenv.abcd").write_bytes(b"half")
    again = Spool(tmp_path)  # a restart scans
    assert [e.name for e in again.entries()] == [good.name]
    assert (tmp_path / "quarantine" / bad.name).exists()
    assert not (tmp_path / ".tmp-leftover.tenv.abcd").exists()
    health = again.take_evictions()
    assert health["spool_quarantined"] == 1
    assert health["spool_quarantined_files"] == [bad.name]


def test_entry_whose_name_disagrees_with_its_content_is_quarantined(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry = spool.write(_envelope(H, 1), H, 1)
    entry.path.rename(tmp_path / entry_name(H, 99))
    report = Spool(tmp_path, scan=False).scan()
    assert report.quarantined == (entry_name(H, 99),)


@pytest.mark.parametrize(
    "err,exc,match",
    [
        (errno.ENOSPC, SpoolFullError, "no space left"),
        (errno.EDQUOT, SpoolFullError, "no space left"),
        (errno.EIO, SpoolWriteError, "I/O error"),
    ],
)
def test_fault_at_the_write_boundary_keeps_what_was_spooled(
    tmp_path: Path, mocker: object, err: int, exc: type[Exception], match: str
) -> None:
    spool = Spool(tmp_path)
    first = spool.write(_envelope(H, 1), H, 1)
    real_write = os.write
    calls = {"n": 0}

    def failing_write(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:  # half of the data lands, then the disk fills up
            return real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(err, os.strerror(err))

    mocker.patch.object(spoolmod.os, "write", side_effect=failing_write)  # type: ignore[attr-defined]
    with pytest.raises(exc, match=match):
        spool.write(_envelope(H + 3600, 2), H + 3600, 2)
    mocker.stopall()  # type: ignore[attr-defined]
    assert [e.name for e in spool.entries()] == [first.name]
    assert sorted(os.listdir(tmp_path)) == sorted([first.name, "quarantine"])
    assert spool.read(first) == _envelope(H, 1)


def test_fault_in_fsync_is_a_write_error(tmp_path: Path, mocker: object) -> None:
    spool = Spool(tmp_path)
    mocker.patch.object(  # type: ignore[attr-defined]
        spoolmod.os, "fsync", side_effect=OSError(errno.EIO, "Input/output error")
    )
    with pytest.raises(SpoolWriteError):
        spool.write(_envelope(H, 1), H, 1)
    mocker.stopall()  # type: ignore[attr-defined]
    assert spool.entries() == []


def test_fault_after_the_rename_is_not_reported_as_lost(tmp_path: Path, mocker: object) -> None:
    """If only the directory fsync fails, the envelope is whole under its final name:
    reporting a failure would make the daemon seal the same hour twice."""
    from sensor.edges import durable

    spool = Spool(tmp_path)
    mocker.patch.object(  # type: ignore[attr-defined]
        durable, "fsync_dir", side_effect=OSError(errno.EIO, "Input/output error")
    )
    data = _envelope(H, 1)
    entry = spool.write(data, H, 1)
    mocker.stopall()  # type: ignore[attr-defined]
    assert [e.name for e in spool.entries()] == [entry.name]
    assert spool.read(entry) == data


def _keyring() -> Keyring:
    return Keyring.from_mapping({SID: public_key_text(KEY.public_key())})


def test_sealer_reports_evictions_in_the_next_summary(tmp_path: Path) -> None:
    probe = _envelope(H, 1, sources=20)
    spool = Spool(tmp_path / "spool", max_bytes=int(len(probe) * 2.5))
    with SequenceAllocator(tmp_path / "seq.state") as alloc:
        sealer = Sealer(KEY, spool, SID, alloc, clock=lambda: 1)
        for i in range(4):
            sealer.seal_and_spool(mv.make_summary(hour_start=H + 3600 * i, sources=20, seed=i))
    entries = spool.entries()
    assert sealer.sealed == 4 and len(entries) == 2
    ring = _keyring()
    healths = [ev.verify_envelope(spool.read(e), ring).summary.health for e in entries]
    # Hour 0 was evicted writing hour 2, reported in hour 3's summary; hour 1 evicted
    # writing hour 3 is pending for the next one.
    assert healths[0].get("spool_evicted", 0) == 0
    assert healths[1]["spool_evicted"] == 1 and healths[1]["spool_evicted_hours"] == [H]
    assert spool.pending_health()["spool_evicted_hours"] == [H + 3600]


def test_open_sealer_and_spool_summaries(tmp_path: Path) -> None:
    key_path = tmp_path / "k.pem"
    from sensor.edges.keys import generate_key

    key = generate_key(key_path)
    with open_sealer(key_path=key_path, spool_dir=tmp_path / "spool", sensor_id=SID) as sealer:
        sealer.seal_and_spool(mv.make_summary(hour_start=H))
        assert sealer.seq_alloc.path == tmp_path / "sequence.state"
    with SequenceAllocator(tmp_path / "other.state") as alloc:
        entries = spool_summaries(
            Spool(tmp_path / "spool"), key, SID,
            [(H + 3600, encode_summary(mv.make_summary(hour_start=H + 3600)))], alloc,
        )
    ring = Keyring.from_mapping({SID: key.public_key()})
    assert [ev.verify_envelope(e.path.read_bytes(), ring).envelope.hour_start
            for e in entries] == [H + 3600]
    assert len(Spool(tmp_path / "spool").entries()) == 2
    with pytest.raises(ValueError, match="teiten keygen"):
        open_sealer(key_path=tmp_path / "none.pem", spool_dir=tmp_path / "s", sensor_id=SID)


def test_cli_spool_list_and_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool = Spool(tmp_path / "spool")
    for i in range(3):
        spool.write(_envelope(H + 3600 * i, i), H + 3600 * i, i)
    keys = tmp_path / "sensors.toml"
    keys.write_text(f'[sensors.{SID}]\npublic_key = "{public_key_text(KEY.public_key())}"\n')
    assert main(["spool", "list", "--spool", str(tmp_path / "spool")]) == 0
    assert "3 envelopes" in capsys.readouterr().out
    assert main(["spool", "verify", "--spool", str(tmp_path / "spool"),
                 "--keys", str(keys), "--json"]) == 0
    assert '"bad": 0' in capsys.readouterr().out
    victim = spool.entries()[1].path
    victim.write_bytes(victim.read_bytes()[:-3] + b"xyz")  # signature damaged
    assert main(["spool", "verify", "--spool", str(tmp_path / "spool"), "--keys", str(keys)]) == 1
    assert "bad_signature" in capsys.readouterr().out
    assert main(["verify", str(victim), "--keys", str(keys)]) == 1
    assert main(["verify", str(spool.entries()[0].path), "--keys", str(keys), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"ok": true' in out
    verified = ev.verify_envelope(spool.read(spool.entries()[0]), _keyring())
    assert decode_summary(verified.summary_bytes).hour_start == H


def test_requeue_moves_whole_envelopes_back_and_quarantine_is_bounded(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 22)
    good = spool.write(_envelope(H, 1), H, 1)
    assert spool.quarantine(good.path, "unknown_version") is not None
    (spool.quarantine_path / "junk.tenv").write_bytes(b"not an envelope")
    assert spool.entries() == []
    assert main(["spool", "requeue", "--spool", str(tmp_path)]) == 0
    assert [e.name for e in spool.entries()] == [good.name]
    assert [p.name for p in spool.quarantined()] == ["junk.tenv"]
    assert not (spool.quarantine_path / f"{good.name}.reason").exists()
    # quarantine/ is bounded: the oldest files go first, and the deletions are counted
    spool.max_quarantine_bytes = 3 * len(_envelope(H, 2))
    for seq in range(2, 8):
        entry = spool.write(_envelope(H, seq), H, seq)
        spool.quarantine(entry.path, "bad_signature")
    left = [p.name for p in spool.quarantined()]
    assert entry_name(H, 7) in left and entry_name(H, 2) not in left
    assert spool.pending_health()["spool_quarantine_evicted"] >= 3

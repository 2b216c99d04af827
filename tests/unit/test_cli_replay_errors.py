"""`teiten replay --out DIR` when a summary cannot be written (a full disk, a directory gone):
a clear error that says what to do, the exit code 1, and the files written before it kept.
The write is made to fail at its boundary (sensor.edges.durable.write_durably)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from sensor.cli import main
from sensor.edges.durable import write_durably

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample.pcap"


def test_a_full_disk_is_a_clear_error_and_keeps_what_was_written(
        tmp_path: Path, mocker: MockerFixture, capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[str] = []

    def second_write_fails(path: str, data: bytes) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        write_durably(path, data)

    mocker.patch("sensor.cli.replay.write_durably", side_effect=second_write_fails)
    out = tmp_path / "out"
    assert main(["replay", str(SAMPLE), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"cannot write {calls[1]}: No space left on device" in err
    assert f"Free space in (or fix) --out {out}, then replay again" in err
    assert "the 1 written before it are kept" in err
    assert "Traceback" not in err
    assert [p.name for p in out.iterdir()] == [Path(calls[0]).name]


def test_the_first_write_failing_says_so_without_a_count(
        tmp_path: Path, mocker: MockerFixture, capsys: pytest.CaptureFixture[str]) -> None:
    mocker.patch("sensor.cli.replay.write_durably",
                 side_effect=OSError(errno.EROFS, "Read-only file system"))
    assert main(["replay", str(SAMPLE), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "Read-only file system" in err and "written before" not in err

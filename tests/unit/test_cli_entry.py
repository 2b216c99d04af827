"""sensor.cli.entry, the `teiten` program: a command that asks for it (`replay`) ends with
os._exit after flushing its output, every other command through sys.exit as usual."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

import sensor.cli as cli

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample.pcap"


class Exited(Exception):
    """Stands in for os._exit (which would end the test process)."""


class _ClosedPipe:
    """A stdout whose reader went away before the last flush."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        raise BrokenPipeError


def test_replay_flushes_then_exits_without_teardown(
        tmp_path: Path, mocker: MockerFixture, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    mocker.patch.object(sys, "argv", ["teiten", "replay", str(SAMPLE), "--out", str(out)])
    flushed = mocker.spy(sys.stdout, "flush")
    exit_now = mocker.patch.object(os, "_exit", side_effect=Exited)
    with pytest.raises(Exited):
        cli.entry()
    exit_now.assert_called_once_with(0)
    assert flushed.called
    assert sorted(p.name for p in out.iterdir()) == sorted(
        Path(line).name for line in capsys.readouterr().out.split())


def test_a_replay_error_keeps_its_code(mocker: MockerFixture, tmp_path: Path) -> None:
    mocker.patch.object(sys, "argv", ["teiten", "replay", str(tmp_path / "missing.pcap"),
                                      "--out", str(tmp_path / "out")])
    exit_now = mocker.patch.object(os, "_exit", side_effect=Exited)
    with pytest.raises(Exited):
        cli.entry()
    exit_now.assert_called_once_with(1)


def test_a_closed_stdout_does_not_change_the_code(mocker: MockerFixture, tmp_path: Path) -> None:
    mocker.patch.object(sys, "argv", ["teiten", "replay", str(SAMPLE), "--out",
                                      str(tmp_path / "out")])
    mocker.patch.object(sys, "stdout", _ClosedPipe())
    exit_now = mocker.patch.object(os, "_exit", side_effect=Exited)
    with pytest.raises(Exited):
        cli.entry()
    exit_now.assert_called_once_with(0)


def test_other_commands_exit_as_usual(mocker: MockerFixture) -> None:
    mocker.patch.object(sys, "argv", ["teiten", "show", "/nonexistent.summary"])
    exit_now = mocker.patch.object(os, "_exit", side_effect=Exited)
    with pytest.raises(SystemExit) as stopped:
        cli.entry()
    assert stopped.value.code == 1
    exit_now.assert_not_called()

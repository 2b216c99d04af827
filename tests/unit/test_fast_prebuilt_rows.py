"""Rows made ahead by feed_file's helper thread are the rows rows() makes (sensor/fast/_fast.c).

When an interval closes during a pipelined file replay, a helper thread makes its summary
rows while the counting goes on (Kernel.set_rows, prebuild_main); Interval.rows hands them
over when called with the same five objects, and makes them afresh otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sensor.core.bpf import darknet_filter
from sensor.core.limits import Limits
from sensor.core.linktypes import LINKTYPE_ETHERNET
from sensor.core.sketch import _estimate
from sensor.fast import kernel as fastpath
from wire.summary import DestinationRow, IcmpCodeRow, PortRow, SourceRow

pytestmark = pytest.mark.skipif(not fastpath.available(), reason="sensor.fast._fast is not built")

ROOT = Path(__file__).resolve().parents[2]
DARKNET = ["198.51.100.0/24", "2001:db8:dead::/48"]
ROWS = (PortRow, IcmpCodeRow, SourceRow, DestinationRow, _estimate)


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("prebuilt")
    pcap = tmp / "cap.pcap"
    subprocess.run(
        [sys.executable, "-m", "bench.synth", "--out", str(pcap), "--truth",
         str(tmp / "truth.json"), "--quiet", "--packets", "20000", "--hours", "4",
         "--seed", "31"],
        check=True, cwd=ROOT,
    )
    return pcap


def closed_intervals(pcap: Path, chunk: int, set_rows: bool) -> list[Any]:
    """Every interval of `pcap`, in order, fed through the pipelined reader."""
    assert fastpath._fast is not None
    kernel: Any = fastpath._fast.Kernel(LINKTYPE_ETHERNET, 3600, 2, Limits().values())
    kernel.set_rows(*ROWS) if set_rows else kernel.set_rows(None)
    reader = fastpath._fast.FileReader(str(pcap), pipeline=True)
    reader.setfilter(darknet_filter(DARKNET, vlan=True))
    out: list[Any] = []
    try:
        while True:
            n, closed = kernel.feed_file(reader, chunk)
            out += [iv for iv, _ in closed]
            if n < 0:
                break
    finally:
        reader.close()
    return out + [iv for iv, _ in kernel.flush(False)]


TWO_CORES = (os.cpu_count() or 1) > 1


@pytest.mark.parametrize("chunk", [777, 1 << 18])
def test_rows_made_ahead_equal_rows_made_afresh(capture: Path, chunk: int) -> None:
    ahead = closed_intervals(capture, chunk, set_rows=True)
    plain = closed_intervals(capture, chunk, set_rows=False)
    assert len(ahead) == len(plain) == 4
    assert not any(iv.prebuilt for iv in plain)
    # Intervals that closed while the file was read may have had their rows made ahead (the
    # pipeline, and so the helper, needs a second core; an interval that closes in the last
    # batch of a call, or while the helper works on another, is not); the last two are
    # flushed, after the counting.
    made_ahead = [iv.prebuilt for iv in ahead]
    assert made_ahead[2:] == [False, False]
    if chunk > 20_000:
        assert made_ahead[0] == TWO_CORES  # the first to close always is (one per call)
    for a, p in zip(ahead, plain, strict=True):
        rows = a.rows(*ROWS)
        assert not a.prebuilt  # handed over once
        assert rows == p.rows(*ROWS)
        assert [type(r) for r in rows[2]] == [SourceRow] * len(rows[2])
        assert rows == a.rows(*ROWS)  # made afresh the second time: the same rows


def test_rows_with_other_arguments_are_made_afresh(capture: Path) -> None:
    intervals = closed_intervals(capture, 1 << 18, set_rows=True)
    plain = closed_intervals(capture, 1 << 18, set_rows=False)
    for iv, p in zip(intervals, plain, strict=True):
        was_ahead = iv.prebuilt
        # Another estimate function: the rows made ahead do not apply, and stay.
        rows = iv.rows(PortRow, IcmpCodeRow, SourceRow, DestinationRow, _estimate_other)
        assert rows == p.rows(PortRow, IcmpCodeRow, SourceRow, DestinationRow, _estimate_other)
        assert iv.prebuilt == was_ahead
        assert iv.rows(*ROWS) == p.rows(*ROWS)


def _estimate_other(registers: bytes) -> int:
    return _estimate(registers)


def test_set_rows_checks_its_arguments() -> None:
    assert fastpath._fast is not None
    kernel: Any = fastpath._fast.Kernel(LINKTYPE_ETHERNET, 3600, 2, Limits().values())
    with pytest.raises(TypeError):
        kernel.set_rows(PortRow)
    kernel.set_rows(*ROWS)
    kernel.set_rows(None)

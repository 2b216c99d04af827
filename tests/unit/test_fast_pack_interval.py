"""Tables packed straight from the kernel (Interval.pack, encode_interval) are the bytes the
rows give (sensor/fast/src/packer.c: pack_interval), and `replay(..., encoded=True)` writes
what `replay()` + encode_summary write, on both paths.

`teiten replay --out` (no --key) takes this path: the summary files it writes are checked
against the reference's here, with the limits that turn every exact set into a sketch.
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
from sensor.core.sketch import _estimate
from sensor.edges.replay import EncodedSummary, replay
from sensor.fast import kernel as fastpath
from sensor.fast.pack import encode_interval, encode_summary
from wire.summary import DestinationRow, IcmpCodeRow, PortRow, SourceRow
from wire.summary import encode_summary as encode_summary_reference

pytestmark = pytest.mark.skipif(not fastpath.available(), reason="sensor.fast._fast is not built")

DARKNET = ["198.51.100.0/24", "2001:db8:dead::/48"]
ROOT = Path(__file__).resolve().parents[2]
SMALL = Limits(
    max_sources=300, max_destinations=40, source_exact_budget=400, source_exact_limit=6,
    source_big_p=8, source_max_big=4, source_small_p=5, port_exact_budget=500,
    port_exact_limit=20, port_big_p=9, port_max_big=3, port_small_p=4, overflow_sketch_p=10,
)
SKETCHY = Limits(source_exact_budget=3000, source_exact_limit=4, port_exact_budget=3000,
                 port_exact_limit=8)
KINDS = ("ports", "icmp_codes", "sources", "destinations")


def synth(tmp: Path, name: str, packets: int, hours: int, seed: int) -> Path:
    """A capture from bench.synth (its truth file beside it)."""
    pcap = tmp / f"{name}.pcap"
    subprocess.run(
        [sys.executable, "-m", "bench.synth", "--out", str(pcap), "--truth",
         str(tmp / f"{name}.json"), "--quiet", "--packets", str(packets), "--hours",
         str(hours), "--seed", str(seed)],
        check=True, cwd=ROOT,
    )
    return pcap


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth(tmp_path_factory.mktemp("pack"), "cap", 20000, 3, 21)


def closed_intervals(pcap: Path, limits: Limits | None, ahead: Any,
                     room: int | None = None) -> list[Any]:
    agg = fastpath.FastHourlyAggregation(1, limits=limits, ahead=ahead)
    if room is not None:
        agg.set_size_hint(room)
    assert fastpath._fast is not None
    reader = fastpath._fast.FileReader(str(pcap), pipeline=True)
    reader.setfilter(darknet_filter(DARKNET, vlan=True))
    closed = []
    while True:
        n, c = agg.feed_file(reader)
        closed += c
        if n < 0:
            break
    return closed + agg.flush()


@pytest.mark.parametrize("limits", [None, SMALL], ids=["default", "small"])
@pytest.mark.parametrize("ahead", [None, "pack"])
def test_packed_tables_are_the_rows_packed(capture: Path, limits: Limits | None,
                                           ahead: Any) -> None:
    assert fastpath._fast is not None
    closed = closed_intervals(capture, limits, ahead)
    assert len(closed) >= 3
    made_ahead = [c.aggregator._iv.prebuilt for c in closed]
    # the helper needs the pipeline, i.e. a second core; the first hour closes mid-file
    assert any(made_ahead) == (ahead == "pack" and (os.cpu_count() or 1) > 1)
    for c in closed:
        iv = c.aggregator._iv
        packed = iv.pack(_estimate)
        assert not iv.prebuilt  # handed over once
        assert packed is not None
        rows = iv.rows(PortRow, IcmpCodeRow, SourceRow, DestinationRow, _estimate)
        assert list(packed) == [fastpath._fast.pack_table(k, r) for k, r in zip(KINDS, rows,
                                                                               strict=True)]
        assert iv.pack(_estimate) == packed  # packed again from the same tables
        kw: dict[str, Any] = {"sensor_id": "pk", "darknet": DARKNET, "complete": c.complete,
                              "health": {"source": "test"}}
        summary = c.aggregator.finish(**kw)
        assert encode_interval(c.aggregator, **kw) == encode_summary_reference(summary)
    if limits is SMALL:  # the sketches were there to pack
        assert any(r.estimated for c in closed
                   for r in c.aggregator.finish(sensor_id="pk").sources)
    # The packer asks one estimate per sketch the rows hold: its scan, which stops at the
    # last sketch the interval counted, missed none.
    for c in closed:
        asked: list[bytes] = []

        def counting(registers: bytes, asked: list[bytes] = asked) -> int:
            asked.append(registers)
            return _estimate(registers)

        assert c.aggregator._iv.pack(counting) is not None
        s = c.aggregator.finish(sensor_id="pk")
        sketches = (sum(r.sources_estimated for r in s.ports)
                    + sum(bin(r.estimated).count("1") for r in s.sources))
        assert len(asked) == sketches


def test_estimate_that_is_not_an_int_gives_none_and_encode_interval_falls_back(
        capture: Path) -> None:
    c = closed_intervals(capture, SMALL, None)[0]
    assert c.aggregator._iv.pack(lambda registers: 1.5) is None
    assert encode_interval(c.aggregator, sensor_id="pk") == encode_summary_reference(
        c.aggregator.finish(sensor_id="pk"))


@pytest.mark.parametrize("limits", [None, SMALL, SKETCHY], ids=["default", "small", "sketchy"])
def test_packed_ahead_together_are_the_tables_packed_one_by_one(
        capture: Path, limits: Limits | None) -> None:
    """pack_ahead (the hours a flush closes, packed at once, a thread each) keeps for each
    interval what Interval.pack makes of it alone, and Interval.pack hands it over once."""
    assert fastpath._fast is not None
    closed = [c.aggregator for c in closed_intervals(capture, limits, None)]
    alone = [c._iv.pack(_estimate) for c in closed]
    assert len(closed) >= 3 and all(alone)
    fastpath.pack_ahead(closed)
    assert all(c._iv.prebuilt for c in closed)
    assert [c._iv.pack(_estimate) for c in closed] == alone
    assert not any(c._iv.prebuilt for c in closed)
    fastpath.pack_ahead(closed[:1])  # one interval: nothing to do side by side
    assert not closed[0]._iv.prebuilt
    # an estimate that is not an int: nothing kept, Interval.pack decides (None) as before
    not_an_int: Any = lambda registers: 1.5  # noqa: E731 (what a broken estimate returns)
    fastpath._fast.pack_ahead([c._iv for c in closed], not_an_int)
    if limits is not None:
        assert not all(c._iv.prebuilt for c in closed)
    # what is packed already (feed_file's helper, an earlier pack_ahead) is not packed again:
    # no estimate is asked for it
    asked: list[bytes] = []

    def counting(registers: bytes) -> int:
        asked.append(registers)
        return _estimate(registers)

    fastpath._fast.pack_ahead([c._iv for c in closed], counting)
    first = len(asked)
    fastpath._fast.pack_ahead([c._iv for c in closed], counting)
    assert len(asked) == first
    if limits is SKETCHY:
        assert first > 0
    assert [c._iv.pack(counting) for c in closed] == alone
    with pytest.raises(TypeError, match="Interval objects"):
        fastpath._fast.pack_ahead([closed[0]._iv, "not an interval"], _estimate)  # type: ignore[list-item]
    if limits is not None:  # an estimate that raises: the error, and the jobs freed
        def fails(registers: bytes) -> int:
            raise RuntimeError("estimate failed")

        with pytest.raises(RuntimeError, match="estimate failed"):
            fastpath._fast.pack_ahead([c._iv for c in closed], fails)
        assert [c._iv.pack(_estimate) for c in closed] == alone


@pytest.mark.parametrize("reference", [False, True], ids=["compiled", "reference"])
@pytest.mark.parametrize("limits", [None, SMALL], ids=["default", "small"])
def test_replay_encoded_writes_what_replay_writes(capture: Path, reference: bool,
                                                  limits: Limits | None) -> None:
    plain: list[bytes] = []
    encoded: list[EncodedSummary] = []
    replay([str(capture)], darknet=DARKNET, sensor_id="pk", limits=limits,
           emit=lambda s: plain.append(encode_summary(s)), reference=reference)
    replay([str(capture)], darknet=DARKNET, sensor_id="pk", limits=limits,
           emit=encoded.append, reference=reference, encoded=True)
    assert [e.data for e in encoded] == plain
    assert [e.sensor_id for e in encoded] == ["pk"] * len(plain)
    assert [e.hour_start for e in encoded] == sorted(e.hour_start for e in encoded)


def test_cli_summary_files_are_the_references(capture: Path, tmp_path: Path) -> None:
    for flag, out in (([], "fast"), (["--reference"], "ref")):
        subprocess.run([sys.executable, "-m", "sensor.cli", "replay", str(capture), "--out",
                        str(tmp_path / out), "--max-sources", "300", *flag],
                       check=True, capture_output=True, cwd=ROOT)
    fast = sorted((tmp_path / "fast").iterdir())
    assert fast and [f.name for f in fast] == sorted(f.name for f in (tmp_path / "ref").iterdir())
    for f in fast:
        assert f.read_bytes() == (tmp_path / "ref" / f.name).read_bytes()


# Enough sources in one hour that the sources table is packed on a second thread
# (packer.c: PARALLEL_SOURCES), with exact sets and with sketches.
PARALLEL_SOURCES = 8192


@pytest.mark.parametrize("limits", [None, SKETCHY], ids=["default", "sketchy"])
def test_big_sources_table_packed_on_a_second_thread_is_the_rows_packed(
        tmp_path: Path, limits: Limits | None) -> None:
    assert fastpath._fast is not None
    closed = closed_intervals(synth(tmp_path, "big", 90000, 1, 5), limits, None)
    big = [c for c in closed if len(c.aggregator.finish(sensor_id="pk").sources)
           >= PARALLEL_SOURCES]
    assert big, "the capture must give an hour with a big sources table"
    for c in big:
        iv = c.aggregator._iv
        rows = iv.rows(PortRow, IcmpCodeRow, SourceRow, DestinationRow, _estimate)
        want = [fastpath._fast.pack_table(k, r) for k, r in zip(KINDS, rows, strict=True)]
        for _ in range(3):  # the thread's part joins in the same place every time
            assert list(iv.pack(_estimate)) == want
    if limits is SKETCHY:
        assert any(r.estimated for c in big for r in c.aggregator.finish(sensor_id="pk").sources)


@pytest.mark.parametrize("limits", [None, SMALL], ids=["default", "small"])
@pytest.mark.parametrize("room", [0, 16, 5000, 1 << 17])
def test_size_hint_changes_room_not_counts(capture: Path, limits: Limits | None,
                                           room: int) -> None:
    """FastHourlyAggregation.set_size_hint sizes the first interval's tables (a replay: from
    the file's size); the summaries are the same whatever the room, the limits still cap."""
    def summaries(hint: int | None) -> list[bytes]:
        return [encode_interval(c.aggregator, sensor_id="pk")
                for c in closed_intervals(capture, limits, None, hint)]

    assert summaries(room) == summaries(None)


def test_first_hour_room_follows_the_files_size(tmp_path: Path) -> None:
    from sensor.edges.replay import FIRST_HOUR_ROOM, first_hour_room

    small, big = tmp_path / "small.pcap", tmp_path / "big.pcap"
    small.write_bytes(b"\0" * 10 * 1024)
    with big.open("wb") as fh:
        fh.truncate(1 << 30)  # sparse
    assert first_hour_room([str(small)]) == 10
    assert first_hour_room([str(small), str(small)]) == 20
    assert first_hour_room([str(big)]) == FIRST_HOUR_ROOM
    assert first_hour_room([str(tmp_path / "missing.pcap")]) == 0

"""The compiled path (sensor.fast._fast) and the reference path give the same summary bytes.

Generated captures with every link type and feature (VLAN/QinQ, SLL/SLL2, raw, null,
IPv6 extension headers, fragments, malformed frames, a short snap length) are replayed
through both paths; `encode_summary` of every hour must be equal.  Small `Limits` push
the source cap, the destination cap and every exact-set-to-sketch conversion; short
buckets and out-of-order files exercise routing and late packets.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.core.aggregate import HourlyAggregation
from sensor.core.decode import decode_frame
from sensor.core.limits import Limits
from sensor.core.linktypes import LINKTYPE_ETHERNET
from sensor.edges.replay import replay
from sensor.fast import kernel as fastpath
from sensor.fast.pack import encode_summary, encode_summary_fast
from wire.summary import decode_summary
from wire.summary import encode_summary as encode_summary_reference

pytestmark = pytest.mark.skipif(not fastpath.available(), reason="sensor.fast._fast is not built")

DARKNET = ["198.51.100.0/24", "2001:db8:dead::/48"]
ROOT = Path(__file__).resolve().parents[2]

SMALL = Limits(
    max_sources=300, max_destinations=40, source_exact_budget=400, source_exact_limit=6,
    source_big_p=8, source_max_big=4, source_small_p=5, port_exact_budget=500,
    port_exact_limit=20, port_big_p=9, port_max_big=3, port_small_p=4, overflow_sketch_p=10,
)


def generate(tmp: Path, *args: str) -> Path:
    pcap = tmp / ("cap.pcapng" if "pcapng" in args else "cap.pcap")
    subprocess.run(
        [sys.executable, "-m", "bench.synth", "--out", str(pcap), "--truth",
         str(tmp / "truth.json"), "--quiet", *args],
        check=True, cwd=ROOT,
    )
    return pcap


def both(paths: list[Path], **kw: object) -> tuple[list[bytes], list[bytes]]:
    out: dict[bool, list[bytes]] = {True: [], False: []}
    # The reference side is pure Python end to end (decode, aggregate, encoder); the fast
    # side is what `teiten replay` runs (C kernel, rows made in C, tables packed in C).
    encoders = {True: encode_summary_reference, False: encode_summary}
    for reference in (True, False):
        replay([str(p) for p in paths], darknet=DARKNET, sensor_id="eq",
               emit=lambda s, r=reference: out[r].append(encoders[r](s)),  # type: ignore[misc]
               reference=reference, **kw)  # type: ignore[arg-type]
    return out[True], out[False]


CASES = {
    "ethernet": ("--packets", "20000", "--hours", "3", "--seed", "11"),
    "pcapng": ("--packets", "6000", "--hours", "2", "--seed", "12", "--format", "pcapng"),
    "snaplen128": ("--packets", "8000", "--hours", "2", "--seed", "13", "--snaplen", "128"),
    "snaplen60": ("--packets", "5000", "--hours", "1", "--seed", "14", "--snaplen", "60"),
    "sll": ("--packets", "5000", "--hours", "2", "--seed", "15", "--linktype", "sll"),
    "sll2": ("--packets", "5000", "--hours", "2", "--seed", "16", "--linktype", "sll2"),
    "raw": ("--packets", "5000", "--hours", "2", "--seed", "17", "--linktype", "raw"),
    "null": ("--packets", "5000", "--hours", "2", "--seed", "18", "--linktype", "null"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_default_limits(tmp_path: Path, case: str) -> None:
    ref, fast = both([generate(tmp_path, *CASES[case])])
    assert len(ref) >= 1
    assert ref == fast


@pytest.mark.parametrize("case", ["ethernet", "snaplen128", "sll"])
def test_small_limits_overflow_and_sketches(tmp_path: Path, case: str) -> None:
    ref, fast = both([generate(tmp_path, *CASES[case])], limits=SMALL)
    assert ref == fast
    hours = [decode_summary(r) for r in ref]
    # Every bound was reached: the test compares overflow and sketch paths, not just counts.
    assert any(h.sources_overflow for h in hours)
    assert any(h.destinations_overflow for h in hours)
    assert any(r.sources_estimated for h in hours for r in h.ports)
    assert any(r.estimated for h in hours for r in h.sources)


def test_short_buckets_late_packets_and_file_order(tmp_path: Path) -> None:
    """Files replayed out of order: late packets, several intervals open and closing."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = generate(tmp_path / "a", "--packets", "4000", "--hours", "2", "--seed", "21",
                 "--start", "2026-11-02T03:00:00Z")
    b = generate(tmp_path / "b", "--packets", "4000", "--hours", "2", "--seed", "22",
                 "--linktype", "sll")
    ref, fast = both([a, b], bucket_seconds=600, limits=SMALL)
    assert ref == fast
    assert len(ref) > 4
    assert any(decode_summary(r).health.get("late_packets") for r in ref)


def test_sketch_conversions_with_default_budgets() -> None:
    """Frames fed directly: a heavy scanner outgrows its exact sets (big sketches)."""
    rng = random.Random(5)
    base = 1_800_000_000 * 1_000_000
    frames = []
    for i in range(30_000):
        src = bytes((11, 0, rng.randrange(4), rng.randrange(256))) if i % 3 else bytes(
            (12, 0, 0, 1))
        dst = bytes((198, 51, 100, rng.randrange(256)))
        ip = (bytes((0x45, 0, 0, 40)) + rng.randbytes(2) + b"\x00\x00\x40\x06\x00\x00" + src
              + dst)
        tcp = rng.randbytes(4) + rng.randbytes(8) + b"\x50\x02\xff\xff\x00\x00\x00\x00"
        frame = b"\x00" * 12 + b"\x08\x00" + ip + tcp
        frames.append((base + i * 1000, len(frame), frame))
    limits = Limits(source_exact_limit=50, port_exact_limit=100, source_exact_budget=5000)
    ref_agg = HourlyAggregation(limits=limits)
    for ts, wire, data in frames:
        ref_agg.add(decode_frame(ts, LINKTYPE_ETHERNET, data, wire))
    fast_agg = fastpath.FastHourlyAggregation(LINKTYPE_ETHERNET, limits=limits)
    for i in range(0, len(frames), 1000):
        assert fast_agg.feed_frames(frames[i : i + 1000]) == []
    ref = [encode_summary_reference(c.aggregator.finish(sensor_id="x", complete=c.complete))
           for c in ref_agg.flush()]
    fast = [encode_summary(c.aggregator.finish(sensor_id="x", complete=c.complete))
            for c in fast_agg.flush()]
    assert ref == fast
    (hour,) = [decode_summary(r) for r in ref]
    assert any(r.estimated for r in hour.sources)  # the heavy scanner's sets became sketches


def test_close_before_matches_reference() -> None:
    base = 1_800_000_000 * 1_000_000
    frame = bytes(12) + b"\x08\x00" + bytes((0x45, 0, 0, 28)) + bytes(4) + b"\x40\x11\x00\x00" \
        + bytes((1, 2, 3, 4, 198, 51, 100, 7)) + b"\x00\x35\x00\x35\x00\x08\x00\x00"
    frames = [(base + k * 600_000_000, len(frame), frame) for k in range(8)]
    ref_agg = HourlyAggregation(bucket_seconds=600, open_intervals=3)
    fast_agg = fastpath.FastHourlyAggregation(LINKTYPE_ETHERNET, 600, open_intervals=3)
    ref, fast = [], []
    for ts, wire, data in frames:
        ref += ref_agg.add(decode_frame(ts, LINKTYPE_ETHERNET, data, wire))
        fast += fast_agg.feed_frames([(ts, wire, data)])
    ref += ref_agg.close_before(base + 8 * 600_000_000)
    fast += fast_agg.close_before(base + 8 * 600_000_000)
    assert [(c.aggregator.hour_start, c.complete) for c in ref] == [
        (c.aggregator.hour_start, c.complete) for c in fast]
    assert [encode_summary_reference(c.aggregator.finish(sensor_id="x")) for c in ref] == [
        encode_summary(c.aggregator.finish(sensor_id="x")) for c in fast]


def test_fallback_when_the_extension_is_missing(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Without sensor.fast._fast, replay and encode_summary use the reference, same bytes."""
    pcap = generate(tmp_path, "--packets", "3000", "--hours", "1", "--seed", "31")
    fast: list[bytes] = []
    replay([str(pcap)], darknet=DARKNET, sensor_id="eq", emit=lambda s: fast.append(
        encode_summary(s)))
    monkeypatch.setattr(fastpath, "_fast", None)
    assert not fastpath.available()
    assert encode_summary_fast(decode_summary(fast[0])) is None
    ref: list[bytes] = []
    replay([str(pcap)], darknet=DARKNET, sensor_id="eq", emit=lambda s: ref.append(
        encode_summary(s)))
    assert ref == fast


# --- timestamps outside what a summary can hold (issue 11) -------------------------------

UDP_FRAME = (bytes(12) + b"\x08\x00" + bytes((0x45, 0, 0, 28)) + bytes(4) + b"\x40\x11\x00\x00"
             + bytes((1, 2, 3, 4, 198, 51, 100, 7)) + b"\x00\x35\x00\x35\x00\x08\x00\x00")
T = 1_800_000_000 * 1_000_000
# libpcap reads a pcap record's seconds as signed 32 bits: 0xffffffff is -1, 2**31 is -2**31.
WRAP_M1 = 0xFFFFFFFF * 1_000_000
WRAP_MIN = 0x80000000 * 1_000_000


def _frames(*stamps: int) -> list[tuple[int, int, bytes]]:
    return [(ts, len(UDP_FRAME), UDP_FRAME) for ts in stamps]


def _timestamp_cases(tmp: Path, pcap_writer) -> dict[str, tuple[Path, int]]:  # type: ignore[no-untyped-def]
    """Capture files and how many of their frames have a bad timestamp."""
    from sensor.core.decode import TS_MAX_US

    made = {
        # bad first (held until an hour opens), between hours, and last
        "pcap_signed": ("pcap", _frames(WRAP_M1, T, T + 10, WRAP_MIN, T + 3_600_000_000,
                                        WRAP_M1 + 999_999), 3),
        "pcap_nanosecond": ("ns", _frames(T, WRAP_M1 + 999_999, T + 5), 1),
        # pcapng stamps are 64-bit: the epoch and the last instant a summary holds are fine
        "pcapng_range": ("pcapng", _frames(0, 5, TS_MAX_US, TS_MAX_US + 1, 1 << 63,
                                           (1 << 64) - 1, T), 3),
        "only_bad": ("pcap", _frames(WRAP_M1, WRAP_MIN), 2),
    }
    out = {}
    for name, (kind, frames, bad) in made.items():
        path = tmp / (name + (".pcapng" if kind == "pcapng" else ".pcap"))
        if kind == "pcapng":
            pcap_writer.pcapng(path, frames)
        else:
            pcap_writer.pcap(path, frames, nanosecond=kind == "ns")
        out[name] = (path, bad)
    return out


@pytest.mark.parametrize("case", ["pcap_signed", "pcap_nanosecond", "pcapng_range", "only_bad"])
def test_bad_timestamps_same_bytes_and_every_summary_readable(
    tmp_path: Path, pcap_writer, case: str  # type: ignore[no-untyped-def]
) -> None:
    path, bad = _timestamp_cases(tmp_path, pcap_writer)[case]
    out: dict[bool, list[bytes]] = {True: [], False: []}
    stats = {}
    for reference in (True, False):
        stats[reference] = replay(
            [str(path)], darknet=DARKNET, sensor_id="eq", reference=reference,
            emit=lambda s, r=reference: out[r].append(  # type: ignore[misc]
                encode_summary_reference(s) if r else encode_summary(s)),
        )
    assert out[True] == out[False]
    assert stats[True] == stats[False]
    hours = [decode_summary(b) for b in out[True]]  # what `teiten show` reads
    assert sum(h.malformed.get("bad_timestamp", 0) for h in hours) + stats[True].uncounted == bad
    assert all(h.hour_start >= 0 for h in hours)
    if case == "only_bad":
        assert hours == [] and stats[True].uncounted == bad
    else:
        assert hours and stats[True].uncounted == 0


def test_bad_timestamps_from_a_live_capture_match_the_reference() -> None:
    """feed_frames (the daemon's compiled path) and HourlyAggregation.add agree at the edges
    of the range, including the 64-bit extremes."""
    from sensor.core.decode import TS_MAX_US

    assert fastpath._fast is not None and fastpath._fast.TS_MAX_US == TS_MAX_US
    stamps = [-1, -(1 << 63), T, 0, TS_MAX_US + 1, (1 << 63) - 1, T + 1, TS_MAX_US, -1]
    frames = _frames(*stamps)
    ref_agg = HourlyAggregation(bucket_seconds=600, open_intervals=3)
    fast_agg = fastpath.FastHourlyAggregation(LINKTYPE_ETHERNET, 600, open_intervals=3)
    ref, fast = [], []
    for ts, wire, data in frames[:2]:
        ref += ref_agg.add(decode_frame(ts, LINKTYPE_ETHERNET, data, wire))
    fast += fast_agg.feed_frames(frames[:2])
    assert ref_agg.pending_bad_timestamps == fast_agg.pending_bad_timestamps == 2
    for ts, wire, data in frames[2:]:
        ref += ref_agg.add(decode_frame(ts, LINKTYPE_ETHERNET, data, wire))
        fast += fast_agg.feed_frames([(ts, wire, data)])
    ref += ref_agg.flush()
    fast += fast_agg.flush()
    ref_bytes = [encode_summary_reference(c.aggregator.finish(sensor_id="x")) for c in ref]
    assert ref_bytes == [encode_summary(c.aggregator.finish(sensor_id="x")) for c in fast]
    hours = [decode_summary(b) for b in ref_bytes]
    assert sum(h.malformed.get("bad_timestamp", 0) for h in hours) == 5

"""sensor.edges.daemon without root: the timer's bucket closing, late packets, clock steps, gaps,
reload, driven with an injected clock and a scripted capture source.

Every test runs on both aggregation paths the daemon can use: the compiled kernel
(`sensor.fast._fast`, the default when it is built) and the pure-Python reference."""

from __future__ import annotations

import struct
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensor.core.decode import decode_frame
from sensor.edges.config import parse_config
from sensor.edges.daemon import Daemon
from sensor.edges.pcap import CaptureError, CaptureStats, Frame
from sensor.fast import kernel as fastpath
from tests.fakes import ManualClock

BUCKET = 2
T0 = 1_800_000_000  # a bucket boundary

CONFIG = f"""
[sensor]
id = "unit-01"
key = "/nonexistent/key"
[capture]
interface = "cap0"
darknet = ["198.51.100.0/24"]
timeout_ms = 50
reopen_min_s = 0.05
reopen_max_s = 0.1
[time]
wait_for_sync_s = 0
close_grace_s = 0.5
step_threshold_s = 1
[test]
bucket_seconds = {BUCKET}
"""


def frame(ts_us: int, port: int = 23) -> Frame:
    tcp = struct.pack("!HHIIBBHHH", 40000, port, 1, 0, 0x50, 0x02, 1024, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 7, 0, 64, 6, 0, bytes([203, 0, 113, 9]),
                     bytes([198, 51, 100, 9]))
    data = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp
    return Frame(ts_us, len(data), data)


def records(*ts: int) -> list[object]:
    return [decode_frame(t, 1, frame(t).data, frame(t).wire_len) for t in ts]


PATHS = [False, True] if fastpath.available() else [False]
COMPILED = {"on": False}


@pytest.fixture(autouse=True, params=PATHS, ids=lambda c: "compiled" if c else "reference")
def aggregation_path(request: pytest.FixtureRequest) -> Iterator[bool]:
    COMPILED["on"] = request.param
    yield request.param


def ingest(d: Daemon, *ts: int) -> None:
    """Frames as the capture thread hands them over (decoded by the daemon's own path)."""
    d._ingest([frame(t) for t in ts], 1, False)


def make(start_offset_s: float = 0.5, path: Path | None = None) -> tuple[Daemon, ManualClock]:
    cfg = parse_config(tomllib.loads(CONFIG))
    clock = ManualClock(int((T0 + start_offset_s) * 1e6))
    d = Daemon(cfg, clock=clock, config_path=path, compiled=COMPILED["on"])
    assert d.compiled is COMPILED["on"]
    return d, clock


def test_reference_records_filed_directly() -> None:
    """`_file` (the reference path's filing of decoded records) keeps working."""
    if COMPILED["on"]:
        return
    d, clock = make()
    d._file(records(int((T0 + 1) * 1e6)))
    clock.advance(BUCKET)
    (s0,) = d.close_due()
    assert s0.packets == 1


def test_timer_closes_empty_buckets_first_one_partial() -> None:
    d, clock = make()
    assert d.close_due() == []
    clock.advance(BUCKET)  # T0+2.5: bucket T0 ended 0.5 s ago
    (first,) = d.close_due()
    assert first.hour_start == T0 and first.packets == 0
    assert first.health["partial"] is True  # the daemon started inside it
    clock.advance(BUCKET)
    (second,) = d.close_due()
    assert second.hour_start == T0 + BUCKET and second.packets == 0
    assert second.health["partial"] is False
    assert second.health["capture_received"] == 0
    assert second.health["clock_synchronized"] is False


def test_packets_filed_by_timestamp_and_late_ones_counted_in_the_next_summary() -> None:
    d, clock = make()
    ingest(d, int((T0 + 1) * 1e6), int((T0 + 2.2) * 1e6))
    clock.advance(BUCKET)
    (s0,) = d.close_due()
    assert s0.packets == 1
    ingest(d, int((T0 + 1.9) * 1e6))  # its bucket is sealed: late
    clock.advance(BUCKET)
    (s1,) = d.close_due()
    assert s1.hour_start == T0 + BUCKET and s1.packets == 1
    assert s1.health["late_packets"] == 1


def test_sigterm_close_is_partial_and_complete_buckets_stay_complete() -> None:
    d, clock = make(start_offset_s=0.0)
    ingest(d, int((T0 + 0.5) * 1e6))
    clock.advance(BUCKET + 0.6)
    ingest(d, int((T0 + BUCKET + 0.5) * 1e6))
    final = d.close_due(final=True)
    assert [s.hour_start for s in final] == [T0, T0 + BUCKET]
    assert final[0].health["partial"] is False and final[0].packets == 1
    assert final[1].health["partial"] is True and final[1].packets == 1


def test_forward_step_is_reported_and_jumped_hours_are_not_complete() -> None:
    d, clock = make()
    d._check_clock()
    clock.advance(0.2)
    clock.wall += 10_000_000  # NTP steps the clock 10 s forward
    d._check_clock()
    out = d.close_due()
    assert len(out) == 5
    steps = [st for s in out for st in s.health.get("clock_steps", [])]
    assert steps and steps[0][1] == 10_000_000
    assert all(s.health["partial"] for s in out)  # never observed in full
    assert any(g[2] == "clock step" for s in out for g in s.health.get("capture_gaps", []))


def test_huge_step_fills_at_most_48_buckets() -> None:
    d, clock = make()
    d._check_clock()
    clock.wall += 86_400 * 1_000_000
    d._check_clock()
    out = d.close_due()
    assert len(out) == 48


def test_reload_refuses_a_bad_config_and_reopens_on_capture_changes(tmp_path: Path) -> None:
    p = tmp_path / "sensor.toml"
    p.write_text(CONFIG)
    d, _ = make(path=p)
    p.write_text(CONFIG.replace("timeout_ms = 50", "timeout_ms = -1"))
    d.reload()
    assert d.cfg.capture.timeout_ms == 50 and not d.reopen_requested.is_set()
    p.write_text(CONFIG.replace('["198.51.100.0/24"]', '["198.51.100.0/25"]'))
    d.reload()
    assert d.cfg.capture.darknet == ("198.51.100.0/25",) and d.reopen_requested.is_set()
    p.write_text(CONFIG.replace('id = "unit-01"', 'id = "unit-02"'))
    d.reload()
    assert d.cfg.sensor_id == "unit-01"  # needs a restart


def test_reload_limits_apply_to_buckets_opened_after_it(tmp_path: Path) -> None:
    p = tmp_path / "sensor.toml"
    p.write_text(CONFIG)
    d, clock = make(path=p)
    ingest(d, int((T0 + 1) * 1e6))  # bucket T0 opens with the default limits
    p.write_text(CONFIG + "[limits]\nmax_sources = 1\n")
    d.reload()
    assert d.aggregation.limits.max_sources == 1
    ingest(d, int((T0 + BUCKET + 0.1) * 1e6))  # bucket T0+2 opens with the new ones
    clock.advance(2 * BUCKET)
    s0, s1 = d.close_due()
    assert s0.sketch == d.cfg.limits.__class__().sketch_description()
    assert s1.sketch == d.cfg.limits.sketch_description()
    assert s0.sketch != s1.sketch


class Source:
    linktype = 1

    def __init__(self, frames: list[Frame]) -> None:
        self.frames = frames
        self.closed = False

    def next_batch(self, n: int = 4096) -> list[Frame]:
        if self.frames:
            out, self.frames = self.frames, []
            return out
        time.sleep(0.02)
        return []

    def stats(self) -> CaptureStats:
        return CaptureStats(7, 2, 1)

    def breakloop(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_capture_reopens_with_backoff_and_records_the_gap() -> None:
    d, clock = make()
    attempts: list[int] = []
    link = {"state": "up"}

    def open_source(*args: object, **kw: object) -> Source:
        attempts.append(1)
        if len(attempts) < 3:
            raise CaptureError("cap0", "cannot open: No such device exists")
        return Source([frame(int((T0 + 1) * 1e6))])

    d.open_source = open_source
    d.link_state = lambda iface: link["state"]
    t = threading.Thread(target=d._capture_loop, daemon=True)
    t.start()
    try:
        assert d._capture_open.wait(5)
        deadline = time.monotonic() + 5
        while d.frames < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        link["state"] = "down"
        time.sleep(0.5)
        link["state"] = "up"
        time.sleep(0.5)
    finally:
        d.stop()
        t.join(5)
    assert len(attempts) == 3
    clock.advance(BUCKET)
    (s,) = d.close_due()
    assert s.packets == 1
    reasons = [g[2] for g in s.health["capture_gaps"]]
    assert reasons[0].startswith("open:") and "link down" in reasons
    assert all(g[1] > 0 for g in s.health["capture_gaps"])  # every gap ended
    assert (s.health["capture_received"], s.health["capture_dropped"],
            s.health["capture_if_dropped"]) == (7, 2, 1)


def test_waits_for_clock_sync_then_captures() -> None:
    d, clock = make()
    d.cfg = parse_config(tomllib.loads(CONFIG.replace("wait_for_sync_s = 0",
                                                      "wait_for_sync_s = 5")))
    answers = iter([False, False, False, True])
    clock.synchronized = lambda: next(answers)  # type: ignore[method-assign]
    t = time.monotonic()
    d._wait_for_sync()
    assert 0.9 < time.monotonic() - t < 3


class FailingSealer:
    """A spool that fails (disk full) until told otherwise: a fault at the boundary."""

    def __init__(self) -> None:
        self.fail = True
        self.calls = 0
        self.sealed: list[object] = []

    def seal_and_spool(self, summary: object) -> None:
        self.calls += 1
        if self.fail:
            raise OSError(28, "No space left on device")
        self.sealed.append(summary)


def test_spool_failures_back_off_and_drops_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    import sensor.edges.daemon as daemon_mod

    monkeypatch.setattr(daemon_mod, "MAX_PENDING", 3)
    d, clock = make()
    sealer = FailingSealer()
    d.sealer = sealer  # type: ignore[assignment]
    clock.advance(BUCKET)
    d.seal(d.close_due())
    assert sealer.calls == 1
    d.seal([])  # within the backoff: no new attempt, no log flood
    assert sealer.calls == 1
    for _ in range(4):  # more closed buckets than the bound can keep
        clock.advance(BUCKET)
        d.seal(d.close_due(), force=True)
    assert len(d._pending) == 3
    sealer.fail = False
    clock.advance(BUCKET)
    d.seal(d.close_due(), force=True)
    assert d._pending == []
    dropped = [s.health.get("summaries_dropped", 0) for s in sealer.sealed]  # type: ignore[attr-defined]
    assert sum(dropped) == 2

"""sensor.edges.clock: step detection and the injected test clock; sensor.edges.sdnotify."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from sensor.edges.clock import OffsetClock, StepDetector, SystemClock, kernel_sync_state
from sensor.edges.sdnotify import notify, watchdog_interval_s
from tests.fakes import ManualClock


def test_steady_time_is_not_a_step() -> None:
    c = ManualClock(1_800_000_000_000_000, 5_000_000, synchronized=True)
    d = StepDetector(c, threshold_us=2_000_000)
    assert d.check() is None
    for _ in range(10):
        c.tick(250_000)
        c.wall += 1_000  # a slewing NTP adjusts slowly: not a step
        assert d.check() is None


def test_forward_and_backward_steps_are_reported_with_their_size() -> None:
    c = ManualClock(1_800_000_000_000_000, 5_000_000, synchronized=True)
    d = StepDetector(c, threshold_us=2_000_000)
    d.check()
    c.tick(100_000)
    c.wall += 3600_000_000
    step = d.check()
    assert step is not None and step.delta_us == 3600_000_000 and step.seen_us == c.wall
    c.tick(100_000)
    assert d.check() is None
    c.wall -= 5_000_000
    step = d.check()
    assert step is not None and step.delta_us == -5_000_000


def test_offset_clock_steps_and_maps_packet_times(tmp_path: Path) -> None:
    clk = OffsetClock(sync=False)
    d = StepDetector(clk, threshold_us=1_000_000)
    d.check()
    before = clk.wall_us()
    clk.step(60_000_000)
    assert clk.wall_us() - before >= 60_000_000
    assert d.check() is not None
    assert clk.adjust(10) == 60_000_010
    assert clk.synchronized() is False
    f = tmp_path / "offset"
    fc = OffsetClock(offset_file=f)
    assert abs(fc.wall_us() - time.time_ns() // 1000) < 1_000_000
    f.write_text("-120.5\n")
    assert fc.wall_us() - time.time_ns() // 1000 < -119_000_000
    assert fc.adjust(0) == -120_500_000


def test_system_clock_and_kernel_state() -> None:
    c = SystemClock()
    assert abs(c.wall_us() - time.time_ns() // 1000) < 1_000_000
    sync, _maxerror = kernel_sync_state()
    assert sync in (True, False)  # Linux always answers adjtimex
    assert c.synchronized() == sync
    assert c.adjust(123) == 123


def test_sdnotify_sends_datagrams(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(path)
        env = {"NOTIFY_SOCKET": path}
        assert notify("READY=1", env=env)
        assert srv.recv(100) == b"READY=1"
        assert notify("WATCHDOG=1", env=env)
        assert srv.recv(100) == b"WATCHDOG=1"
    assert not notify("READY=1", env={})
    assert watchdog_interval_s(env={"WATCHDOG_USEC": "10000000"}) == 5.0
    assert watchdog_interval_s(env={"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}) is None \
        or os.getpid() == 1
    assert watchdog_interval_s(env={}) is None


def test_sdnotify_never_blocks_on_a_socket_nobody_reads(tmp_path: Path) -> None:
    path = str(tmp_path / "stuck")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(path)
        t = time.monotonic()
        sent = [notify("WATCHDOG=1", env={"NOTIFY_SOCKET": path}) for _ in range(500)]
        assert time.monotonic() - t < 5
        assert sent[0] and not sent[-1]  # the queue filled up; later messages were dropped

"""`teiten run`: live capture, hourly aggregation, timer-closed buckets, sealing into the spool.

Strategy: three kinds of thread, one lock.
- The capture thread owns the libpcap handle: it reads batches (an idle interface returns
  an empty batch every `timeout_ms`) and files them under the lock: into the compiled
  kernel (`sensor.fast.kernel.FastHourlyAggregation.feed_frames`, decode and count in C, no
  Python object per packet) when `sensor.fast._fast` is built, else decoded in Python outside
  the lock and filed into `HourlyAggregation` (the reference path; same summaries).
  It watches the link (operstate) and reopens the capture with exponential backoff when
  the interface disappears; every stretch without capture is a *gap* with a start, an end
  and a reason.
- The main thread is the timer: every tick it looks for clock steps, asks the hour-closing
  state machine (`sensor.core.hours.HourCloser`, pure: every decision about which bucket
  closes when, gaps, late packets and health lives there) for the buckets that ended
  `close_grace_s` ago by the injected clock, seals the summaries into the spool, pings the
  systemd watchdog, and handles SIGHUP (reload) and SIGTERM (close the partial bucket,
  seal, exit).
- Background tasks (optional; `teiten run --uplink` passes the publisher,
  `uplink.mqtt.MqttUplink.run`) run in their own threads until the daemon stops; the
  uplink is better in its own process (`teiten uplink`, the `teiten-uplink.service`): it
  only reads and deletes spool files, so a stalled broker can never stall capture.  The
  daemon does not import the publisher: the command line composes them.

Nothing is dropped silently: a packet whose bucket was already sealed is counted as
`late_packets` in the next summary; capture statistics (received, dropped, interface
dropped) go into every summary's health map as deltas since the previous summary; gaps,
clock steps and the clock's synchronisation state are reported the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sensor import __version__
from sensor.core.aggregate import HourlyAggregation
from sensor.core.decode import decode_frame
from sensor.core.hours import HourCloser, Identity
from sensor.core.linktypes import LINKTYPE_ETHERNET
from sensor.edges.clock import Clock, OffsetClock, StepDetector, SystemClock
from sensor.edges.config import ConfigError, SensorConfig, load_config
from sensor.edges.pcap import CaptureError, FilterError, Frame, LiveSource, open_interface
from sensor.edges.sdnotify import notify, watchdog_interval_s
from sensor.edges.sealer import open_sealer
from sensor.fast import kernel as fastpath
from sensor.fast.kernel import FastHourlyAggregation
from wire.summary import Summary

log = logging.getLogger("teiten.daemon")

OpenSource = Callable[..., LiveSource]
# A task that runs beside capture until the event is set (e.g. the uplink's run loop).
Background = Callable[[threading.Event], None]
MAX_PENDING = 1024  # summaries waiting for a spool that cannot take them
SEAL_BACKOFF_MAX_S = 60.0  # longest wait between attempts to spool

def link_state(iface: str) -> str:
    """operstate of `iface` ("up", "down", "lowerlayerdown", ...) or "missing"."""
    try:
        with open(f"/sys/class/net/{iface}/operstate") as fh:
            return fh.read().strip()
    except OSError:
        return "missing"


def make_clock(cfg: SensorConfig) -> Clock:
    if cfg.test.clock_offset_file is not None:
        return OffsetClock(offset_file=cfg.test.clock_offset_file)
    return SystemClock()


class Daemon:
    """One sensor process.  `run()` blocks until `stop()` (or SIGTERM) and returns an exit code."""

    def __init__(
        self,
        cfg: SensorConfig,
        *,
        clock: Clock | None = None,
        sealer: Any = None,
        open_source: OpenSource = open_interface,
        link_state: Callable[[str], str] = link_state,
        background: Sequence[tuple[str, Background]] = (),
        config_path: Path | None = None,
        compiled: bool | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock or make_clock(cfg)
        self.sealer = sealer
        self.open_source = open_source
        self.link_state = link_state
        self.background = list(background)
        self.config_path = config_path or cfg.source
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.reload_requested = threading.Event()
        self.reopen_requested = threading.Event()
        bucket = cfg.bucket_seconds
        extra = int(cfg.time.close_grace_s // bucket) + 1
        # The compiled kernel when it is built (compiled=None), else the reference path.
        self.compiled = fastpath.available() if compiled is None else compiled
        self.aggregation: HourlyAggregation | FastHourlyAggregation
        if self.compiled:
            self.aggregation = FastHourlyAggregation(LINKTYPE_ETHERNET, bucket, cfg.limits,
                                                     open_intervals=1 + extra)
        else:
            self.aggregation = HourlyAggregation(bucket, cfg.limits, open_intervals=1 + extra)
        self.steps = StepDetector(self.clock, int(cfg.time.step_threshold_s * 1e6))
        # the hour-closing decisions, shared with the capture thread (under self.lock)
        self.hours = self._new_closer(cfg, self.clock.wall_us())
        self._totals = [0, 0, 0]  # received, dropped, if_dropped over every handle
        self._capture_heartbeat = time.monotonic()
        self._capture_open = threading.Event()
        self._pending: list[Summary] = []
        self._seal_backoff = 0.0
        self._seal_retry_at = 0.0
        self._capture_thread: threading.Thread | None = None
        self._handle_base = [0, 0, 0]
        self.src: LiveSource | None = None
        self._background_threads: list[threading.Thread] = []
        self._background_stop = threading.Event()
        self.responder: Any = None
        self.sealed: list[Summary] = []  # the last few, for tests and `--json`
        self.frames = 0

    @staticmethod
    def _identity(cfg: SensorConfig) -> Identity:
        return Identity(cfg.sensor_id, tuple(cfg.capture.darknet), __version__,
                        cfg.topology, cfg.capture.interface)

    @classmethod
    def _new_closer(cls, cfg: SensorConfig, start_us: int) -> HourCloser:
        return HourCloser(cls._identity(cfg), bucket_s=cfg.bucket_seconds,
                          close_grace_us=int(cfg.time.close_grace_s * 1e6),
                          limits=cfg.limits, start_us=start_us)

    # ------------------------------------------------------------------ gaps
    def _gap_begin(self, reason: str, at_us: int | None = None) -> None:
        with self.lock:
            opened = self.hours.gap_begin(
                reason, at_us if at_us is not None else self.clock.wall_us())
        if opened:
            log.warning("capture gap begins: %s", reason)

    def _gap_end(self) -> None:
        with self.lock:
            gap = self.hours.gap_end(self.clock.wall_us())
        if gap is not None and gap.end_us is not None:
            log.warning("capture gap ends after %.1f s", (gap.end_us - gap.start_us) / 1e6)

    # ------------------------------------------------------------------ capture thread
    def _open(self) -> LiveSource:
        c = self.cfg.capture
        return self.open_source(
            c.interface, self.cfg.bpf(), snaplen=c.snaplen, timeout_ms=c.timeout_ms,
            buffer_size=c.buffer_bytes, promisc=self.cfg.topology != "routed",
        )

    def _capture_loop(self) -> None:
        backoff = self.cfg.capture.reopen_min_s
        while not self.stopping.is_set():
            try:
                src = self._open()
            except FilterError as exc:
                log.error("%s; fix capture.extra_bpf and send SIGHUP", exc)
                self._gap_begin(f"filter: {exc.detail}")
                self._wait_reopen(backoff)
                continue
            except CaptureError as exc:
                self._gap_begin(f"open: {exc.detail}")
                log.warning("%s; retrying in %.1f s", exc, backoff)
                self._wait_reopen(backoff)
                backoff = min(backoff * 2, self.cfg.capture.reopen_max_s)
                continue
            self._capture_open.set()
            self.src = src
            try:
                backoff = self.cfg.capture.reopen_min_s
                self._read(src)
            finally:
                self._capture_open.clear()
                self._fold_stats(src, final=True)
                src.close()

    def _wait_reopen(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping.is_set() and time.monotonic() < end:
            self._capture_heartbeat = time.monotonic()
            if self.reopen_requested.is_set():
                self.reopen_requested.clear()
                return
            time.sleep(min(0.1, seconds))

    def _fold_stats(self, src: LiveSource, *, final: bool = False) -> None:
        """Keep running totals over every handle (a reopened handle counts from zero)."""
        try:
            st = src.stats()
        except CaptureError:
            return
        with self.lock:
            cur = (st.received, st.dropped, st.if_dropped)
            for i in range(3):
                self._totals[i] = self._handle_base[i] + cur[i]
            self.hours.capture_totals(*self._totals)
            if final:
                self._handle_base = list(self._totals)

    def _read(self, src: LiveSource) -> None:
        iface = self.cfg.capture.interface
        linktype = src.linktype
        shift = isinstance(self.clock, OffsetClock)
        link_checked = 0.0
        down = False
        with self.lock:
            was_gap = self.hours.in_gap()
        if was_gap and self.link_state(iface) in ("up", "unknown"):
            self._gap_end()
        while not self.stopping.is_set():
            if self.reopen_requested.is_set():
                self.reopen_requested.clear()
                log.info("reopening the capture (config reloaded)")
                return
            try:
                frames = src.next_batch(4096)
            except CaptureError as exc:
                self._gap_begin(f"read: {exc.detail}")
                log.warning("%s; reopening", exc)
                return
            now = time.monotonic()
            self._capture_heartbeat = now
            if frames:
                try:
                    self._ingest(frames, linktype, shift)
                except MemoryError:
                    # The frames are in the kernel (what it could not take is counted in
                    # health) and closed intervals stay there until the next handover: the
                    # capture thread must survive a moment of memory pressure.
                    log.error("out of memory handing over closed intervals; will retry")
            if now - link_checked >= 0.2:
                link_checked = now
                self._fold_stats(src)
                state = self.link_state(iface)
                if state == "missing":
                    self._gap_begin("interface disappeared")
                    return
                if state not in ("up", "unknown") and not down:
                    down = True
                    self._gap_begin(f"link {state}")
                elif state in ("up", "unknown") and down:
                    down = False
                    self._gap_end()
        self._drain(src, linktype, shift)

    def _drain(self, src: LiveSource, linktype: int, shift: bool) -> None:
        """On stop: file what the kernel already captured, so SIGTERM loses nothing."""
        # A stop request (breakloop) can leave one or two immediate empty returns behind,
        # and TPACKET_V3 hands over a partly filled ring block only when its timer
        # (timeout_ms) retires it: read until that has surely happened.
        deadline = time.monotonic() + 3 * self.cfg.capture.timeout_ms / 1000 + 0.1
        drained = 0
        for _ in range(1024):
            try:
                frames = src.next_batch(4096)
            except CaptureError:
                return
            if not frames:
                if time.monotonic() >= deadline:
                    break
                continue
            self._ingest(frames, linktype, shift)
            drained += len(frames)
        log.info("capture stopped; %d frames read after the stop request", drained)

    def _ingest(self, frames: list[Frame], linktype: int, shift: bool) -> None:
        """File a batch of captured frames (test clocks shift their timestamps first)."""
        if shift:
            adjust = self.clock.adjust
            frames = [Frame(adjust(f.ts_us), f.wire_len, f.data) for f in frames]
        agg = self.aggregation
        if isinstance(agg, FastHourlyAggregation):
            with self.lock:
                if agg.linktype != linktype:
                    agg.set_linktype(linktype)
                # Buckets already sealed stay sealed: their frames are counted late (in C,
                # as _file does below for the reference path).
                agg.set_horizon(self.hours.horizon_us)
                closed = agg.feed_frames(frames)
                self.hours.late(agg.take_before())
                if closed:
                    self.hours.capture_closed(closed)
        else:
            self._file([decode_frame(f.ts_us, linktype, f.data, f.wire_len) for f in frames])
        self.frames += len(frames)

    def _file(self, records: list[Any]) -> None:
        with self.lock:
            hours = self.hours
            horizon = hours.horizon_us
            agg = self.aggregation
            assert isinstance(agg, HourlyAggregation)
            for rec in records:
                if rec.ts_us < horizon:
                    hours.late(1)
                    continue
                closed = agg.add(rec)
                if closed:
                    hours.capture_closed(closed)
                    horizon = hours.horizon_us

    # ------------------------------------------------------------------ closing buckets
    def close_due(self, *, final: bool = False) -> list[Summary]:
        """Close every bucket that ended `close_grace_s` ago (all of them if `final`)."""
        now_us = self.clock.wall_us()
        sync = self.clock.synchronized()
        responder = self.responder
        with self.lock:
            return self.hours.close_due(
                now_us, self.aggregation, synchronized=sync, final=final,
                extra_health=responder.take_counters if responder is not None else None)

    def seal(self, summaries: list[Summary], *, force: bool = False) -> None:
        """Seal summaries into the spool; on failure keep them (bounded, the drops counted
        in the next summary's health) and retry with capped exponential backoff."""
        self._pending.extend(summaries)
        while len(self._pending) > MAX_PENDING:
            dropped = self._pending.pop(0)
            with self.lock:
                self.hours.summaries_dropped(1)
            log.error("dropped the summary of %s: %d summaries already wait for the spool",
                      dropped.hour_start, MAX_PENDING)
        if not force and time.monotonic() < self._seal_retry_at:
            return
        while self._pending:
            s = self._pending[0]
            if self.sealer is not None:
                try:
                    self.sealer.seal_and_spool(s)
                except Exception as exc:  # spool full, disk error: retry, never crash capture
                    self._seal_backoff = min(SEAL_BACKOFF_MAX_S, max(1.0, self._seal_backoff * 2))
                    self._seal_retry_at = time.monotonic() + self._seal_backoff
                    log.error("cannot spool the summary of %s: %s; retrying in %.0f s",
                              s.hour_start, exc, self._seal_backoff)
                    return
            self._seal_backoff = 0.0
            self._pending.pop(0)
            self.sealed.append(s)
            del self.sealed[:-16]
            log.info("sealed bucket %d: %d packets%s", s.hour_start, s.packets,
                     " (partial)" if s.health.get("partial") else "")

    # ------------------------------------------------------------------ main loop
    def _check_clock(self) -> None:
        step = self.steps.check()
        if step is not None:
            log.warning("clock step of %+.3f s detected", step.delta_us / 1e6)
            with self.lock:
                self.hours.clock_stepped(step.seen_us, step.delta_us)

    def _wait_for_sync(self) -> None:
        limit = self.cfg.time.wait_for_sync_s
        if limit <= 0 or self.clock.synchronized() is not False:
            return
        notify("STATUS=waiting for clock synchronisation")
        log.warning("clock not synchronised; waiting up to %.0f s before capturing", limit)
        end = time.monotonic() + limit
        while time.monotonic() < end and not self.stopping.is_set():
            if self.clock.synchronized():
                log.info("clock synchronised")
                return
            self._ping_watchdog(force=True)
            time.sleep(0.5)
        log.warning("clock still not synchronised: capturing, summaries marked unsynchronised")

    _wd_last = 0.0

    def _ping_watchdog(self, *, force: bool = False) -> None:
        interval = watchdog_interval_s()
        if interval is None:
            return
        now = time.monotonic()
        if now - self._wd_last < interval:
            return
        # only while the capture thread is alive and not stuck
        alive = self._capture_thread is None or self._capture_thread.is_alive()
        fresh = now - self._capture_heartbeat < max(5.0, 4 * self.cfg.capture.timeout_ms / 1e3)
        if force or (alive and fresh):
            notify("WATCHDOG=1")
            self._wd_last = now

    def reload(self) -> None:
        """SIGHUP: read the config again; apply what can change live, keep the rest."""
        if self.config_path is None:
            return
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            notify("STATUS=config reload refused; see the journal")
            return
        fixed = ("sensor_id", "key", "spool", "topology", "uplink", "test")
        changed = [n for n in fixed if getattr(new, n) != getattr(self.cfg, n)]
        if changed:
            log.warning("reload: %s need a restart (`systemctl restart teiten-sensor`); "
                        "kept the running values", ", ".join(changed))
            new = dataclasses.replace(new, **{n: getattr(self.cfg, n) for n in fixed})
        with self.lock:
            try:
                self.aggregation.limits = new.limits
            except (ValueError, OverflowError) as exc:  # config check bounds them; be safe
                log.error("reload: limits refused (%s); keeping the running ones", exc)
                new = dataclasses.replace(new, limits=self.cfg.limits)
            self.hours.reloaded()
        reopen = new.capture != self.cfg.capture
        self.cfg = new
        with self.lock:
            self.hours.identity = self._identity(new)
            self.hours.limits = new.limits
            self.hours.close_grace_us = int(new.time.close_grace_s * 1e6)
        if reopen:
            self.reopen_requested.set()
            src = self.src
            if src is not None:
                with contextlib.suppress(Exception):
                    src.breakloop()
        log.info("config reloaded%s", " (capture reopened)" if reopen else "")

    def stop(self) -> None:
        self.stopping.set()
        src = self.src
        if src is not None:
            with contextlib.suppress(Exception):
                src.breakloop()

    def start_background(self) -> None:
        for name, task in self.background:
            t = threading.Thread(target=task, args=(self._background_stop,), name=name,
                                 daemon=True)
            t.start()
            self._background_threads.append(t)

    def run(self, *, install_signals: bool = True, tick_s: float | None = None) -> int:
        if install_signals:
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
            signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())
        if os.geteuid() == 0:
            log.warning("running as root: the unit runs the sensor as user teiten with only "
                        "CAP_NET_RAW (board/rpi/teiten-sensor.service)")
        if self.cfg.bucket_seconds != 3600:
            log.warning("test-only bucket of %d s in use", self.cfg.bucket_seconds)
        self.start_background()
        self._wait_for_sync()
        with self.lock:
            self.hours.started(self.clock.wall_us())
        self.steps.check()
        if self.cfg.responder.enabled:
            # optional (off by default): the ARP/NDP responder and its raw socket
            from sensor.edges.responder import Responder

            self.responder = Responder.from_config(self.cfg)
            self.responder.start()
        self._capture_thread = threading.Thread(target=self._capture_loop, name="capture",
                                                daemon=True)
        self._capture_thread.start()
        self._capture_open.wait(timeout=5)
        notify(f"READY=1\nSTATUS=capturing on {self.cfg.capture.interface}")
        log.info("capturing on %s (%s), bucket %d s", self.cfg.capture.interface,
                 self.cfg.topology, self.cfg.bucket_seconds)
        tick = tick_s if tick_s is not None else min(0.25, self.cfg.bucket_seconds / 8)
        try:
            while not self.stopping.is_set():
                if self.reload_requested.is_set():
                    self.reload_requested.clear()
                    self.reload()
                self._check_clock()
                self.seal(self.close_due())
                self._ping_watchdog()
                self.stopping.wait(tick)
        finally:
            notify("STOPPING=1")
            self.stop()
            if self._capture_thread is not None:
                self._capture_thread.join(timeout=10)
            if self.responder is not None:
                self.responder.stop()
            self.seal(self.close_due(final=True), force=True)
            self._background_stop.set()
            for t in self._background_threads:
                t.join(timeout=5)
            if self.sealer is not None:
                self.sealer.close()
        if self._pending:
            log.error("%d summaries could not be spooled before exit", len(self._pending))
            return 1
        return 0


def open_daemon(cfg: SensorConfig, *, background: Sequence[tuple[str, Background]] = (),
                clock: Clock | None = None) -> Daemon:
    """Phase two: bind the key, spool and sequence state, then build the daemon."""
    problems = cfg.check_files()
    if problems:
        raise ConfigError(problems, str(cfg.source or "config"))
    clk = clock or make_clock(cfg)
    sealer = open_sealer(
        key_path=cfg.key, spool_dir=cfg.spool.path, sensor_id=cfg.sensor_id,
        state_path=cfg.spool.state_path, max_bytes=cfg.spool.max_bytes, clock=clk.wall_us,
    )
    return Daemon(cfg, clock=clk, sealer=sealer, background=background)

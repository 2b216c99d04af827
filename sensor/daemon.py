"""`teiten run`: live capture, hourly aggregation, timer-closed buckets, sealing into the spool.

Strategy: three kinds of thread, one lock.
- The capture thread owns the libpcap handle: it reads batches (an idle interface returns
  an empty batch every `timeout_ms`) and files them under the lock: into the compiled
  kernel (`sensor.fastpath.FastHourlyAggregation.feed_frames`, decode and count in C, no
  Python object per packet) when `sensor._fast` is built, else decoded in Python outside
  the lock and filed into `HourlyAggregation` (the reference path; same summaries).
  It watches the link (operstate) and reopens the capture with exponential backoff when
  the interface disappears; every stretch without capture is a *gap* with a start, an end
  and a reason.
- The main thread is the timer: every tick it looks for clock steps, closes each bucket
  `close_grace_s` after the bucket ends (by the injected clock, never by packet arrival, so
  an empty bucket still yields a summary that says so), seals the summaries into the spool,
  pings the systemd watchdog, and handles SIGHUP (reload) and SIGTERM (close the partial
  bucket, seal, exit).
- The uplink (optional, `uplink.mqtt.MqttUplink`) runs in its own thread, or better in its
  own process (`teiten uplink`, the `teiten-uplink.service`): it only reads and deletes
  spool files, so a stalled broker can never stall capture.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sensor import __version__, fastpath
from sensor.aggregate import ClosedInterval, HourAggregator, HourlyAggregation, hour_of
from sensor.clock import Clock, OffsetClock, StepDetector, SystemClock
from sensor.config import ConfigError, SensorConfig, load_config
from sensor.decode import decode_frame
from sensor.fastpath import FastClosed, FastHourlyAggregation
from sensor.pcap import CaptureError, FilterError, Frame, LiveSource, open_interface
from sensor.records import LINKTYPE_ETHERNET
from sensor.sdnotify import notify, watchdog_interval_s
from sensor.summary import Summary

log = logging.getLogger("teiten.daemon")

OpenSource = Callable[..., LiveSource]
MAX_PENDING = 1024  # summaries waiting for a spool that cannot take them
SEAL_BACKOFF_MAX_S = 60.0  # longest wait between attempts to spool
MAX_GAPS = 256  # gap records kept for reporting (older ones are merged into a counter)
MAX_FILL = 48  # empty buckets written after a pause; beyond that, one gap record


@dataclasses.dataclass(slots=True)
class Gap:
    start_us: int
    end_us: int | None
    reason: str

    def as_list(self) -> list[Any]:
        return [self.start_us, self.end_us if self.end_us is not None else 0, self.reason]


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
        uplink: bool = False,
        config_path: Path | None = None,
        compiled: bool | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock or make_clock(cfg)
        self.sealer = sealer
        self.open_source = open_source
        self.link_state = link_state
        self.want_uplink = uplink
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
        # state shared with the capture thread (under self.lock)
        self._ready: list[ClosedInterval | FastClosed] = []  # closed by records far ahead
        self._closed_through = 0  # seconds: every bucket before this one is sealed
        self._late = 0
        self._totals = [0, 0, 0]  # received, dropped, if_dropped over every handle
        self._reported = [0, 0, 0]
        self._gaps: list[Gap] = []
        self._gaps_dropped = 0
        self._steps_pending: list[list[int]] = []
        self._unsynced_seen = False
        self._reloads = 0
        self._capture_heartbeat = time.monotonic()
        self._capture_open = threading.Event()
        self._pending: list[Summary] = []
        self._summaries_dropped = 0  # over MAX_PENDING: reported in the next health map
        self._seal_backoff = 0.0
        self._seal_retry_at = 0.0
        self._start_us = self.clock.wall_us()
        self._next_bucket: int | None = None  # start of the next bucket to seal
        self._capture_thread: threading.Thread | None = None
        self._handle_base = [0, 0, 0]
        self.src: LiveSource | None = None
        self._uplink_thread: threading.Thread | None = None
        self._uplink_stop = threading.Event()
        self.responder: Any = None
        self.sealed: list[Summary] = []  # the last few, for tests and `--json`
        self.frames = 0

    # ------------------------------------------------------------------ gaps
    def _gap_begin(self, reason: str, at_us: int | None = None) -> None:
        with self.lock:
            if self._gaps and self._gaps[-1].end_us is None:
                return
            self._gaps.append(Gap(at_us if at_us is not None else self.clock.wall_us(),
                                  None, reason))
            if len(self._gaps) > MAX_GAPS:
                self._gaps.pop(0)
                self._gaps_dropped += 1
        log.warning("capture gap begins: %s", reason)

    def _gap_end(self) -> None:
        with self.lock:
            if self._gaps and self._gaps[-1].end_us is None:
                self._gaps[-1].end_us = self.clock.wall_us()
                log.warning("capture gap ends after %.1f s",
                            (self._gaps[-1].end_us - self._gaps[-1].start_us) / 1e6)

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
            if final:
                self._handle_base = list(self._totals)

    def _read(self, src: LiveSource) -> None:
        iface = self.cfg.capture.interface
        linktype = src.linktype
        shift = isinstance(self.clock, OffsetClock)
        link_checked = 0.0
        down = False
        was_gap = bool(self._gaps and self._gaps[-1].end_us is None)
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
            bucket = self.cfg.bucket_seconds
            with self.lock:
                if agg.linktype != linktype:
                    agg.set_linktype(linktype)
                # Buckets already sealed stay sealed: their frames are counted late (in C,
                # as _file does below for the reference path).
                agg.set_horizon(self._closed_through * 1_000_000)
                closed = agg.feed_frames(frames)
                self._late += agg.take_before()
                if closed:
                    self._ready.extend(closed)
                    for c in closed:
                        end = c.aggregator.hour_start + bucket
                        self._closed_through = max(self._closed_through, end)
        else:
            self._file([decode_frame(f.ts_us, linktype, f.data, f.wire_len) for f in frames])
        self.frames += len(frames)

    def _file(self, records: list[Any]) -> None:
        bucket = self.cfg.bucket_seconds
        with self.lock:
            horizon = self._closed_through * 1_000_000
            agg = self.aggregation
            assert isinstance(agg, HourlyAggregation)
            for rec in records:
                if rec.ts_us < horizon:
                    self._late += 1
                    continue
                closed = agg.add(rec)
                if closed:
                    self._ready.extend(closed)
                    for c in closed:
                        end = c.aggregator.hour_start + bucket
                        self._closed_through = max(self._closed_through, end)
                    horizon = self._closed_through * 1_000_000

    # ------------------------------------------------------------------ closing buckets
    def _health(self, now_us: int, start: int, end: int) -> dict[str, Any]:
        sync = self.clock.synchronized()
        if sync is not True:
            self._unsynced_seen = True
        received, dropped, ifdropped = (
            t - r for t, r in zip(self._totals, self._reported, strict=True)
        )
        self._reported = list(self._totals)
        h: dict[str, Any] = {
            "software": __version__,
            "topology": self.cfg.topology,
            "interface": self.cfg.capture.interface,
            "capture_received": received,
            "capture_dropped": dropped,
            "capture_if_dropped": ifdropped,
            "clock_synchronized": bool(sync),
            "closed_us": now_us,
        }
        if sync is None:
            h["clock_sync_unknown"] = True
        gaps = [
            g for g in self._gaps
            if g.start_us < end * 1_000_000
            and (g.end_us is None or g.end_us > start * 1_000_000)
        ]
        if gaps:
            h["capture_gaps"] = [g.as_list() for g in gaps]
            total = 0
            for g in gaps:
                g_end = min(g.end_us if g.end_us is not None else now_us, end * 1_000_000)
                total += max(0, g_end - max(g.start_us, start * 1_000_000))
            h["capture_gap_us"] = total
        # prune gaps that ended before this bucket's end: they cannot touch later ones
        self._gaps = [g for g in self._gaps if g.end_us is None or g.end_us > end * 1_000_000]
        if self._gaps_dropped:
            h["capture_gaps_dropped"] = self._gaps_dropped
            self._gaps_dropped = 0
        if self._summaries_dropped:
            h["summaries_dropped"] = self._summaries_dropped
            self._summaries_dropped = 0
        if self._steps_pending:
            h["clock_steps"] = self._steps_pending
            self._steps_pending = []
        if self._reloads:
            h["config_reloads"] = self._reloads
            self._reloads = 0
        if self.responder is not None:
            h.update(self.responder.take_counters())
        return h

    def _stepped_over(self, start: int, end: int) -> bool:
        return any(g.reason == "clock step" and g.start_us < end * 1_000_000
                   and (g.end_us or 0) > start * 1_000_000 for g in self._gaps)

    def close_due(self, *, final: bool = False) -> list[Summary]:
        """Close every bucket that ended `close_grace_s` ago (all of them if `final`)."""
        bucket = self.cfg.bucket_seconds
        now_us = self.clock.wall_us()
        due_us = now_us - int(self.cfg.time.close_grace_s * 1e6)
        current = hour_of(now_us, bucket)
        out: list[Summary] = []
        with self.lock:
            if self._next_bucket is None:
                self._next_bucket = hour_of(self._start_us, bucket)
            closed = list(self._ready)
            self._ready.clear()
            closed += self.aggregation.close_before(due_us)
            if final:
                # the bucket in progress, partial; and anything ahead of the clock
                closed += self.aggregation.flush(complete=False)
            by_start: dict[int, ClosedInterval | FastClosed] = {
                c.aggregator.hour_start: c for c in closed
            }
            # the newest bucket that has ended (all of them, the current one too, if final)
            last = max([current, *by_start]) if final else hour_of(due_us, bucket) - bucket
            starts = set(by_start)
            if last >= self._next_bucket:
                fill = range(self._next_bucket, last + 1, bucket)
                if len(fill) > MAX_FILL:
                    # a long pause or a clock step forward: one gap record, not 10,000 empties
                    skipped_end = last - (MAX_FILL - 1) * bucket
                    self._gaps.append(Gap(self._next_bucket * 1_000_000,
                                          skipped_end * 1_000_000, "no buckets (clock step "
                                          "or pause)"))
                    fill = range(skipped_end, last + 1, bucket)
                starts.update(fill)
            now_s = now_us // 1_000_000
            for start in sorted(starts):
                c = by_start.get(start)
                agg = c.aggregator if c is not None else HourAggregator(
                    start, bucket, self.cfg.limits)
                # complete: the daemon ran from the bucket's start to its end
                complete = (start * 1_000_000 >= self._start_us and start + bucket <= now_s
                            and not self._stepped_over(start, start + bucket))
                if self._late:
                    agg.late += self._late
                    self._late = 0
                health = self._health(now_us, start, start + bucket)
                out.append(agg.finish(sensor_id=self.cfg.sensor_id,
                                      darknet=self.cfg.capture.darknet,
                                      complete=complete, health=health))
                self._closed_through = max(self._closed_through, start + bucket)
                self._next_bucket = max(self._next_bucket, start + bucket)
        return out

    def seal(self, summaries: list[Summary], *, force: bool = False) -> None:
        """Seal summaries into the spool; on failure keep them (bounded, the drops counted
        in the next summary's health) and retry with capped exponential backoff."""
        self._pending.extend(summaries)
        while len(self._pending) > MAX_PENDING:
            dropped = self._pending.pop(0)
            self._summaries_dropped += 1
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
                self._steps_pending.append([step.seen_us, step.delta_us])
                if step.delta_us > 0:
                    # the time jumped over was never observed: a gap, so the empty
                    # buckets sealed for it say so and are not marked complete
                    self._gaps.append(Gap(step.seen_us - step.delta_us, step.seen_us,
                                          "clock step"))
            # Back: sealed buckets stay sealed, and packets for them are counted late.
            # Forward: close_due fills (at most MAX_FILL) empty buckets, then records a gap.

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
            self._reloads += 1
        reopen = new.capture != self.cfg.capture
        self.cfg = new
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

    def start_uplink(self) -> None:
        if not self.want_uplink or self.cfg.uplink is None:
            return
        from sensor.spool import Spool
        from uplink.mqtt import MqttUplink

        up = MqttUplink(self.cfg.uplink, Spool(self.cfg.spool.path, self.cfg.spool.max_bytes,
                                               scan=False),
                        software_version=__version__)
        self._uplink_thread = threading.Thread(target=up.run, args=(self._uplink_stop,),
                                               name="uplink", daemon=True)
        self._uplink_thread.start()

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
        self.start_uplink()
        self._wait_for_sync()
        self._start_us = self.clock.wall_us()
        self.steps.check()
        if self.cfg.responder.enabled:
            from sensor.responder import Responder

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
            self._uplink_stop.set()
            if self._uplink_thread is not None:
                self._uplink_thread.join(timeout=5)
            if self.sealer is not None:
                self.sealer.close()
        if self._pending:
            log.error("%d summaries could not be spooled before exit", len(self._pending))
            return 1
        return 0


def open_daemon(cfg: SensorConfig, *, uplink: bool = False, clock: Clock | None = None) -> Daemon:
    """Phase two: bind the key, spool and sequence state, then build the daemon."""
    from uplink.sealer import open_sealer

    problems = cfg.check_files()
    if problems:
        raise ConfigError(problems, str(cfg.source or "config"))
    clk = clock or make_clock(cfg)
    sealer = open_sealer(
        key_path=cfg.key, spool_dir=cfg.spool.path, sensor_id=cfg.sensor_id,
        state_path=cfg.spool.state_path, max_bytes=cfg.spool.max_bytes, clock=clk.wall_us,
    )
    return Daemon(cfg, clock=clk, sealer=sealer, uplink=uplink)

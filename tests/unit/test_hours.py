"""The hour-closing state machine as scripted scenarios: no threads, sockets or real clock.

Each test plays events into `HourCloser` with explicit timestamps, the way the uplink
session's tests play a script, and reads the summaries it hands back.
"""

from __future__ import annotations

from sensor.core.aggregate import HourlyAggregation
from sensor.core.hours import HourCloser, Identity
from sensor.core.limits import Limits
from sensor.core.records import PROTO_TCP, PacketRecord

H = 3600
T0 = 1_735_689_600  # 2025-01-01T00:00:00Z
US = 1_000_000
GRACE_US = 5 * US
IDENT = Identity("lab-01", ("198.51.100.0/24",), "test", "routed", "eth1")


def closer(start_us: int, **kw: int) -> tuple[HourCloser, HourlyAggregation]:
    limits = Limits()
    return (HourCloser(IDENT, bucket_s=H, close_grace_us=GRACE_US, limits=limits,
                       start_us=start_us, **kw),
            HourlyAggregation(H, limits, open_intervals=2))


def syn(ts_us: int, src: int = 0xC0000201, dport: int = 23) -> PacketRecord:
    return PacketRecord(ts_us=ts_us, version=4, src=src, dst=0xC6336405, proto=PROTO_TCP,
                        ttl=64, ip_len=40, ip_id=1, sport=40000, dport=dport, tcp_flags=0x02)


def file(hc: HourCloser, agg: HourlyAggregation, *records: PacketRecord) -> None:
    """What the daemon's capture thread does with a batch."""
    for rec in records:
        if rec.ts_us < hc.horizon_us:
            hc.late(1)
            continue
        hc.capture_closed(agg.add(rec))


def test_nothing_closes_before_the_grace_period_ends() -> None:
    hc, agg = closer(T0 * US)
    file(hc, agg, syn(T0 * US + 10))
    assert hc.close_due((T0 + H) * US + GRACE_US - 1, agg, synchronized=True) == []
    [s] = hc.close_due((T0 + H) * US + GRACE_US, agg, synchronized=True)
    assert (s.hour_start, s.packets, s.health["partial"]) == (T0, 1, False)


def test_an_idle_hour_still_yields_a_summary_and_the_first_hour_is_partial() -> None:
    hc, agg = closer(T0 * US + 1800 * US)  # started half-way through the first hour
    out = hc.close_due((T0 + 2 * H) * US + GRACE_US, agg, synchronized=True)
    assert [(s.hour_start, s.packets, s.health["partial"]) for s in out] == [
        (T0, 0, True), (T0 + H, 0, False)]


def test_late_packets_are_counted_in_the_next_summary() -> None:
    hc, agg = closer(T0 * US)
    [first] = hc.close_due((T0 + H) * US + GRACE_US, agg, synchronized=True)
    assert hc.horizon_us == (T0 + H) * US
    file(hc, agg, syn(T0 * US + 99), syn((T0 + H) * US + 1))  # one for the sealed hour
    [second] = hc.close_due((T0 + 2 * H) * US + GRACE_US, agg, synchronized=True)
    assert "late_packets" not in first.health
    assert (second.packets, second.health["late_packets"]) == (1, 1)


def test_records_far_ahead_close_an_hour_before_the_timer_does() -> None:
    hc, agg = closer(T0 * US)
    file(hc, agg, syn(T0 * US + 1), syn((T0 + 2 * H) * US + 1))  # two hours ahead
    assert hc.horizon_us == (T0 + H) * US  # the first hour is sealed for the capture side
    out = hc.close_due((T0 + H) * US + GRACE_US, agg, synchronized=True)
    assert [(s.hour_start, s.packets) for s in out] == [(T0, 1)]


def test_a_gap_is_reported_with_its_length_in_every_bucket_it_touches() -> None:
    hc, agg = closer(T0 * US)
    assert hc.gap_begin("link down", (T0 + H - 60) * US)
    assert not hc.gap_begin("link down again", (T0 + H - 30) * US)  # one open gap at a time
    gap = hc.gap_end((T0 + H + 60) * US)
    assert gap is not None and gap.end_us == (T0 + H + 60) * US
    a, b = hc.close_due((T0 + 2 * H) * US + GRACE_US, agg, synchronized=True)
    assert a.health["capture_gap_us"] == 60 * US and b.health["capture_gap_us"] == 60 * US
    assert a.health["capture_gaps"] == [[(T0 + H - 60) * US, (T0 + H + 60) * US, "link down"]]
    [c] = hc.close_due((T0 + 3 * H) * US + GRACE_US, agg, synchronized=True)
    assert "capture_gaps" not in c.health  # pruned once it cannot touch a later bucket


def test_a_forward_clock_step_marks_the_jumped_hours_partial() -> None:
    hc, agg = closer(T0 * US)
    hc.clock_stepped((T0 + 3 * H) * US, 2 * H * US)  # seen at +3 h, jumped 2 h
    out = hc.close_due((T0 + 3 * H) * US + GRACE_US, agg, synchronized=True)
    assert [s.health["partial"] for s in out] == [False, True, True]
    assert out[0].health["clock_steps"] == [[(T0 + 3 * H) * US, 2 * H * US]]
    assert "clock_steps" not in out[1].health


def test_a_long_pause_is_one_gap_record_not_thousands_of_empty_summaries() -> None:
    hc, agg = closer(T0 * US, max_fill=4)
    out = hc.close_due((T0 + 1000 * H) * US + GRACE_US, agg, synchronized=True)
    assert [s.hour_start for s in out] == [T0 + k * H for k in range(996, 1000)]
    assert out[0].health["capture_gaps"][0][2] == "no buckets (clock step or pause)"


def test_final_close_seals_the_bucket_in_progress_as_partial() -> None:
    hc, agg = closer(T0 * US)
    file(hc, agg, syn(T0 * US + 5), syn(T0 * US + 6))
    [s] = hc.close_due(T0 * US + 600 * US, agg, synchronized=None, final=True)
    assert (s.hour_start, s.packets, s.health["partial"]) == (T0, 2, True)
    assert s.health["clock_sync_unknown"] is True


def test_health_carries_capture_deltas_and_one_shot_counters() -> None:
    hc, agg = closer(T0 * US)
    hc.capture_totals(100, 2, 1)
    hc.reloaded()
    hc.summaries_dropped(3)
    calls: list[int] = []

    def counters() -> dict[str, int]:
        calls.append(1)
        return {"responder_replies": 0}

    a, b = hc.close_due((T0 + 2 * H) * US + GRACE_US, agg, synchronized=False,
                        extra_health=counters)
    assert (a.health["capture_received"], a.health["capture_dropped"],
            a.health["capture_if_dropped"]) == (100, 2, 1)
    assert (a.health["config_reloads"], a.health["summaries_dropped"]) == (1, 3)
    assert b.health["capture_received"] == 0 and "config_reloads" not in b.health
    assert a.health["clock_synchronized"] is False and len(calls) == 2
    hc.capture_totals(150, 2, 1)
    [c] = hc.close_due((T0 + 3 * H) * US + GRACE_US, agg, synchronized=True)
    assert c.health["capture_received"] == 50
    assert (c.sensor_id, c.health["interface"]) == ("lab-01", "eth1")

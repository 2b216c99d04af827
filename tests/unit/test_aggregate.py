"""Aggregator: interval routing, bounds and what they count."""

from __future__ import annotations

from sensor.core.aggregate import HourAggregator, HourlyAggregation, hour_of
from sensor.core.limits import Limits
from sensor.core.records import Malformed, PacketRecord

H = 1_800_000_000 - 1_800_000_000 % 3600  # an hour start
BLOCK = 0xC6336400  # 198.51.100.0


def syn(ts_s: float, src: int, dport: int = 23, dst: int = BLOCK + 1) -> PacketRecord:
    return PacketRecord(int(ts_s * 1_000_000), 4, src, dst, 6, 64, 40, 1, sport=1000,
                        dport=dport, tcp_flags=0x02, tcp_seq=5)


def test_source_cap_counts_overflow_everywhere_else() -> None:
    agg = HourAggregator(H, limits=Limits(max_sources=10))
    for i in range(25):
        agg.add(syn(H + i, src=0x0A000000 + i, dport=80))
    s = agg.finish(sensor_id="t")
    assert len(s.sources) == 10
    assert s.sources_overflow == 15
    assert s.packets == 25 and sum(r.packets for r in s.ports) == 25
    (port,) = s.ports
    assert port.sources == 25 and not port.sources_estimated  # per-port counts stay exact
    assert s.sources_distinct_estimated and 20 <= s.sources_distinct <= 30


def test_destination_cap_counts_overflow() -> None:
    agg = HourAggregator(H, limits=Limits(max_destinations=3))
    for i in range(5):
        agg.add(syn(H, src=1, dst=BLOCK + i))
    s = agg.finish(sensor_id="t")
    assert len(s.destinations) == 3 and s.destinations_overflow == 2


def test_distinct_counts_exact_below_budget_then_estimated_and_flagged() -> None:
    lim = Limits(source_exact_budget=200, port_exact_budget=50)
    agg = HourAggregator(H, limits=lim)
    for port in range(300):  # one source sweeping 300 ports on 300 addresses
        agg.add(syn(H, src=7, dport=port, dst=BLOCK + port % 256))
    for src in range(100):
        agg.add(syn(H, src=1000 + src, dport=23))
    s = agg.finish(sensor_id="t")
    sweeper = next(r for r in s.sources if r.address == (7).to_bytes(4, "big"))
    assert sweeper.estimated  # past the budget: flagged, roughly right
    assert 200 <= sweeper.ports <= 400
    p23 = next(r for r in s.ports if r.port == 23)
    assert p23.sources_estimated and 70 <= p23.sources <= 140
    small = HourAggregator(H)
    for port in range(300):
        small.add(syn(H, src=7, dport=port, dst=BLOCK + port % 256))
    exact = small.finish(sensor_id="t").sources[0]
    assert (exact.ports, exact.destinations, exact.estimated) == (300, 256, 0)


def test_hourly_routing_late_and_partial() -> None:
    agg = HourlyAggregation()
    closed = []
    closed += agg.add(syn(H + 10, 1))
    closed += agg.add(syn(H + 3600 + 5, 1))
    closed += agg.add(syn(H + 20, 1))  # out of order, its hour is still open
    closed += agg.add(syn(H + 7200 + 1, 1))  # opens a third hour: the first closes
    assert [c.aggregator.hour_start for c in closed] == [H]
    assert closed[0].aggregator.packets == 2 and not closed[0].complete  # capture began in it
    closed = agg.add(syn(H + 30, 1))  # too late for any open hour: counted, not dropped
    assert closed == []
    agg.add(Malformed(int((H + 7200 + 2) * 1e6), "tcp_truncated"))
    rest = agg.flush()
    late_hour = rest[0].aggregator.finish(sensor_id="t")
    assert late_hour.health["late_packets"] == 1
    last = rest[-1].aggregator.finish(sensor_id="t", complete=rest[-1].complete)
    assert last.malformed == {"tcp_truncated": 1} and last.health["partial"]


def test_close_before_closes_empty_and_finished_hours() -> None:
    agg = HourlyAggregation(bucket_seconds=60)
    agg.add(syn(H + 1, 1))
    assert agg.close_before((H + 59) * 1_000_000) == []
    (closed,) = agg.close_before((H + 61) * 1_000_000)
    assert closed.aggregator.hour_start == H
    assert hour_of((H + 61) * 1_000_000, 60) == H + 60


def test_first_ttl_first_last_seen_and_fingerprints() -> None:
    agg = HourAggregator(H)
    dst = BLOCK + 9
    agg.add(PacketRecord(H * 10**6 + 5, 4, 1, dst, 6, 50, 40, 0, sport=1, dport=23,
                         tcp_flags=0x02, tcp_seq=dst))
    agg.add(PacketRecord(H * 10**6 + 2, 4, 1, dst, 6, 60, 40, 54321, sport=1, dport=23,
                         tcp_flags=0x02, tcp_seq=0))
    s = agg.finish(sensor_id="t")
    (row,) = s.sources
    assert (row.first_us, row.last_us, row.ttl) == (H * 10**6 + 2, H * 10**6 + 5, 50)
    assert row.fingerprints == 0b011
    assert s.fingerprints == {"mirai": 1, "zmap": 1, "masscan": 0}


def test_bad_timestamps_counted_in_the_oldest_open_interval_never_routed() -> None:
    """A record timed outside what a summary can hold opens no interval: it is counted as
    malformed `bad_timestamp` in the oldest open one (as late packets are), or held until
    the first interval opens."""
    from sensor.core.decode import TS_MAX_US

    agg = HourlyAggregation()
    assert agg.add(Malformed(-1_000_000, "bad_timestamp")) == []
    assert agg.add(syn(-1, 1)) == []  # a record built elsewhere with a bad time: the same
    assert agg.pending_bad_timestamps == 2
    agg.add(syn(H + 10, 1))
    assert agg.pending_bad_timestamps == 0
    agg.add(syn(H + 3600 + 10, 1))
    agg.add(Malformed(TS_MAX_US + 1, "bad_timestamp"))
    hours = [c.aggregator.finish(sensor_id="t") for c in agg.flush()]
    assert [h.hour_start for h in hours] == [H, H + 3600]
    assert hours[0].malformed == {"bad_timestamp": 3} and hours[0].packets == 1
    assert hours[1].malformed == {}
    assert HourlyAggregation().add(Malformed(TS_MAX_US, "tcp_truncated")) == []  # in range

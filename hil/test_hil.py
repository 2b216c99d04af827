"""Issue 14's cases, on every target: a traffic mix with VLANs and the three scanner
families, uplink outage, power cuts, an invalid config at boot, a full spool, the rate
ramp.  Durations and repetitions are options (hil/conftest.py): --power-cuts,
--ramp-rates, --ramp-step-s.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest

from hil.lab import Board, add_truths, totals, wait_for
from hil.ramp import ramp
from hil.test_virtual_board import assert_counts, describe, wait_counted

pytestmark = pytest.mark.privileged


def test_exact_counts_ipv4_ipv6_vlan_and_three_scanner_families(routed_board: Board) -> None:
    b = routed_board.start()
    with b.scanner_capture() as frames:
        parts = [b.send("mix"), b.send("masscan", "--count", "6")]
        for args in ((), ("--qinq",)):
            parts.append(b.send("vlan", "--iface", b.lab.scanner_if, "--dst-mac",
                                b.target.capture_mac, "--port", "8100" if not args else "8200",
                                "--count", "12", *args))
        truth = add_truths(*parts)
        sent = time.time()
        ss = b.wait_sealed_after(sent + b.bucket_s, timeout=30)
    assert describe(frames) == [], "the sensor answered"
    assert set(truth["fingerprints"]) == {"mirai", "zmap", "masscan"}
    assert_counts(totals(ss), truth)
    assert totals(ss)["ports"]["tcp/8100"] == 12 and totals(ss)["ports"]["tcp/8200"] == 12


def test_uplink_outage_and_recovery_lose_nothing(routed_board: Board) -> None:
    b = routed_board.start()
    with b.scanner_capture() as frames:
        first = b.send("syn", "--port", "6000", "--count", "30")
        wait_counted(b, "tcp/6000", 30)
        b.kill_broker()
        during = [b.send("mix")]
        time.sleep(b.bucket_s)
        during.append(b.send("syn", "--port", "6001", "--count", "40", "--v6"))
        time.sleep(2 * b.bucket_s + 1)
        held = b.spool_count()
        assert held >= 2, f"central is away: sealed buckets wait in the spool ({held})"
        assert b.verify_spool()["bad"] == []
        b.start_broker()
        ss = wait_counted(b, "tcp/6001", 40, timeout=60)
    assert describe(frames) == [], "the sensor answered"
    assert_counts(totals(ss), add_truths(first, *during))
    # the uplink removes what central stored: the spool empties (but for a new bucket)
    wait_for(lambda: b.spool_count() <= 1, 30, "the spool to drain", step=0.5)


def test_power_cuts_keep_every_sealed_summary(routed_board: Board, hil_record: Any,
                                              request: pytest.FixtureRequest) -> None:
    """Each cut: a burst that central has counted (sealed), a burst in the bucket in
    progress, a cut at a random moment of the bucket (seal and fsync windows included),
    a boot.  Sealed summaries must all arrive exactly once and verify; the spool must never
    hold a corrupt file; what is lost is at most the bucket in progress."""
    n = int(request.config.getoption("--power-cuts"))
    b = routed_board.start()
    hil_record("power_cuts", n)
    rng = random.Random(14)
    survived = 0
    cuts: list[float] = []
    with b.scanner_capture() as frames:
        for i in range(n):
            sealed_port, open_port = 10000 + i, 20000 + i
            b.send("syn", "--port", str(sealed_port), "--count", "20")
            wait_counted(b, f"tcp/{sealed_port}", 20, timeout=60 + 2 * b.bucket_s)
            b.send("syn", "--port", str(open_port), "--count", "20")
            time.sleep(rng.uniform(0, b.bucket_s))
            b.power_cut()
            cuts.append(time.time())
            b.boot()
            v = b.verify_spool()
            assert v["bad"] == [] and v["quarantined"] == [], f"cut {i + 1}: {v}"
            survived += 1
            hil_record("power_cuts_survived", survived)
        last = b.send("syn", "--port", "29999", "--count", "20")
        ss = wait_counted(b, "tcp/29999", 20, timeout=60 + 2 * b.bucket_s)
    got = totals(ss)
    assert got["ports"]["tcp/29999"] == last["packets"]
    lost_buckets = 0
    for i in range(n):
        assert got["ports"].get(f"tcp/{10000 + i}") == 20, f"cut {i + 1}: a sealed bucket"
        in_progress = got["ports"].get(f"tcp/{20000 + i}", 0)
        assert 0 <= in_progress <= 20, f"cut {i + 1}: counted {in_progress} of 20 (twice?)"
        lost_buckets += in_progress < 20
    # one summary per bucket and sequence: nothing stored twice
    keys = [(s.hour_start, s.sequence) for s in ss]
    assert len(keys) == len(set(keys))
    per_bucket: dict[int, int] = {}
    for s in ss:
        per_bucket[s.hour_start] = per_bucket.get(s.hour_start, 0) + 1
    assert describe(frames) == [], "the sensor answered"
    hil_record("power_cut_lost_open_buckets", lost_buckets)


def test_invalid_config_at_boot_is_refused_and_the_last_good_one_runs(
        routed_board: Board) -> None:
    b = routed_board.start()
    first = b.send("syn", "--port", "6100", "--count", "20")
    wait_counted(b, "tcp/6100", 20)
    b.power_cut()
    good = b.config_text()
    # a darknet with host bits, and a block beyond it to capture: both must be refused
    bad = good.replace('darknet = ["198.51.100.0/24"', 'darknet = ["198.51.100.7/24"')
    assert bad != good
    with b.scanner_capture() as frames:
        booted = b.target.boot_with_config(bad)
        assert "capture.darknet[0]" in booted["error"], booted
        assert booted["started"], "the last good config keeps the board running"
        during = b.send("syn", "--port", "6101", "--count", "30")
        ss = wait_counted(b, "tcp/6101", 30, timeout=60 + 2 * b.bucket_s)
    assert describe(frames) == [], "the sensor answered"
    got = totals(ss)
    assert got["ports"]["tcp/6100"] == first["packets"]
    assert got["ports"]["tcp/6101"] == during["packets"]
    assert all(s.summary.health["topology"] == b.topology for s in ss)
    # the operator fixes the card: accepted, no error
    b.power_cut()
    assert b.target.boot_with_config(good)["error"] == ""
    after = b.send("syn", "--port", "6102", "--count", "20")
    assert totals(wait_counted(b, "tcp/6102", 20))["ports"]["tcp/6102"] == after["packets"]


def test_full_spool_evicts_the_oldest_and_reports_it(routed_board: Board) -> None:
    b = routed_board
    bound = 4096  # the smallest bound config check accepts: a few summaries
    b.write_config(spool_max_bytes=str(bound))
    b.start()
    b.kill_broker()
    deadline = time.monotonic() + 60 + 20 * b.bucket_s
    while _evicted(b) == 0:  # summaries with traffic fill the bound in a few buckets
        assert time.monotonic() < deadline, "the spool never evicted"
        b.send("mix")
        time.sleep(b.bucket_s / 2)
    b.send("syn", "--port", "6200", "--count", "10")
    time.sleep(b.bucket_s + b.target.grace_s + 0.5)
    snap = b.target.spool()
    assert sum(len(v) for v in snap.entries.values()) <= bound
    assert b.verify_spool()["bad"] == []
    kept = {(int(n[:16], 16), int(n[17:33], 16)) for n in snap.entries}
    b.start_broker()
    # every envelope the bound kept arrives, or (a seal after the snapshot, before the
    # broker was back, evicted it) is named as evicted: nothing vanishes unreported
    def accounted(x: list[Any]) -> list[Any] | None:
        gone = {h for s in x for h in s.summary.health.get("spool_evicted_hours", [])}
        stored = {(s.hour_start, s.sequence) for s in x}
        return x if all(k in stored or k[0] in gone for k in kept) and gone else None

    ss = wait_for(lambda: accounted(b.summaries()), 60,
                  "the kept envelopes and the eviction report", step=0.5)
    evicted = sorted({h for s in ss for h in s.summary.health.get("spool_evicted_hours", [])})
    assert max(s.hour_start for s in ss) >= max(kept)[0], "the newest arrived"
    assert sum(s.summary.health.get("spool_evicted", 0) for s in ss) >= len(evicted)
    stored = {s.hour_start for s in ss}
    assert not stored & set(evicted), "an evicted bucket cannot also have arrived"
    assert max(evicted) < max(h for h, _ in kept), "the oldest go first"


def _evicted(b: Board) -> int:
    health = b.target.spool().other.get("health.json")
    return int(json.loads(health).get("spool_evicted", 0)) if health else 0


def test_rate_ramp_finds_the_highest_lossless_rate(routed_board: Board, hil_record: Any,
                                                   request: pytest.FixtureRequest) -> None:
    b = routed_board.start()
    opt = str(request.config.getoption("--ramp-rates"))
    rates = [int(r) for r in opt.split(",")] if opt else list(b.target.ramp_rates)
    step_s = float(request.config.getoption("--ramp-step-s")) or b.target.ramp_step_s
    steps = ramp(b, rates, step_s)
    hil_record("ramp", steps)
    lossless = [s for s in steps if s["lossless"]]
    assert lossless, f"even {rates[0]} pps lost packets: {steps}"
    best = max(lossless, key=lambda s: s["achieved"])
    hil_record("lossless_pps", int(best["achieved"]))
    hil_record("cpu_us_per_packet", best["cpu_us_per_packet"])
    hil_record("ramp_ceiling", all(s["lossless"] for s in steps))

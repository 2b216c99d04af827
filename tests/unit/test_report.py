"""The quarterly report on the generated two-quarter data set (tests/central_dataset.py).

The data set goes through the real path (seal -> receiver ingest -> store), then the real
rollup with the fixture RIR files; the tables must match the plant exactly and the
lifetime shares the planned lifetimes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from central.cli.report import rollup
from central.report import (
    THRESHOLDS_H,
    compute_report,
    render_html,
    render_markdown,
    write_report,
)
from central.store import Store
from sensor.cli import main as teiten
from tests.central_dataset import (
    BACKSCATTER_PORT,
    CAPTURE_DROPS,
    CLOCK_TROUBLE,
    EXPECTED_REGIONS,
    EXPECTED_SERVICES,
    GAP,
    copy_db,
    rolled_up_dataset,
)

NOW_US = 1_767_225_600 * 1_000_000  # 2026-01-01: both quarters are over


@pytest.fixture(scope="module")
def dataset() -> Any:
    return rolled_up_dataset()


@pytest.fixture(scope="module")
def q1(dataset: Any) -> Any:
    with Store(dataset[0]) as store:
        return compute_report(store, "2025Q1", now_us=NOW_US)


def test_table1_top_services_match_the_plant(q1: Any, dataset: Any) -> None:
    truth = dataset[1]
    got = [((r.extra["proto"], r.extra["port"]), r.prev_rank) for r in q1.services]
    assert got == EXPECTED_SERVICES["2025Q1"]
    # 5555/tcp climbed from 6th to 5th; 3389/tcp left the top 5 (was 5th, now 6th)
    assert q1.services[4].key == "5555/tcp" and q1.services[4].prev_rank == 6
    assert [(r.key, r.prev_rank, r.rank) for r in q1.services_dropped] == [("3389/tcp", 5, 6)]
    # the backscatter port has the most packets of all, and is not in the table
    assert all(r.extra["port"] != BACKSCATTER_PORT for r in q1.services)
    bs_total = sum(truth.port_packets["2025Q1"][(6, BACKSCATTER_PORT)])
    assert bs_total > max(r.packets for r in q1.services)
    for r in q1.services:
        assert r.packets == truth.port_packets["2025Q1"][(r.extra["proto"], r.extra["port"])][0]
        assert sum(q1.service_daily[r.key]) == r.packets
    assert [r.name["en"] for r in q1.services] == ["telnet", "ssh", "microsoft-ds", "http-alt",
                                                  "personal-agent"]


def test_table2_top_regions_match_the_plant(q1: Any, dataset: Any) -> None:
    truth = dataset[1]
    assert [(r.key, r.prev_rank) for r in q1.regions] == EXPECTED_REGIONS["2025Q1"]
    assert [(r.key, r.prev_rank, r.rank) for r in q1.regions_dropped] == [("RU", 3, 7)]
    for r in q1.regions:
        assert r.packets == truth.region_packets["2025Q1"][r.key]
        assert sum(q1.region_daily[r.key]) == r.packets
    # ZZ has more packets than any country and is never ranked
    assert q1.unattributed_packets == truth.region_packets["2025Q1"]["ZZ"]
    assert q1.unattributed_packets > q1.regions[0].packets
    assert q1.regions[0].name == {"en": "United States", "ja": "米国"}


def test_lifetime_shares_match_the_generated_lifetimes(q1: Any, dataset: Any) -> None:
    truth = dataset[1]
    groups = {"all": None, "mirai": 1, "zmap": 2, "masscan": 4, "none": 0}
    for row in q1.lifetimes:
        want = truth.lifetimes("2025Q1", groups[row.group])
        assert list(zip(row.eligible, row.gone, strict=True)) == want, row.group
        assert row.too_late == [row.sources - e for e, _ in want]
    all_row = q1.lifetimes[0]
    assert all_row.sources == len(truth.sources["2025Q1"]) == 255
    assert all_row.too_late[2] > all_row.too_late[0] > 0  # counted, not hidden
    mirai = next(r for r in q1.lifetimes if r.group == "mirai")
    assert mirai.shares[2] is not None and mirai.shares[2] > 0.9  # most gone within a week


def test_shares_and_health(q1: Any, dataset: Any) -> None:
    truth = dataset[1]
    assert q1.has_previous and q1.has_data
    assert q1.backscatter == sum(v[1] for v in truth.port_packets["2025Q1"].values())
    assert q1.backscatter_kinds == {"tcp_synack": q1.backscatter}
    assert set(q1.fingerprints) == {"mirai", "zmap", "masscan"}
    health = {h.sensor: h for h in q1.health}
    gap_sensor, gap_start, gap_hours = GAP
    assert health[gap_sensor].missing_hours == gap_hours
    assert health[gap_sensor].missing_ranges == [(gap_start, gap_start + gap_hours * 3600)]
    assert health[gap_sensor].received_hours == 2160 - gap_hours
    assert health[CLOCK_TROUBLE[0]].clock_unsynced == CLOCK_TROUBLE[2]
    assert health[CAPTURE_DROPS[0]].capture_drops == CAPTURE_DROPS[2]
    keys = [k for k, _ in q1.notes]
    assert keys == ["sensor_gap", "sensor_clock", "sensor_drops"]


def test_the_report_says_when_data_are_missing(dataset: Any) -> None:
    with Store(dataset[0]) as store:
        q4 = compute_report(store, "2024Q4", now_us=NOW_US)
        empty = compute_report(store, "2023Q2", now_us=NOW_US)
        current = compute_report(store, "2025Q1", now_us=1_740_000_000 * 1_000_000)
    assert not q4.has_previous and ("no_previous", {"prev": "2024Q3"}) in q4.notes
    assert all(r.prev_rank is None for r in q4.services)
    md = render_markdown(q4, "en")
    assert "There are no data for 2024Q3" in md and "| n/a |" in md
    assert "2024Q3のデータがないため" in render_markdown(q4, "ja")
    assert not empty.has_data and empty.notes[0] == ("no_data", {"quarter": "2023Q2"})
    render_html(empty, "en")  # renders with no rows at all
    assert current.notes[0][0] == "unfinished"


def test_both_languages_come_from_the_same_numbers(q1: Any, tmp_path: Path) -> None:
    en = render_markdown(q1, "en")
    ja = render_markdown(q1, "ja")
    for r in q1.services + q1.regions:
        assert f"{r.packets:,}" in en and f"{r.packets:,}" in ja
    assert "Table 1" in en and "表1" in ja and "米国" in ja
    files = write_report(q1, tmp_path / "en", "en")
    names = sorted(p.name for p in files)
    assert names == ["fig1_services.png", "fig2_regions.png", "fig3_lifetimes.png",
                     "report.html", "report.json", "report.md"]
    for p in files:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (tmp_path / "en" / "report.html").read_text()
    assert "<script" not in html and 'src="fig1_services.png"' in html
    doc = json.loads((tmp_path / "en" / "report.json").read_text())
    assert doc["services"][0]["key"] == "23/tcp"
    assert len(doc["lifetimes"][0]["shares"]) == len(THRESHOLDS_H)


def test_sensor_filter(dataset: Any) -> None:
    with Store(dataset[0]) as store:
        one = compute_report(store, "2025Q1", sensors=["tokyo-01"], now_us=NOW_US)
    assert one.sensors == ["tokyo-01"] and one.sensor_filter
    assert [k for k, _ in one.notes] == ["sensor_clock", "sensor_drops"]
    assert "Source lifetimes are fleet-wide" in render_markdown(one, "en")


def _numbers(data: Any) -> dict[str, Any]:
    d = data.to_json()
    d.pop("generated_us")
    return d


def test_retention_forgets_addresses_and_keeps_the_aggregates(dataset: Any,
                                                              tmp_path: Path) -> None:
    db = copy_db(dataset[0], tmp_path / "c.db")
    with Store(db) as store:
        before = {q: _numbers(compute_report(store, q, now_us=NOW_US))
                  for q in ("2024Q4", "2025Q1")}
        assert store.count_addresses() == 2 * 255
        # keep 30 days counted from 2025-03-01: all of 2024Q4 and most of 2025Q1 go
        cutoff = (1_740_787_200 - 30 * 86400) * 1_000_000
        tokens = iter(i.to_bytes(8, "big") for i in range(1, 10**6))
        res = store.apply_retention(cutoff, lambda: next(tokens))
        assert res["sources_anonymised"] > 255
        left = store.count_addresses()
        assert 0 < left < 255
        after = {q: _numbers(compute_report(store, q, now_us=NOW_US))
                 for q in ("2024Q4", "2025Q1")}
        assert after == before
        # the pruned summaries no longer hold source addresses, and are still known
        sid = "tokyo-01"
        s = store.summaries(sid)[0]
        assert store.envelope(sid, s.sequence) == b""
        # everything is anonymised past the end of the data: still the same numbers
        store.apply_retention(NOW_US, lambda: next(tokens))
        assert store.count_addresses() == 0
        assert {q: _numbers(compute_report(store, q, now_us=NOW_US))
                for q in ("2024Q4", "2025Q1")} == before
        assert rollup(store) == 0


def test_a_resent_envelope_after_pruning_is_still_a_duplicate(dataset: Any,
                                                              tmp_path: Path) -> None:
    src, _ = dataset
    with Store(src) as store:
        first = store.summaries("osaka-02")[0]
        env = store.envelope("osaka-02", first.sequence)
    assert env
    db = copy_db(src, tmp_path / "d.db")
    with Store(db) as store:
        tokens = iter(i.to_bytes(8, "big") for i in range(1, 10**6))
        store.apply_retention(NOW_US, lambda: next(tokens))
        outcome = store.store_summary(sensor_id="osaka-02", sequence=first.sequence,
                                      hour_start=first.hour_start,
                                      created_us=first.created_us, envelope=env,
                                      summary=None)
        assert outcome == "duplicate"


def test_report_command(dataset: Any, tmp_path: Path, capsys: Any) -> None:
    db = copy_db(dataset[0], tmp_path / "e.db")
    rc = teiten(["central", "report", "--db", str(db), "--quarter", "2025q1",
                 "--out", str(tmp_path / "out"), "--lang", "ja", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in doc["regions"]] == [cc for cc, _ in EXPECTED_REGIONS["2025Q1"]]
    assert (tmp_path / "out" / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert teiten(["central", "report", "--db", str(db), "--quarter", "2025Q5",
                   "--out", str(tmp_path / "x")]) == 2
    assert "YYYYQn" in capsys.readouterr().err


def test_retention_bounds_the_operational_tables(tmp_path: Path) -> None:
    with Store(tmp_path / "ops.db") as store:
        for t in (1, 2, 3):
            store.store_status("s-1", b'{"state":"online"}', "online", received_us=t)
            store.store_health("s-1", b"{}", received_us=t)
            store.reject(reason="bad_signature", data=b"x", received_us=t)
        store.store_status("s-2", b'{"state":"offline"}', "offline", received_us=1)
        res = store.apply_retention(10, lambda: b"\0" * 8, run_us=20)
        assert (res["health_deleted"], res["rejected_deleted"]) == (3, 3)
        assert res["status_deleted"] == 2  # the newest status of each sensor stays
        assert sorted(store.latest_status()) == ["s-1", "s-2"]
        assert store.health_count() == 0 and store.rejected() == []

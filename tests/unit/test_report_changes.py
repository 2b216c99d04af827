"""The report on the demo's generated fleet: planted surges, rank changes and a labelled
population with a planted decay are found and stated, the same in English and Japanese.

Plants (central/demo_fleet.py): 443/tcp x5 from 2025-03-04; VN x4 from 2025-01-20; every
other service and the other regions flat (a weekly wave and noise); `asus-aicloud`, 400
addresses identified on 2025-02-10 that decay with a 24 h half-life (they also make TW's
packets jump from that day: the one unplanned surge, and a real one).
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

import pytest

from central import demo_fleet
from central.changes import WINDOW
from central.labels import HOUR_US, LabelSet
from central.report import (
    TOP,
    _date,
    _n,
    _pct,
    change_sentences,
    compute_report,
    render_markdown,
    write_report,
)
from central.rollup import DAY
from central.rollup_job import backfill_labels
from central.store import Store
from tests.central_dataset import copy_db
from tests.fleet_dataset import fleet_dataset

NOW_US = 1_767_225_600 * 1_000_000  # 2026-01-01


@pytest.fixture(scope="module")
def fleet() -> Any:
    return fleet_dataset()


@pytest.fixture(scope="module")
def q1(fleet: Any) -> Any:
    with Store(fleet[0]) as store:
        return compute_report(store, demo_fleet.REPORT_QUARTER, now_us=NOW_US)


def surges(data: Any, metric: str = "packets") -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for c in data.changes:
        if c.kind == "surge" and c.metric == metric:
            out.setdefault(c.key, []).append(c.surge)
    return out


def test_planted_surges_are_found_on_their_day(q1: Any, fleet: Any) -> None:
    plant = fleet[1]
    found = surges(q1)
    (s443,) = found["443/tcp"]
    assert abs(s443["start_day"] - plant.surge_service_day) <= 1
    assert s443["ratio"] == pytest.approx(demo_fleet.SURGE_SERVICE[2], rel=0.1)
    assert s443["ongoing"]
    (svn,) = found["VN"]
    assert abs(svn["start_day"] - plant.surge_region_day) <= 1
    assert svn["ratio"] == pytest.approx(demo_fleet.SURGE_REGION[2], rel=0.15)
    # the labelled population is TW's; nothing else surges: every flat control is quiet
    (stw,) = found["TW"]
    assert stw["start_day"] * DAY * 1_000_000 == plant.labels[0].identified_us
    assert set(found) == {"443/tcp", "VN", "TW"}
    assert set(surges(q1, "sources")) <= {"443/tcp", "VN", "TW"}
    watched = {c.key for c in q1.changes} | set(q1.service_daily) | set(q1.region_daily)
    assert "23/tcp" in watched and "CN" in watched


def test_rank_changes_and_entries_exits(q1: Any) -> None:
    got = {(c.subject, c.key, c.kind, c.rank, c.prev_rank) for c in q1.changes
           if c.kind != "surge"}
    assert ("service", "443/tcp", "entered", 5, 7) in got
    assert ("service", "8080/tcp", "left", 6, 5) in got
    assert ("region", "VN", "entered", 2, 8) in got
    assert ("region", "DE", "left", 6, 5) in got
    assert [r.key for r in q1.services] == ["23/tcp", "22/tcp", "445/tcp", "80/tcp", "443/tcp"]


def test_label_shares_match_the_plant_exactly(q1: Any, fleet: Any) -> None:
    plant = fleet[1]
    (lb,) = q1.labels
    n = len(plant.labels)
    assert lb.seen == n and lb.entries == n + len(plant.unseen)
    by = {lt["basis"]: lt for lt in lb.lifetimes}
    for h, j in ((24, 0), (48, 1), (168, 2)):
        t = h * HOUR_US
        ident = sum(p.last_us < p.identified_us + t for p in plant.labels)
        first = sum(p.last_us - p.first_us < t for p in plant.labels)
        assert by["identified"]["gone"][j] == ident and by["identified"]["eligible"][j] == n
        assert by["first_seen"]["gone"][j] == first and by["first_seen"]["eligible"][j] == n
    # the half-life of 24 h, measured from first sighting: 50 %, 75 %, 99.2 %
    assert by["first_seen"]["shares"] == [0.5, 0.75, 397 / 400]
    # the addresses seen per day: all 400 on the label date, then about half a day later
    day0 = q1.days.index(plant.labels[0].identified_us // 1_000_000 // DAY)
    assert lb.daily_seen[day0] == n and lb.daily_seen[day0 - 1] == 0
    assert sum(lb.daily_seen) == sum(
        len(range(p.first_us // (DAY * 10**6), p.last_us // (DAY * 10**6) + 1))
        for p in plant.labels)


def test_a_label_imported_after_the_rollup_is_backfilled_the_same(
        q1: Any, fleet: Any, tmp_path: Path) -> None:
    db = copy_db(fleet[0], tmp_path / "c.db")
    with Store(db) as store:
        entries = store.label_entries()
        store.save_label(demo_fleet.LABEL, entries[demo_fleet.LABEL], "again.csv")
        assert store.labels()[0]["addresses_seen"] == 0
        backfill_labels(store, LabelSet(entries))
        again = compute_report(store, demo_fleet.REPORT_QUARTER, now_us=NOW_US)
    assert again.labels[0].lifetimes == q1.labels[0].lifetimes
    assert again.labels[0].daily_seen == q1.labels[0].daily_seen
    assert again.labels[0].daily_packets == q1.labels[0].daily_packets


def test_sources_per_day_and_attribution(q1: Any) -> None:
    assert all(sum(v[i] for v in q1.service_daily.values()) > 0 for i in range(len(q1.days)))
    assert len(q1.days) == 90
    assert q1.unattributed_packets / q1.region_packets < 0.05
    for key in q1.region_sources_daily:
        assert all(q1.region_sources_daily[key]) and not any(q1.region_sources_estimated[key])
    assert set(q1.service_sources_daily) == {r.key for r in q1.services}
    md = render_markdown(q1, "ja")
    for r in q1.services + q1.regions:  # the tables' medians are in report.json's rows
        daily = (q1.service_sources_daily | q1.region_sources_daily)[r.key]
        assert r.extra["sources_median"] == round(statistics.median(daily))
        assert r.extra["sources_estimated_days"] == 0
        assert f"| {_n(r.extra['sources_median'])} | 正確 |" in md


NUM = re.compile(r"\d[\d,.]*\d|\d")


def _tokens(text: str) -> list[str]:
    return sorted(NUM.findall(text))


def test_both_languages_state_the_same_numbers_and_json_carries_them(
        q1: Any, tmp_path: Path) -> None:
    en, ja = change_sentences(q1, "en"), change_sentences(q1, "ja")
    assert len(en) == len(ja) > 0
    for a, b in zip(en, ja, strict=True):
        assert _tokens(a) == _tokens(b), (a, b)
    write_report(q1, tmp_path, "ja")
    doc = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    allowed = {str(WINDOW), str(TOP), *NUM.findall(doc["previous"])}
    for c in doc["changes"]:
        allowed |= {str(c["rank"]), str(c["prev_rank"]), *NUM.findall(c["key"])}
        sg = c["surge"]
        if sg:
            allowed |= {f"{sg['ratio']:.1f}", _n(round(sg["baseline"])), _n(sg["peak"]),
                        str(sg["end_day"] - sg["start_day"] + 1)}
            for d in ("start_day", "end_day", "peak_day"):
                allowed |= set(NUM.findall(_date(sg[d] * DAY)))
    for sentence in en + ja:
        assert set(NUM.findall(sentence)) <= allowed, sentence
    # the label paragraphs too: every number from report.json's label record
    for lb in doc["labels"]:
        nums = {_n(lb["entries"]), _n(lb["seen"]), _n(lb["packets"]),
                _n(max(lb["daily_seen"])), str(sum(1 for x in lb["daily_seen"] if x))}
        for lt in lb["lifetimes"]:
            nums |= {_n(lt["population"]), *(_pct(x) for x in lt["shares"])}
        for lang in ("en", "ja"):
            md = render_markdown(q1, lang)
            part = md[md.index(lb["label"] + ":"):]
            for x in nums:
                assert x in part, (lang, x)
    for lang in ("en", "ja"):
        md = render_markdown(q1, lang)
        assert "443/tcp" in md and "2025-03-04" in md and "5.0" in md


def test_retention_anonymises_labelled_addresses_and_keeps_the_numbers(
        q1: Any, fleet: Any, tmp_path: Path) -> None:
    import itertools

    db = copy_db(fleet[0], tmp_path / "c.db")
    counter = itertools.count()
    with Store(db) as store:
        res = store.apply_retention(1_767_225_600 * 1_000_000,
                                    lambda: next(counter).to_bytes(8, "big"))
        # every labelled address: 400 seen, 40 listed and never seen
        assert res["label_addresses_anonymised"] == 440
        assert store.label_entries()[demo_fleet.LABEL] == []  # tokens match nothing
        after = compute_report(store, demo_fleet.REPORT_QUARTER, now_us=NOW_US)
    assert after.labels[0].lifetimes == q1.labels[0].lifetimes
    assert after.labels[0].daily_seen == q1.labels[0].daily_seen
    assert after.changes == q1.changes

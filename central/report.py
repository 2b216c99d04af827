"""The quarterly observation report: numbers from the aggregates, then md, html and PNGs.

Strategy: two steps.  `compute_report(store, quarter, ...)` is the only part that reads
(through the store's report queries, which read the rollup aggregates, never the per-hour
summaries) and returns a `ReportData` of plain numbers.  Everything after that is pure
rendering of that one object: `render_markdown` and `render_html` in either language from
one table of labels (`LABELS`), `render_figures` with matplotlib's Agg backend, and
`report.json` (the numbers themselves).  So English and Japanese are two views of the same
numbers, and a test can check the numbers without parsing prose.

Definitions (docs/central.md, "Report"):
- services are (protocol, destination port) rows, ranked by packets that are not
  backscatter; ICMP rows are ranked by type; rows without a port (fragments) are not;
- regions are the country codes of the delegations that cover the sources (resolved at
  rollup); sources in no delegation and packets of sources past a sensor's cap are `ZZ`,
  shown as a share but never ranked;
- a previous-quarter rank is the rank in the previous quarter's full ranking;
- source lifetimes: of the sources first seen in the quarter (sightings are tracked within
  the quarter, fleet-wide), the share never seen T or more after the first sighting, for
  T = 24, 48, 168 hours; sources first seen less than T before the quarter's end cannot be
  told yet and are left out of that share and counted.
"""

from __future__ import annotations

import csv
import html
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, Final

from central.changes import WINDOW, Change, changes_for, rank_changes
from central.labels import label_lifetimes
from central.regions import UNKNOWN_CC
from central.rollup import (
    DAY,
    KMV_K,
    previous_quarter,
    quarter_bounds,
)
from wire.summary import FINGERPRINT_BITS, FINGERPRINTS, PROTO_NAMES

DATA_DIR: Final = Path(__file__).with_name("data")
TOP: Final = 5
THRESHOLDS_H: Final = (24, 48, 168)
FP_GROUPS: Final = (("all", None), *FINGERPRINT_BITS.items(), ("none", 0))
PROTO: Final = PROTO_NAMES
ICMP_TYPES: Final = {  # (proto, type) -> IANA ICMP type name
    (1, 0): "echo-reply", (1, 3): "destination-unreachable", (1, 8): "echo-request",
    (1, 11): "time-exceeded", (1, 13): "timestamp", (58, 128): "echo-request",
    (58, 129): "echo-reply", (58, 1): "destination-unreachable",
}
FIGURES: Final = ("fig1_services.png", "fig2_regions.png", "fig3_lifetimes.png",
                   "fig4_labels.png")
WATCH: Final = 10  # services and regions searched for surges: the top WATCH, and those
#                   that left the top TOP

LABELS: Final[dict[str, dict[str, str]]] = {
    "title": {"en": "Darknet observation report {quarter}",
              "ja": "ダークネット観測レポート {quarter}"},
    "period": {"en": "Period: {start} to {end} (UTC). Sensors: {sensors}. Generated {now}.",
               "ja": "期間: {start} 〜 {end} (UTC)。センサー: {sensors}。作成日時 {now}。"},
    "overview": {"en": "Overview", "ja": "概要"},
    "total": {"en": "{packets} packets received, of which {bs} ({bs_share}) backscatter.",
              "ja": "受信パケット {packets}、うちバックスキャッタ {bs} ({bs_share})。"},
    "t1": {"en": "Table 1: top {n} probed services by packets (backscatter excluded)",
           "ja": "表1: パケット数上位{n}のサービス (バックスキャッタを除く)"},
    "t2": {"en": "Table 2: top {n} source regions by packets",
           "ja": "表2: パケット数上位{n}の送信元地域"},
    "rank": {"en": "Rank", "ja": "順位"},
    "service": {"en": "Port/protocol", "ja": "ポート/プロトコル"},
    "svcname": {"en": "Service (IANA)", "ja": "サービス (IANA)"},
    "packets": {"en": "Packets", "ja": "パケット数"},
    "share": {"en": "Share", "ja": "割合"},
    "prev": {"en": "Previous quarter", "ja": "前四半期"},
    "cc": {"en": "Code", "ja": "コード"},
    "region": {"en": "Region", "ja": "地域"},
    "new": {"en": "new", "ja": "圏外"},
    "na": {"en": "n/a", "ja": "なし"},
    "dropped": {"en": "Left the top {n} since {prev}: {items}.",
                "ja": "{prev}の上位{n}から外れたもの: {items}。"},
    "dropped_item": {"en": "{label} (was {prev}, now {now})",
                     "ja": "{label} (前回{prev}位、今回{now})"},
    "now_out": {"en": "not seen", "ja": "観測なし"},
    "rank_n": {"en": "#{n}", "ja": "{n}位"},
    "unattributed": {"en": "{share} of source packets came from addresses in no delegation "
                           "or past a sensor's source cap (ZZ, not ranked).",
                     "ja": "送信元パケットの{share}はどの割り振りにも属さないアドレス、"
                           "またはセンサーの送信元上限を超えた分です (ZZ、順位対象外)。"},
    "f1": {"en": "Figure 1: daily packets and sources of the top {n} services",
           "ja": "図1: 上位{n}サービスの日別パケット数と送信元数"},
    "f2": {"en": "Figure 2: daily packets and distinct sources of the top {n} regions",
           "ja": "図2: 上位{n}地域の日別パケット数と送信元数"},
    "f3": {"en": "Figure 3: share of new sources no longer seen after 24, 48 and 168 hours",
           "ja": "図3: 初観測後24・48・168時間以降に観測されなくなった送信元の割合"},
    "life": {"en": "Source lifetimes", "ja": "送信元の活動期間"},
    "life_intro": {
        "en": "Of the {n} sources first seen in the quarter, the share no longer seen "
              "after each time. Sources first seen too close to the quarter's end to tell "
              "are left out of that share and counted.",
        "ja": "四半期内に初めて観測された送信元 {n} 件のうち、各時間以降に観測されなく"
              "なった割合。四半期末に近すぎて判定できない送信元は割合から除き、件数を示します。"},
    "group": {"en": "Fingerprint", "ja": "フィンガープリント"},
    "sources": {"en": "Sources", "ja": "送信元数"},
    "gone_after": {"en": "Gone after {h} h", "ja": "{h}時間で消失"},
    "too_late": {"en": "Too late to tell ({h} h)", "ja": "判定不能 ({h}時間)"},
    "g_all": {"en": "all", "ja": "全体"},
    "g_none": {"en": "no fingerprint", "ja": "なし"},
    "fp": {"en": "Scanner fingerprints and backscatter", "ja": "スキャナの特徴とバックスキャッタ"},
    "kind": {"en": "Kind", "ja": "種別"},
    "backscatter": {"en": "backscatter (all kinds)", "ja": "バックスキャッタ (全種別)"},
    "health": {"en": "Sensor health", "ja": "センサーの状態"},
    "sensor": {"en": "Sensor", "ja": "センサー"},
    "hours": {"en": "Hours received", "ja": "受信時間数"},
    "missing": {"en": "Hours missing", "ja": "欠測時間数"},
    "partial": {"en": "Partial hours", "ja": "不完全な時間"},
    "drops": {"en": "Capture drops", "ja": "キャプチャ欠落"},
    "clock": {"en": "Clock unsynchronised (h)", "ja": "時刻非同期 (時間)"},
    "evicted": {"en": "Evicted on the sensor", "ja": "センサー側で破棄"},
    "notes": {"en": "Missing data", "ja": "欠測について"},
    "no_notes": {"en": "No data are missing.", "ja": "欠測はありません。"},
    "no_previous": {"en": "There are no data for {prev}: previous-quarter ranks cannot be "
                          "given.",
                    "ja": "{prev}のデータがないため、前四半期の順位は示せません。"},
    "no_data": {"en": "There are no data for {quarter}.",
                "ja": "{quarter}のデータはありません。"},
    "sensor_gap": {"en": "{sensor}: {missing} of {expected} hours missing ({ranges}).",
                   "ja": "{sensor}: {expected}時間中{missing}時間が欠測 ({ranges})。"},
    "clone_suspected": {"en": "{sensor}: SUSPECTED CLONED CARD ({kinds}); its summaries are "
                        "kept as received, not merged (docs/enrolment.md).",
                        "ja": "{sensor}: SDカード複製の疑い ({kinds})。サマリーは受信した"
                        "まま保存され、統合されていません (docs/enrolment.md)。"},
    "sensor_none": {"en": "{sensor}: no summaries in this quarter.",
                    "ja": "{sensor}: この四半期のサマリーはありません。"},
    "sensor_partial": {"en": "{sensor}: {n} hours only partly captured.",
                       "ja": "{sensor}: {n}時間は一部のみ観測。"},
    "sensor_evicted": {"en": "{sensor}: {n} summaries were evicted from its spool and "
                             "will never arrive.",
                       "ja": "{sensor}: {n}件のサマリーがスプールから破棄され、届きません。"},
    "sensor_clock": {"en": "{sensor}: clock not synchronised for {n} hours.",
                     "ja": "{sensor}: {n}時間、時刻が同期していません。"},
    "sensor_drops": {"en": "{sensor}: {n} packets dropped by capture.",
                     "ja": "{sensor}: キャプチャで{n}パケット欠落。"},
    "unfinished": {"en": "The quarter is not over: data up to {until}.",
                   "ja": "四半期は終わっていません: {until}までのデータです。"},
    "no_regions": {"en": "No region data were imported: every source is unattributed.",
                   "ja": "地域データが取り込まれていないため、送信元は地域不明です。"},
    "lifetimes_fleet": {"en": "Source lifetimes are fleet-wide (all sensors).",
                        "ja": "送信元の活動期間は全センサーで集計しています。"},
    "changes": {"en": "What changed, and when", "ja": "変化とその時期"},
    "no_changes": {"en": "No rank changes in the top {n} and no surges.",
                   "ja": "上位{n}の順位変動と急増はありません。"},
    "ch_entered": {"en": "{key} entered the top {n} at {rank} ({prev_txt} in {prev})",
                   "ja": "{key}が上位{n}に入りました: {rank} ({prev}は{prev_txt})"},
    "ch_left": {"en": "{key} left the top {n}: {prev_txt} in {prev}, now {rank}",
                "ja": "{key}は上位{n}から外れました: {prev}は{prev_txt}、今回{rank}"},
    "ch_rose": {"en": "{key} rose from {prev_txt} to {rank}",
                "ja": "{key}は{prev_txt}から{rank}に上昇"},
    "ch_fell": {"en": "{key} fell from {prev_txt} to {rank}",
                "ja": "{key}は{prev_txt}から{rank}に下降"},
    "ch_surge": {"en": "from {start}, its daily {metric} were {ratio} their baseline "
                       "({baseline} a day, the median of the {window} days before) {span}; "
                       "peak {peak} on {peak_day}",
                 "ja": "{start}から日別{metric}がベースライン (直前{window}日の中央値: "
                       "{baseline}/日) の{ratio}になりました ({span})。最大は{peak_day}の{peak}"},
    "ch_surge_first": {"en": "{key}: ", "ja": "{key}: "},
    "span_days": {"en": "for {days} days, to {end}", "ja": "{end}まで{days}日間"},
    "span_ongoing": {"en": "for {days} days, still at the end of the data",
                     "ja": "{days}日間、データの終わりまで継続"},
    "m_packets": {"en": "packets", "ja": "パケット数"},
    "m_sources": {"en": "sources", "ja": "送信元数"},
    "times": {"en": "{x}×", "ja": "{x}倍"},
    "not_ranked": {"en": "not seen", "ja": "観測なし"},
    "src_day": {"en": "Sources/day (median)", "ja": "送信元数/日 (中央値)"},
    "src_status": {"en": "Sources status", "ja": "送信元数の精度"},
    "exact": {"en": "exact", "ja": "正確"},
    "estimated_days": {"en": "estimated on {n} days", "ja": "{n}日は推定値"},
    "svc_sources_note": {
        "en": "Service sources per day are the sum of each sensor-hour's distinct sources "
              "of the port (the summaries count sources per hour and port), an upper bound "
              "of the day's distinct sources; 'estimated' marks days where a sensor's "
              "sketch made an hourly count an estimate.",
        "ja": "サービスの送信元数/日は、各センサー・各時間のポート別送信元数の合計です "
              "(サマリーは時間・ポートごとに数えるため、その日の異なる送信元数の上限)。"
              "「推定値」はセンサーのスケッチにより時間ごとの数が推定となった日です。"},
    "reg_sources_note": {
        "en": "Region sources per day are distinct source addresses fleet-wide (all "
              "sensors), exact below {k} a day and region, estimated above (k minimum "
              "values, about 1.6 %).",
        "ja": "地域の送信元数/日は全センサーを通じた異なる送信元アドレス数です。"
              "1日・1地域{k}件未満は正確、それ以上は推定値 (k最小値法、約1.6%)。"},
    "labels": {"en": "Labelled source populations", "ja": "ラベル付き送信元群"},
    "label_intro": {
        "en": "{label}: {entries} entries (file {file}, imported {when}). {seen} of its "
              "addresses were seen in the quarter, sending {packets} packets; on "
              "{days} days, at most {peak} addresses on {peak_day}.",
        "ja": "{label}: {entries}件 (ファイル {file}、{when}取り込み)。四半期内に{seen}"
              "アドレスを観測し、{packets}パケットを受信。観測日数{days}日、最大は"
              "{peak_day}の{peak}アドレス。"},
    "label_none_seen": {"en": "{label}: {entries} entries; none seen in the quarter.",
                        "ja": "{label}: {entries}件。四半期内の観測はありません。"},
    "label_basis": {"en": "Measured from", "ja": "基準"},
    "b_identified": {"en": "the label date", "ja": "ラベルの日付"},
    "b_first_seen": {"en": "first seen", "ja": "初観測"},
    "label_life": {
        "en": "{label}, measured from {basis}: of {n} addresses, {s24} no longer seen after "
              "24 h, {s48} after 48 h, {s168} after 168 h.",
        "ja": "{label} ({basis}から): {n}アドレスのうち、24時間後に{s24}、48時間後に{s48}、"
              "168時間後に{s168}が観測されなくなりました。"},
    "label_ports": {
        "en": "Ports per labelled address are not given: the hourly summaries count the "
              "ports a source probed but do not list them.",
        "ja": "ラベル付きアドレスのポートは示せません: 時間ごとのサマリーは送信元の"
              "ポート数を数えますが、ポートを列挙しないためです。"},
    "f4": {"en": "Figure 4: labelled addresses seen per day",
           "ja": "図4: ラベル付きアドレスの日別観測数"},
    "regions_from": {"en": "Regions: RIR delegation data imported {when} ({serials}).",
                     "ja": "地域: {when}に取り込んだRIR割り振りデータ ({serials})。"},
}


def label(key: str, lang: str, /, **kw: Any) -> str:
    return LABELS[key][lang].format(**kw)


@cache
def service_names() -> dict[tuple[int, int], str]:
    """(proto, port) -> IANA service name, from the bundled central/data/services.csv."""
    out: dict[tuple[int, int], str] = {}
    with (DATA_DIR / "services.csv").open(encoding="utf-8") as f:
        rows = csv.reader(line for line in f if not line.startswith("#"))
        next(rows)
        for port, proto, name in rows:
            out[({"tcp": 6, "udp": 17}[proto], int(port))] = name
    return out


@cache
def country_names() -> dict[str, dict[str, str]]:
    """cc -> {"en": name, "ja": name}, from central/data/countries.csv (ISO 3166-1)."""
    out: dict[str, dict[str, str]] = {
        UNKNOWN_CC: {"en": "Unknown / not delegated", "ja": "不明・未割り振り"}}
    with (DATA_DIR / "countries.csv").open(encoding="utf-8") as f:
        rows = csv.reader(line for line in f if not line.startswith("#"))
        next(rows)
        for cc, en, ja in rows:
            out[cc] = {"en": en, "ja": ja}
    return out


def service_label(proto: int, port: int) -> str:
    if proto in (1, 58):
        return f"{PROTO[proto]} type {port}"
    return f"{port}/{PROTO.get(proto, str(proto))}"


def service_name(proto: int, port: int) -> str:
    if proto in (1, 58):
        return ICMP_TYPES.get((proto, port), "")
    return service_names().get((proto, port), "")


# ------------------------------------------------------------------------- the numbers
@dataclass(slots=True)
class RankRow:
    rank: int
    key: str  # "23/tcp" or "JP"
    name: dict[str, str]  # per language (services: the IANA name in both)
    packets: int
    share: float
    prev_rank: int | None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class LifetimeRow:
    group: str
    sources: int
    eligible: list[int]
    gone: list[int]
    too_late: list[int]

    @property
    def shares(self) -> list[float | None]:
        return [g / e if e else None for g, e in zip(self.gone, self.eligible, strict=True)]


@dataclass(slots=True)
class SensorHealth:
    sensor: str
    expected_hours: int
    received_hours: float
    missing_hours: int
    missing_ranges: list[tuple[int, int]]  # [start, end) Unix seconds
    partial: int
    capture_drops: int
    clock_unsynced: int
    spool_evicted: int


@dataclass(slots=True)
class LabelReport:
    label: str
    entries: int
    file: str
    imported_us: int
    seen: int  # addresses seen in the quarter
    packets: int
    daily_seen: list[int]  # per day of the quarter
    daily_packets: list[int]
    lifetimes: list[dict[str, Any]]  # per basis: population, eligible, gone, too_late, shares


@dataclass(slots=True)
class ReportData:
    quarter: str
    previous: str
    start: int
    end: int
    until: int  # end of data considered: min(end, generated)
    generated_us: int
    sensors: list[str]
    sensor_filter: bool
    has_data: bool
    has_previous: bool
    packets: int
    backscatter: int
    days: list[int]
    services: list[RankRow]
    services_dropped: list[RankRow]
    regions: list[RankRow]
    regions_dropped: list[RankRow]
    unattributed_packets: int
    region_packets: int
    service_daily: dict[str, list[int]]
    region_daily: dict[str, list[int]]
    lifetimes: list[LifetimeRow]
    fingerprints: dict[str, int]
    backscatter_kinds: dict[str, int]
    health: list[SensorHealth]
    region_import: dict[str, Any] | None
    notes: list[tuple[str, dict[str, Any]]]
    changes: list[Change] = field(default_factory=list)
    service_sources_daily: dict[str, list[int]] = field(default_factory=dict)
    service_sources_estimated: dict[str, list[bool]] = field(default_factory=dict)
    region_sources_daily: dict[str, list[int]] = field(default_factory=dict)
    region_sources_estimated: dict[str, list[bool]] = field(default_factory=dict)
    labels: list[LabelReport] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for row in d["lifetimes"]:
            row["shares"] = [g / e if e else None
                             for g, e in zip(row["gone"], row["eligible"], strict=True)]
        return d


def _rank(totals: dict[Any, int]) -> list[tuple[Any, int]]:
    return sorted(((k, v) for k, v in totals.items() if v > 0), key=lambda kv: (-kv[1], kv[0]))


def _missing_ranges(covered: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    pos = lo
    for start, length in covered:
        if start > pos:
            out.append((pos, min(start, hi)))
        pos = max(pos, start + length)
    if pos < hi:
        out.append((pos, hi))
    return [(a, b) for a, b in out if b > a]


def compute_report(
    store: Any, quarter: str, *, sensors: list[str] | None = None, now_us: int | None = None
) -> ReportData:
    """Every number of the report for `quarter` (and its comparison with the previous one)."""
    generated = now_us if now_us is not None else time.time_ns() // 1000
    start, end = quarter_bounds(quarter)
    prev = previous_quarter(quarter)
    pstart, pend = quarter_bounds(prev)
    until = max(start, min(end, generated // 1_000_000 // 3600 * 3600))
    day_lo, day_hi = start // DAY, end // DAY
    days = list(range(day_lo, day_hi))

    # services
    def service_totals(q: str) -> dict[tuple[int, int], tuple[int, int]]:
        return {(p, port): (pk - bs, bs) for p, port, pk, bs in store.port_totals(q, sensors)
                if port >= 0}

    cur_s, prev_s = service_totals(quarter), service_totals(prev)
    cur_rank = _rank({k: v[0] for k, v in cur_s.items()})
    prev_rank = {k: i + 1 for i, (k, _) in enumerate(_rank({k: v[0] for k, v in prev_s.items()}))}
    has_previous = bool(prev_s)
    net_total = sum(v for _, v in cur_rank) or 1
    services = [
        RankRow(i + 1, service_label(*k), {"en": service_name(*k), "ja": service_name(*k)},
                v, v / net_total, prev_rank.get(k), {"proto": k[0], "port": k[1],
                                                     "backscatter": cur_s[k][1]})
        for i, (k, v) in enumerate(cur_rank[:TOP])
    ]
    now_rank = {k: i + 1 for i, (k, _) in enumerate(cur_rank)}
    top_keys = [k for k, _ in cur_rank[:TOP]]
    services_dropped = [
        RankRow(now_rank.get(k, 0), service_label(*k), {"en": service_name(*k),
                                                        "ja": service_name(*k)},
                cur_s.get(k, (0, 0))[0], 0.0, r)
        for k, r in sorted(prev_rank.items(), key=lambda kv: kv[1])
        if r <= TOP and k not in top_keys
    ]
    daily = store.port_daily(top_keys, day_lo, day_hi, sensors)
    service_daily = {
        service_label(*k): [daily[k].get(d, (0, 0))[0] - daily[k].get(d, (0, 0))[1]
                            for d in days]
        for k in top_keys
    }

    # regions
    def region_totals(lo: int, hi: int) -> tuple[dict[str, int], int, dict[int, dict[str, int]]]:
        tot: dict[str, int] = {}
        unattributed = 0
        per_day: dict[int, dict[str, int]] = {}
        for d, cc, _reg, n in store.region_daily(lo, hi, sensors):
            if cc == UNKNOWN_CC:
                unattributed += n
                continue
            tot[cc] = tot.get(cc, 0) + n
            per_day.setdefault(d, {})
            per_day[d][cc] = per_day[d].get(cc, 0) + n
        return tot, unattributed, per_day

    cur_r, unattributed, r_days = region_totals(day_lo, day_hi)
    prev_r, _, _ = region_totals(pstart // DAY, pend // DAY)
    r_rank = _rank(cur_r)
    r_prev = {k: i + 1 for i, (k, _) in enumerate(_rank(prev_r))}
    r_now = {k: i + 1 for i, (k, _) in enumerate(r_rank)}
    region_packets = sum(cur_r.values()) + unattributed
    names = country_names()
    regions = [
        RankRow(i + 1, cc, names.get(cc, {"en": cc, "ja": cc}), v,
                v / (region_packets or 1), r_prev.get(cc))
        for i, (cc, v) in enumerate(r_rank[:TOP])
    ]
    r_top = [cc for cc, _ in r_rank[:TOP]]
    regions_dropped = [
        RankRow(r_now.get(cc, 0), cc, names.get(cc, {"en": cc, "ja": cc}), cur_r.get(cc, 0),
                0.0, r)
        for cc, r in sorted(r_prev.items(), key=lambda kv: kv[1]) if r <= TOP and cc not in r_top
    ]
    region_daily = {cc: [r_days.get(d, {}).get(cc, 0) for d in days] for cc in r_top}

    # what changed, and when: rank changes and surges over both quarters' days
    all_days = list(range(pstart // DAY, day_hi))
    have = store.data_days(pstart, end, sensors)
    prev_order = [k for k, _ in sorted(prev_rank.items(), key=lambda kv: kv[1])]
    svc_watch = [k for k, _ in cur_rank[:WATCH]]
    svc_watch += [k for k in prev_order[:TOP] if k not in svc_watch]
    s_pk = store.port_daily(svc_watch, all_days[0], day_hi, sensors)
    s_src = store.port_sources_daily(svc_watch, all_days[0], day_hi, sensors)

    def series(per_day: dict[int, int]) -> tuple[list[int], list[int | None]]:
        return all_days, [per_day.get(d, 0) if d in have else None for d in all_days]

    svc_series = {
        service_label(*k): {
            "packets": series({d: p - b for d, (p, b) in s_pk[k].items()}),
            "sources": series({d: n for d, (n, _) in s_src[k].items()}),
        } for k in svc_watch}
    changes = changes_for(
        "service",
        rank_changes([service_label(*k) for k, _ in cur_rank],
                     [service_label(*k) for k in prev_order], TOP),
        svc_series, day_lo)
    service_sources_daily = {
        service_label(*k): [s_src[k].get(d, (0, 0))[0] for d in days] for k in top_keys}
    service_sources_estimated = {
        service_label(*k): [s_src[k].get(d, (0, 0))[1] > 0 for d in days] for k in top_keys}
    prev_r_order = [cc for cc, _ in sorted(r_prev.items(), key=lambda kv: kv[1])]
    reg_watch = [cc for cc, _ in r_rank[:WATCH]]
    reg_watch += [cc for cc in prev_r_order[:TOP] if cc not in reg_watch]
    _, _, r_days_prev = region_totals(pstart // DAY, pend // DAY)
    r_src = store.region_sources_daily(reg_watch, all_days[0], day_hi)
    reg_series = {
        cc: {"packets": series({d: (r_days_prev.get(d) or r_days.get(d) or {}).get(cc, 0)
                                for d in all_days}),
             "sources": series({d: n for d, (n, _) in r_src[cc].items()})}
        for cc in reg_watch}
    changes += changes_for("region", rank_changes([cc for cc, _ in r_rank], prev_r_order, TOP),
                           reg_series, day_lo)
    region_sources_daily = {cc: [r_src[cc].get(d, (0, False))[0] for d in days]
                            for cc in r_top}
    region_sources_estimated = {cc: [r_src[cc].get(d, (0, False))[1] for d in days]
                                for cc in r_top}

    for rows, src_days, flags in ((services, service_sources_daily, service_sources_estimated),
                                  (regions, region_sources_daily, region_sources_estimated)):
        for row in rows:
            row.extra["sources_median"] = _median(src_days.get(row.key, []))
            row.extra["sources_estimated_days"] = sum(flags.get(row.key, []))

    # labelled populations
    label_reports = []
    until_us = until * 1_000_000
    for info in store.labels():
        name = info["label"]
        per_day = {d: (n, p) for d, n, p in store.label_daily(name, day_lo, day_hi)}
        sightings = store.label_sightings(name, day_lo, day_hi)
        lives = label_lifetimes(((a, b, c) for a, b, c, _ in sightings), until_us,
                                THRESHOLDS_H)
        label_reports.append(LabelReport(
            name, info["entries"], info["file"], info["imported_us"], len(sightings),
            sum(x[3] for x in sightings),
            [per_day.get(d, (0, 0))[0] for d in days], [per_day.get(d, (0, 0))[1] for d in days],
            [{"basis": lt.basis, "population": lt.population, "eligible": lt.eligible,
              "gone": lt.gone, "too_late": lt.too_late, "shares": lt.shares} for lt in lives]))

    # counters
    counters = store.counter_totals(day_lo, day_hi, sensors)
    packets = counters.get("packets", 0)
    backscatter = counters.get("backscatter", 0)
    fingerprints = {name: counters.get(f"fp:{name}", 0) for name in FINGERPRINTS}
    bs_kinds = {k.split(":", 1)[1]: v for k, v in sorted(counters.items())
                if k.startswith("backscatter:")}

    # lifetimes (fleet-wide)
    th_us = [h * 3_600_000_000 for h in THRESHOLDS_H]
    groups = store.lifetime_counts(quarter, end * 1_000_000, th_us)
    lifetimes = []
    for name, bit in FP_GROUPS:
        sel = [g for g in groups
               if bit is None or (bit == 0 and g[0] == 0) or (bit and g[0] & bit)]
        n = sum(g[1] for g in sel)
        el = [sum(g[2][i][0] for g in sel) for i in range(len(th_us))]
        gone = [sum(g[2][i][1] for g in sel) for i in range(len(th_us))]
        lifetimes.append(LifetimeRow(name, n, el, gone, [n - e for e in el]))

    # sensor health
    hours = store.sensor_hours(start, end, sensors)
    names_all = sorted(set(sensors or []) | set(hours)) if sensors else sorted(hours)
    health = []
    for sid in names_all:
        h = hours.get(sid)
        covered = store.hour_starts(sid, start, end) if h else []
        expected = max(0, (until - start) // 3600)
        gaps = _missing_ranges(covered, start, until)
        missing = sum(b - a for a, b in gaps) // 3600
        health.append(SensorHealth(
            sid, expected, (h["seconds"] / 3600) if h else 0, missing, gaps,
            h["partial"] if h else 0, h["capture_drops"] if h else 0,
            h["clock_unsynced"] if h else 0, h["spool_evicted"] if h else 0))

    notes: list[tuple[str, dict[str, Any]]] = []
    has_data = bool(hours)
    if not has_data:
        notes.append(("no_data", {"quarter": quarter}))
    if until < end:
        notes.append(("unfinished", {"until": _date(until, True)}))
    if not has_previous:
        notes.append(("no_previous", {"prev": prev}))
    imp = store.region_import()
    if imp is None:
        notes.append(("no_regions", {}))
    from central.clones import clone_notes

    notes += clone_notes(store.path, sensors)
    for sh in health:
        if sh.received_hours == 0:
            notes.append(("sensor_none", {"sensor": sh.sensor}))
            continue
        if sh.missing_hours:
            notes.append(("sensor_gap", {
                "sensor": sh.sensor, "missing": sh.missing_hours,
                "expected": sh.expected_hours,
                "ranges": ", ".join(f"{_date(a, True)}–{_date(b, True)}"
                                    for a, b in sh.missing_ranges[:5])
                + (" …" if len(sh.missing_ranges) > 5 else "")}))
        if sh.spool_evicted:
            notes.append(("sensor_evicted", {"sensor": sh.sensor, "n": sh.spool_evicted}))
        if sh.partial:
            notes.append(("sensor_partial", {"sensor": sh.sensor, "n": sh.partial}))
        if sh.clock_unsynced:
            notes.append(("sensor_clock", {"sensor": sh.sensor, "n": sh.clock_unsynced}))
        if sh.capture_drops:
            notes.append(("sensor_drops", {"sensor": sh.sensor, "n": sh.capture_drops}))

    return ReportData(
        quarter=quarter, previous=prev, start=start, end=end, until=until,
        generated_us=generated, sensors=names_all, sensor_filter=bool(sensors),
        has_data=has_data, has_previous=has_previous, packets=packets,
        backscatter=backscatter, days=days, services=services,
        services_dropped=services_dropped, regions=regions, regions_dropped=regions_dropped,
        unattributed_packets=unattributed, region_packets=region_packets,
        service_daily=service_daily, region_daily=region_daily, lifetimes=lifetimes,
        fingerprints=fingerprints, backscatter_kinds=bs_kinds, health=health,
        region_import=imp, notes=notes, changes=changes,
        service_sources_daily=service_sources_daily,
        service_sources_estimated=service_sources_estimated,
        region_sources_daily=region_sources_daily,
        region_sources_estimated=region_sources_estimated, labels=label_reports,
    )


# ------------------------------------------------------------------------- rendering
def _date(unix_s: int, with_time: bool = False) -> str:
    d = datetime.fromtimestamp(unix_s, UTC)
    return d.strftime("%Y-%m-%d %H:%M") if with_time else d.strftime("%Y-%m-%d")


def _n(v: int) -> str:
    return f"{v:,}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _prev(r: int | None, data: ReportData, lang: str) -> str:
    if not data.has_previous:
        return label("na", lang)
    return str(r) if r is not None else label("new", lang)


def _group_name(g: str, lang: str) -> str:
    return label("g_" + g, lang) if g in ("all", "none") else g


def _ordinal_rank(r: int | None, lang: str) -> str:
    return label("rank_n", lang, n=r) if r else label("not_ranked", lang)


def _key_text(c: Change, lang: str) -> str:
    if c.subject == "region":
        name = country_names().get(c.key, {"en": c.key, "ja": c.key})[lang]
        return f"{c.key} ({name})"
    return c.key


def change_sentences(data: ReportData, lang: str) -> list[str]:
    """One sentence per service or region that changed: its rank change, then its surges."""
    by_key: dict[tuple[str, str], list[Change]] = {}
    for c in data.changes:
        by_key.setdefault((c.subject, c.key), []).append(c)
    out = []
    for group in by_key.values():
        parts: list[str] = []
        key = _key_text(group[0], lang)
        for c in group:
            if c.kind == "surge":
                sg = c.surge
                n_days = sg["end_day"] - sg["start_day"] + 1
                span = (label("span_ongoing", lang, days=n_days) if sg["ongoing"] else
                        label("span_days", lang, days=n_days, end=_date(sg["end_day"] * DAY)))
                ratio = label("times", lang, x=f"{sg['ratio']:.1f}")
                text = label("ch_surge", lang, start=_date(sg["start_day"] * DAY),
                             metric=label("m_" + str(c.metric), lang), ratio=ratio,
                             baseline=_n(round(sg["baseline"])), window=WINDOW, span=span,
                             peak=_n(sg["peak"]), peak_day=_date(sg["peak_day"] * DAY))
                parts.append(text if parts else label("ch_surge_first", lang, key=key) + text)
            else:
                parts.append(label("ch_" + c.kind, lang, key=key, n=TOP,
                                   rank=_ordinal_rank(c.rank, lang),
                                   prev_txt=_ordinal_rank(c.prev_rank, lang),
                                   prev=data.previous))
        sep = "; " if lang == "en" else "。"
        out.append(sep.join(parts) + ("." if lang == "en" else "。"))
    return out


def _median(xs: list[int]) -> int:
    from statistics import median

    return round(median(xs)) if xs else 0


def _status(n: int, lang: str) -> str:
    return label("estimated_days", lang, n=n) if n else label("exact", lang)


@dataclass(frozen=True, slots=True)
class _Section:
    """A rendered-agnostic document: headings, paragraphs, tables and figures."""

    kind: str  # h1 h2 p table figure
    text: str = ""
    header: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    src: str = ""


def _document(data: ReportData, lang: str) -> list[_Section]:
    def L(key: str, **kw: Any) -> str:
        return label(key, lang, **kw)

    out = [_Section("h1", L("title", quarter=data.quarter)),
           _Section("p", L("period", start=_date(data.start),
                           end=_date(data.end - 1), sensors=", ".join(data.sensors) or "–",
                           now=_date(data.generated_us // 1_000_000, True)))]
    if data.region_import:
        out.append(_Section("p", L("regions_from",
                                   when=_date(data.region_import["imported_us"] // 1_000_000),
                                   serials=", ".join(data.region_import["serials"]) or "–")))
    # missing data first: a reader must see it before the numbers
    out.append(_Section("h2", L("notes")))
    for key, kw in data.notes:
        out.append(_Section("p", L(key, **kw)))
    if not data.notes:
        out.append(_Section("p", L("no_notes")))
    out.append(_Section("h2", L("overview")))
    out.append(_Section("p", L("total", packets=_n(data.packets), bs=_n(data.backscatter),
                               bs_share=_pct(data.backscatter / data.packets
                                             if data.packets else None))))
    out.append(_Section("h2", L("changes")))
    sentences = change_sentences(data, lang)
    out += [_Section("p", t) for t in sentences]
    if not sentences:
        out.append(_Section("p", L("no_changes", n=TOP)))
    out.append(_Section("h2", L("t1", n=TOP)))
    out.append(_Section("table", header=(L("rank"), L("service"), L("svcname"), L("packets"),
                                         L("share"), L("prev") + f" ({data.previous})",
                                         L("src_day"), L("src_status")),
                        rows=tuple((str(r.rank), r.key, r.name[lang] or "–", _n(r.packets),
                                    _pct(r.share), _prev(r.prev_rank, data, lang),
                                    _n(r.extra.get("sources_median", 0)),
                                    _status(r.extra.get("sources_estimated_days", 0), lang))
                                   for r in data.services)))
    out.append(_Section("p", L("svc_sources_note")))
    if data.services_dropped:
        out.append(_Section("p", L("dropped", n=TOP, prev=data.previous, items="; ".join(
            L("dropped_item", label=r.key, prev=r.prev_rank,
              now=L("rank_n", n=r.rank) if r.rank else L("now_out"))
            for r in data.services_dropped))))
    out.append(_Section("figure", L("f1", n=TOP), src=FIGURES[0]))
    out.append(_Section("h2", L("t2", n=TOP)))
    out.append(_Section("table", header=(L("rank"), L("cc"), L("region"), L("packets"),
                                         L("share"), L("prev") + f" ({data.previous})",
                                         L("src_day"), L("src_status")),
                        rows=tuple((str(r.rank), r.key, r.name[lang], _n(r.packets),
                                    _pct(r.share), _prev(r.prev_rank, data, lang),
                                    _n(r.extra.get("sources_median", 0)),
                                    _status(r.extra.get("sources_estimated_days", 0), lang))
                                   for r in data.regions)))
    out.append(_Section("p", L("reg_sources_note", k=_n(KMV_K))))
    if data.regions_dropped:
        out.append(_Section("p", L("dropped", n=TOP, prev=data.previous, items="; ".join(
            L("dropped_item", label=f"{r.key} {r.name[lang]}", prev=r.prev_rank,
              now=L("rank_n", n=r.rank) if r.rank else L("now_out"))
            for r in data.regions_dropped))))
    if data.unattributed_packets:
        out.append(_Section("p", L("unattributed", share=_pct(
            data.unattributed_packets / (data.region_packets or 1)))))
    out.append(_Section("figure", L("f2", n=TOP), src=FIGURES[1]))
    out.append(_Section("h2", L("life")))
    total_sources = data.lifetimes[0].sources if data.lifetimes else 0
    out.append(_Section("p", L("life_intro", n=_n(total_sources))))
    if data.sensor_filter:
        out.append(_Section("p", L("lifetimes_fleet")))
    out.append(_Section(
        "table",
        header=(L("group"), L("sources"), *(L("gone_after", h=h) for h in THRESHOLDS_H),
                *(L("too_late", h=h) for h in THRESHOLDS_H)),
        rows=tuple((_group_name(r.group, lang), _n(r.sources), *(_pct(s) for s in r.shares),
                    *(_n(t) for t in r.too_late)) for r in data.lifetimes)))
    out.append(_Section("figure", L("f3"), src=FIGURES[2]))
    if data.labels:
        out.append(_Section("h2", L("labels")))
        for lb in data.labels:
            when = _date(lb.imported_us // 1_000_000)
            if not lb.seen:
                out.append(_Section("p", L("label_none_seen", label=lb.label,
                                           entries=_n(lb.entries))))
                continue
            peak = max(lb.daily_seen)
            out.append(_Section("p", L(
                "label_intro", label=lb.label, entries=_n(lb.entries),
                file=Path(lb.file).name, when=when, seen=_n(lb.seen), packets=_n(lb.packets),
                days=sum(1 for x in lb.daily_seen if x),
                peak=_n(peak), peak_day=_date(data.days[lb.daily_seen.index(peak)] * DAY))))
            for lt in lb.lifetimes:
                sh = [_pct(x) for x in lt["shares"]]
                out.append(_Section("p", L("label_life", label=lb.label,
                                           basis=L("b_" + lt["basis"]),
                                           n=_n(lt["population"]), s24=sh[0], s48=sh[1],
                                           s168=sh[2])))
            out.append(_Section(
                "table",
                header=(L("label_basis"), L("sources"),
                        *(L("gone_after", h=h) for h in THRESHOLDS_H),
                        *(L("too_late", h=h) for h in THRESHOLDS_H)),
                rows=tuple((L("b_" + lt["basis"]), _n(lt["population"]),
                            *(_pct(x) for x in lt["shares"]), *(_n(t) for t in lt["too_late"]))
                           for lt in lb.lifetimes)))
        out.append(_Section("p", L("label_ports")))
        out.append(_Section("figure", L("f4"), src=FIGURES[3]))
    out.append(_Section("h2", L("fp")))
    rows = [(k, _n(v), _pct(v / data.packets if data.packets else None))
            for k, v in data.fingerprints.items()]
    rows.append((L("backscatter"), _n(data.backscatter),
                 _pct(data.backscatter / data.packets if data.packets else None)))
    rows += [(f"backscatter: {k}", _n(v), _pct(v / data.packets if data.packets else None))
             for k, v in data.backscatter_kinds.items()]
    out.append(_Section("table", header=(L("kind"), L("packets"), L("share")), rows=tuple(rows)))
    out.append(_Section("h2", L("health")))
    out.append(_Section(
        "table",
        header=(L("sensor"), L("hours"), L("missing"), L("partial"), L("drops"), L("clock"),
                L("evicted")),
        rows=tuple((h.sensor, f"{h.received_hours:g} / {h.expected_hours}",
                    _n(h.missing_hours), _n(h.partial), _n(h.capture_drops),
                    _n(h.clock_unsynced), _n(h.spool_evicted)) for h in data.health)))
    out += [_Section("p", L(k, **kw)) for k, kw in data.notes if k == "clone_suspected"]
    return out


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|")


def render_markdown(data: ReportData, lang: str = "en") -> str:
    lines: list[str] = []
    for s in _document(data, lang):
        if s.kind == "h1":
            lines += [f"# {s.text}", ""]
        elif s.kind == "h2":
            lines += [f"## {s.text}", ""]
        elif s.kind == "p":
            lines += [s.text, ""]
        elif s.kind == "table":
            lines.append("| " + " | ".join(map(_md_cell, s.header)) + " |")
            lines.append("|" + "---|" * len(s.header))
            lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in s.rows]
            lines.append("")
        elif s.kind == "figure":
            lines += [f"![{s.text}]({s.src})", "", f"*{s.text}*", ""]
    return "\n".join(lines)


_CSS: Final = """
body{font-family:"Noto Sans","Noto Sans CJK JP","IPAGothic","IPAPGothic","Hiragino Sans",
"Yu Gothic",sans-serif;
max-width:60em;margin:2em auto;padding:0 1em;color:#222;line-height:1.5}
h1{font-size:1.6em;border-bottom:2px solid #345}h2{font-size:1.25em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #bbb;
padding:.25em .6em;text-align:right}th{background:#eef2f6}td:first-child,th:first-child{
text-align:left}figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.9em;color:#444}
"""


def render_html(data: ReportData, lang: str = "en") -> str:
    e = html.escape
    doc = _document(data, lang)
    body: list[str] = []
    for s in doc:
        if s.kind in ("h1", "h2"):
            body.append(f"<{s.kind}>{e(s.text)}</{s.kind}>")
        elif s.kind == "p":
            body.append(f"<p>{e(s.text)}</p>")
        elif s.kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in s.header)
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>"
                           for r in s.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif s.kind == "figure":
            body.append(f'<figure><img src="{e(s.src)}" alt="{e(s.text)}" width="1000" '
                        f'height="450"><figcaption>{e(s.text)}</figcaption></figure>')
    title = e(doc[0].text)
    return (f'<!DOCTYPE html>\n<html lang="{lang}">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{title}</title>\n<link rel=\"icon\" href=\"data:,\">\n"
            f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(body)
            + "\n</body>\n</html>\n")


def render_figures(data: ReportData, out: Path) -> list[Path]:
    """The three PNG figures (matplotlib, Agg); axis text is language-neutral English."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    dates: Any = [datetime.fromtimestamp(d * DAY, UTC) for d in data.days]
    paths = []
    meta = {"Software": None}
    for name, series, src, est, title, src_label in (
        (FIGURES[0], data.service_daily, data.service_sources_daily,
         data.service_sources_estimated, f"Top services, {data.quarter}",
         "sources per day (sum of hourly)"),
        (FIGURES[1], data.region_daily, data.region_sources_daily,
         data.region_sources_estimated, f"Top source regions, {data.quarter}",
         "distinct sources per day"),
    ):
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), dpi=100, sharex=True)
        for key, values in series.items():
            line, = ax.plot(dates, values, label=key, linewidth=1.4)
            if key in src:
                ax2.plot(dates, src[key], linewidth=1.2, color=line.get_color())
                flagged = [i for i, f in enumerate(est.get(key, [])) if f]
                if flagged:
                    ax2.plot([dates[i] for i in flagged], [src[key][i] for i in flagged],
                             "o", markersize=3, mfc="none", color=line.get_color())
        ax.set_title(title)
        ax.set_ylabel("packets per day")
        ax2.set_ylabel(src_label)
        ax2.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d"))  # type: ignore[no-untyped-call]
        for a in (ax, ax2):
            a.set_ylim(bottom=0)
            a.grid(alpha=0.3)
        if series:
            ax.legend(loc="upper left", fontsize="small", ncol=len(series))
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        fig.savefig(out / name, metadata=meta)
        plt.close(fig)
        paths.append(out / name)
    if data.labels:
        fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
        for lb in data.labels:
            ax.plot(dates, lb.daily_seen, label=f"{lb.label} ({lb.seen:,} seen)",
                    linewidth=1.4)
        ax.set_title(f"Labelled addresses seen per day, {data.quarter}")
        ax.set_ylabel("addresses seen per day")
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d"))  # type: ignore[no-untyped-call]
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize="small")
        fig.tight_layout()
        fig.savefig(out / FIGURES[3], metadata=meta)
        plt.close(fig)
        paths.append(out / FIGURES[3])
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    width = 0.8 / max(1, len(data.lifetimes))
    for i, row in enumerate(data.lifetimes):
        xs = [j + (i - (len(data.lifetimes) - 1) / 2) * width for j in range(len(THRESHOLDS_H))]
        ys = [100 * s if s is not None else 0 for s in row.shares]
        ax.bar(xs, ys, width, label=f"{row.group} ({row.sources:,})")
    ax.set_xticks(range(len(THRESHOLDS_H)), [f"{h} h" for h in THRESHOLDS_H])
    ax.set_ylabel("% of new sources no longer seen")
    ax.set_ylim(0, 100)
    ax.set_title(f"Source lifetimes, {data.quarter}")
    ax.legend(loc="upper left", fontsize="small", ncol=len(data.lifetimes))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / FIGURES[2], metadata=meta)
    plt.close(fig)
    paths.append(out / FIGURES[2])
    return paths


def write_report(data: ReportData, out: Path, lang: str = "en") -> list[Path]:
    """report.md, report.html, report.json and the figures in `out` (created)."""
    import json

    if lang not in ("en", "ja"):
        raise ValueError(f"language {lang!r}: en or ja")
    out.mkdir(parents=True, exist_ok=True)
    files = render_figures(data, out)
    for name, text in (("report.md", render_markdown(data, lang)),
                       ("report.html", render_html(data, lang)),
                       ("report.json", json.dumps(data.to_json(), indent=1,
                                                  ensure_ascii=False) + "\n")):
        (out / name).write_text(text, encoding="utf-8")
        files.append(out / name)
    return files

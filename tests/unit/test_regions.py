"""Regions from RIR delegated statistics: parsing, ranges, lookups (central/regions.py)."""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from central.regions import (
    Delegation,
    DelegationFormatError,
    ParseStats,
    RegionTable,
    parse_delegated,
)

RIR = Path(__file__).resolve().parents[1] / "data" / "rir"
RIR_FILES = sorted(RIR.glob("delegated-*-extended-latest"))


def _load(*names: str) -> RegionTable:
    recs: list[Delegation] = []
    for name in names:
        recs += parse_delegated((RIR / name).read_text().splitlines(), where=name)
    return RegionTable.build(recs)


def _v4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def _v6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def test_fixtures_are_the_five_rirs_and_nro() -> None:
    assert [p.name.split("-")[1] for p in RIR_FILES] == [
        "afrinic", "apnic", "arin", "lacnic", "ripencc"
    ]
    assert (RIR / "nro-delegated-stats").exists()


def test_only_allocated_and_assigned_ip_rows_count() -> None:
    stats = ParseStats()
    recs = parse_delegated((RIR / "delegated-apnic-extended-latest").read_text().splitlines(),
                           stats=stats)
    assert stats.headers == 4  # version line and three summary lines
    assert stats.other_types == 1  # the asn row
    assert stats.skipped_status == 2  # available and reserved
    assert stats.counted == len(recs) == 14
    assert stats.serials == ["apnic 20250331"]


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("1.0.16.0", ("JP", "apnic")),
        ("1.0.31.255", ("JP", "apnic")),
        ("1.0.32.0", None),
        ("1.0.0.7", ("AU", "apnic")),
        ("1.0.2.255", ("CN", "apnic")),
        ("3.63.255.255", ("US", "arin")),
        ("27.50.0.1", None),  # available
        ("27.112.0.1", None),  # reserved
        ("177.31.255.255", ("BR", "lacnic")),
        ("41.33.0.0", ("EG", "afrinic")),
        ("0.0.0.0", None),
        ("255.255.255.255", None),
    ],
)
def test_ipv4_lookup(address: str, expected: tuple[str, str] | None) -> None:
    table = _load(*(p.name for p in RIR_FILES))
    assert table.lookup(_v4(address)) == expected


def test_ipv4_counts_that_are_not_cidr_aligned() -> None:
    table = _load("delegated-ripencc-extended-latest", "delegated-apnic-extended-latest",
                  "delegated-arin-extended-latest")
    # 5.10.0.0 + 1280 hosts = 5.10.0.0 - 5.10.4.255 (a /22 and a /24: no single prefix)
    assert table.lookup(_v4("5.10.4.255")) == ("EU", "ripencc")
    assert table.lookup(_v4("5.10.5.0")) is None
    # 14.160.0.0 + 1536 = up to 14.160.5.255; 23.160.0.0 + 768 = up to 23.160.2.255
    assert table.lookup(_v4("14.160.5.255")) == ("VN", "apnic")
    assert table.lookup(_v4("14.160.6.0")) is None
    assert table.lookup(_v4("23.160.2.255")) == ("US", "arin")
    assert table.lookup(_v4("23.160.3.0")) is None


def test_ipv6_lookup_by_prefix_length() -> None:
    table = _load(*(p.name for p in RIR_FILES))
    assert table.lookup(_v6("2001:200::1")) == ("JP", "apnic")
    assert table.lookup(_v6("2001:200:1fff:ffff::1")) == ("JP", "apnic")  # /35 ends here
    assert table.lookup(_v6("2001:200:2000::")) is None
    assert table.lookup(_v6("2600:abcd::1")) == ("US", "arin")  # /12
    assert table.lookup(_v6("2804:1::1")) == ("BR", "lacnic")
    assert table.lookup(_v6("2a00:10ff:ffff::1")) == ("DE", "ripencc")
    assert table.lookup(_v6("::1")) is None


def test_nro_file_gives_the_same_answers_and_duplicates_are_dropped() -> None:
    rirs = _load(*(p.name for p in RIR_FILES))
    nro = _load("nro-delegated-stats")
    both = _load("nro-delegated-stats", *(p.name for p in RIR_FILES))
    assert list(rirs.rows()) == list(nro.rows()) == list(both.rows())
    assert both.stats.duplicates > 0 and both.stats.conflicts == 0
    assert nro.lookup(_v4("10.1.2.3")) is None  # IANA reserved rows do not count


def test_adjacent_same_label_ranges_merge_and_overlaps_keep_the_first() -> None:
    recs = [
        Delegation(4, 100, 199, "JP", "apnic"),
        Delegation(4, 200, 299, "JP", "apnic"),
        Delegation(4, 250, 349, "CN", "apnic"),  # overlaps: first kept, remainder CN
        Delegation(4, 120, 130, "KR", "apnic"),  # inside JP: dropped, counted
    ]
    t = RegionTable.build(recs)
    assert [(s, e, cc) for _, s, e, cc, _ in t.rows()] == [(100, 299, "JP"), (300, 349, "CN")]
    assert t.stats.conflicts == 2


def test_malformed_record_says_where() -> None:
    with pytest.raises(DelegationFormatError, match="x:2:"):
        parse_delegated(["2|apnic|1|1|1|1|+0", "apnic|JP|ipv4|1.2.3|256|2011|allocated"],
                        where="x")
    with pytest.raises(DelegationFormatError, match="host bits"):
        parse_delegated(["apnic|JP|ipv6|2001:200::1|32|2011|allocated"])


def test_rows_roundtrip() -> None:
    t = _load(*(p.name for p in RIR_FILES))
    again = RegionTable.from_rows(t.rows())
    assert list(again.rows()) == list(t.rows())


def test_batch_lookup_equals_single_lookup() -> None:
    t = _load(*(p.name for p in RIR_FILES))
    rnd = random.Random(7)
    addrs: list[bytes] = []
    for _, s, e, _, _ in t.rows():
        if e < 1 << 32:
            for v in (s, e, e + 1, s - 1, rnd.randint(s, e)):
                if 0 <= v < 1 << 32:
                    addrs.append(v.to_bytes(4, "big"))
    addrs += [_v6("2001:200::1"), _v6("::1")]
    labs = t.lookup_many(addrs)
    for a, lab in zip(addrs, labs, strict=True):
        assert (t.labels[lab] if lab >= 0 else None) == t.lookup(a)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 5000),
                          st.sampled_from(["JP", "CN", "US"])), max_size=30),
       st.lists(st.integers(0, 2**32 - 1), max_size=50))
def test_lookup_matches_a_linear_scan(ranges: list[tuple[int, int, str]],
                                      probes: list[int]) -> None:
    recs = [Delegation(4, s, min(s + n - 1, 2**32 - 1), cc, "apnic") for s, n, cc in ranges]
    t = RegionTable.build(recs)
    kept = list(t.rows())
    batch = t.lookup_v4_batch(np.asarray(probes, dtype=np.uint32)).tolist()
    for p, lab in zip(probes, batch, strict=True):
        want = next(((cc, reg) for _, s, e, cc, reg in kept if s <= p <= e), None)
        assert t.lookup_int(4, p) == want
        assert (t.labels[lab] if lab >= 0 else None) == want

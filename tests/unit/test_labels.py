"""central/labels.py: the label CSV, matching addresses and prefixes, lifetimes by basis."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from central.labels import (
    HOUR_US,
    LabelEntry,
    LabelFormatError,
    LabelSet,
    label_lifetimes,
    parse_label_csv,
)

DAY_US = 24 * HOUR_US
T0 = 1_740_000_000 * 1_000_000


def test_csv_rows_labels_and_dates() -> None:
    text = ["address,label,date", "1.0.16.5,asus,2025-03-01", "# comment",
            "2001:200::/48,asus,2025-03-02T12:00:00Z", "5.8.0.1,other,2025-03-01",
            "1.0.64.0/24,,2025-03-03"]
    entries, other = parse_label_csv(text, "asus", where="t.csv")
    assert other == 1
    assert [(e.family, str(ipaddress.ip_address(e.start)), e.end - e.start + 1)
            for e in entries] == [(4, "1.0.16.5", 1), (6, "2001:200::", 2**80),
                                  (4, "1.0.64.0", 256)]
    assert entries[0].identified_us == 1_740_787_200 * 1_000_000
    assert entries[1].identified_us == (1_740_873_600 + 43_200) * 1_000_000
    for bad in (["1.2.3.4/8,asus,2025-01-01"], ["1.2.3.4,asus,yesterday"], ["1.2.3.4"]):
        with pytest.raises(LabelFormatError, match=r"t\.csv:1"):
            parse_label_csv(bad, "asus", where="t.csv")
    with pytest.raises(LabelFormatError):
        parse_label_csv([], "no spaces allowed")


def test_matching_nested_prefixes_and_addresses() -> None:
    a = int(ipaddress.ip_address("10.0.0.0"))
    entries = {"x": [LabelEntry(4, a, a + 2**24 - 1, 5), LabelEntry(4, a + 5, a + 5, 3),
                     LabelEntry(4, a + 2**25, a + 2**25, 7),
                     LabelEntry(6, 1 << 120, (1 << 120) + 255, 9)]}
    ls = LabelSet(entries)
    addrs = np.array([a - 1, a, a + 5, a + 9, a + 2**24, a + 2**25, a + 2**25 + 1],
                     dtype=np.uint32)
    ok, when = ls.match_v4(0, addrs)
    assert ok.tolist() == [False, True, True, True, False, True, False]
    assert [int(w) for w, o in zip(when, ok, strict=True) if o] == [5, 5, 5, 7]
    assert ls.match_one(0, 4, a + 9) == 5 and ls.match_one(0, 4, a - 1) is None
    assert ls.match_one(0, 6, (1 << 120) + 3) == 9 and ls.match_one(0, 6, 5) is None


def test_lifetimes_from_the_label_date_and_from_first_seen() -> None:
    until = T0 + 30 * DAY_US
    rows = [
        (T0, T0 + 1 * HOUR_US, T0 + 10 * HOUR_US),  # gone by 24 h from either basis
        (T0, T0 + 20 * HOUR_US, T0 + 30 * HOUR_US),  # label: gone at 48; first: gone at 24
        (T0, T0 - DAY_US, T0 + 100 * HOUR_US),  # seen before the label date too
        (T0, T0 - 5 * DAY_US, T0 - DAY_US),  # not seen since identified: not in "label"
        (T0, until - 30 * HOUR_US, until - HOUR_US),  # first seen late: too late for 48/168
    ]
    by = {lt.basis: lt for lt in label_lifetimes(rows, until)}
    lab, first = by["identified"], by["first_seen"]
    assert lab.population == 4 and first.population == 5
    assert lab.gone == [1, 2, 3] and lab.eligible == [4, 4, 4]
    assert first.eligible == [5, 4, 4] and first.too_late == [0, 1, 1]
    assert first.gone == [2, 2, 4]  # row 5 lived 29 h: not gone after 24
    assert lab.shares == [0.25, 0.5, 0.75]


def test_labels_commands(tmp_path: Path, capsys: Any) -> None:
    from central.store import Store
    from sensor.cli import main as teiten

    db = tmp_path / "c.db"
    Store(db).close()
    csv_file = tmp_path / "l.csv"
    csv_file.write_text("address,label,date\n1.0.16.5,asus,2025-03-01\n5.8.0.0/24,asus,"
                        "2025-03-01\n9.9.9.9,other,2025-03-01\n")
    assert teiten(["central", "labels", "import", str(csv_file), "--label", "asus",
                   "--db", str(db), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["entries"] == 2 and out["other_labels_skipped"] == 1
    assert teiten(["central", "labels", "list", "--db", str(db), "--json"]) == 0
    assert [x["label"] for x in json.loads(capsys.readouterr().out)["labels"]] == ["asus"]
    assert teiten(["central", "labels", "remove", "asus", "--db", str(db)]) == 0
    assert teiten(["central", "labels", "remove", "asus", "--db", str(db)]) == 2
    csv_file.write_text("1.2.3.4/8,asus,2025-03-01\n")
    assert teiten(["central", "labels", "import", str(csv_file), "--label", "asus",
                   "--db", str(db)]) == 2
    assert "host bits" in capsys.readouterr().err

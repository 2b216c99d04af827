"""central/changes.py on planted series: surges found on their day, none on flat controls."""

from __future__ import annotations

import random

import pytest

from central.changes import PERSIST, find_surges, rank_changes

D0 = 20_000  # a Unix day number


def noisy(n: int, level: float, rnd: random.Random, jitter: float = 0.15) -> list[int | None]:
    return [max(0, round(level * (1 + rnd.uniform(-jitter, jitter)))) for _ in range(n)]


@pytest.mark.parametrize("seed", range(20))
def test_a_planted_step_is_found_on_its_day(seed: int) -> None:
    rnd = random.Random(seed)
    n = 182
    start = rnd.randrange(40, 170)
    size = rnd.choice([2.5, 3.0, 5.0, 10.0])
    base = rnd.choice([50, 1_000, 200_000])
    values = noisy(n, base, rnd)
    for i in range(start, n):
        values[i] = round(base * size * (1 + rnd.uniform(-0.1, 0.1)))
    days = list(range(D0, D0 + n))
    got = find_surges(days, values)
    assert len(got) == 1, got
    s = got[0]
    assert abs(s.start_day - (D0 + start)) <= 1
    assert s.ongoing and s.end_day == D0 + n - 1
    assert s.ratio == pytest.approx(size, rel=0.2)


@pytest.mark.parametrize("seed", range(20))
def test_flat_controls_have_no_surge(seed: int) -> None:
    rnd = random.Random(100 + seed)
    n = 182
    days = list(range(D0, D0 + n))
    flat = noisy(n, rnd.choice([20, 500, 50_000]), rnd, 0.3)
    weekly = [round(1000 * (1 + 0.6 * ((d % 7) in (5, 6)))) for d in days]
    trend = [round(1000 + 5 * i) for i in range(n)]  # +90 % over the two quarters
    one_day = list(flat)
    one_day[100] = (one_day[100] or 0) * 20  # a one-day burst is not a surge
    for series in (flat, weekly, trend, one_day):
        assert find_surges(days, series) == [], series


def test_missing_days_and_the_baseline_from_the_previous_quarter() -> None:
    days = list(range(D0, D0 + 120))
    values: list[int | None] = [100] * 120
    for i in range(30, 40):
        values[i] = None  # no data: never high, not in the baseline
    for i in range(95, 120):
        values[i] = 400
    got = find_surges(days, values, first_day=D0 + 90)
    assert [(s.start_day, s.ratio) for s in got] == [(D0 + 95, 4.0)]
    assert find_surges(days, values, first_day=D0 + 96) == []
    # a run shorter than PERSIST days is not a surge
    short = [100] * 60
    for i in range(40, 40 + PERSIST - 1):
        short[i] = 1000
    assert find_surges(days[:60], list(short)) == []


def test_a_sparse_series_is_not_judged() -> None:
    days = list(range(D0, D0 + 90))
    values: list[int | None] = [0] * 90
    for i in (20, 21, 22, 50, 51, 52, 53):
        values[i] = 150
    assert find_surges(days, values) == []


def test_rank_changes() -> None:
    now = ["23/tcp", "22/tcp", "445/tcp", "8080/tcp", "443/tcp", "3389/tcp"]
    prev = ["23/tcp", "445/tcp", "22/tcp", "8080/tcp", "3389/tcp", "443/tcp"]
    got = {(c.key, c.kind, c.rank, c.prev_rank) for c in rank_changes(now, prev, 5)}
    assert got == {("23/tcp", "same", 1, 1), ("22/tcp", "rose", 2, 3),
                   ("445/tcp", "fell", 3, 2), ("8080/tcp", "same", 4, 4),
                   ("443/tcp", "entered", 5, 6), ("3389/tcp", "left", 6, 5)}
    assert [c.kind for c in rank_changes(["a"], [], 5)] == ["entered"]
    assert [(c.kind, c.rank) for c in rank_changes([], ["a"], 5)] == [("left", None)]

"""ml.deploy.quality_watch: daily quality from a real DuckDB warehouse, and the drop rule on
constructed series."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest

from ml import warehouse
from ml.deploy.quality_watch import DayQuality, QualityDrop, daily_quality, quality_drop

D = date(2025, 3, 10)


def day(offset: int, mean: float, n: int = 100) -> DayQuality:
    return DayQuality(D + timedelta(days=offset), mean, n)


def steady(k: int = 7, mean: float = 0.70) -> list[DayQuality]:
    return [day(-i, mean) for i in range(k, 0, -1)]


# -- daily_quality -------------------------------------------------------------------------------


def test_daily_quality_from_the_warehouse(tmp_path: Path):
    path = tmp_path / "w.duckdb"
    con = warehouse.connect(path)
    warehouse.ensure_table(con, "interaction_quality")
    rows = [("t", "a", D - timedelta(days=2), 0.5), ("t", "b", D - timedelta(days=2), 0.7),
            ("u", "a", D - timedelta(days=2), None),  # unscored: not counted
            ("t", "c", D, 0.9), ("t", "d", D - timedelta(days=40), 0.1),
            ("t", "e", D - timedelta(days=1), None)]  # a day with no score: absent
    con.executemany("INSERT INTO interaction_quality (tenant_id, interaction_id, partition_date, "
                    "quality_score) VALUES (?, ?, ?, ?)", rows)
    con.close()
    con = warehouse.connect(path, read_only=True)
    try:
        series = daily_quality(con)  # until = the latest landing day
        assert [(d.day, round(d.mean, 9), d.n) for d in series] == [
            (D - timedelta(days=2), 0.6, 2), (D, 0.9, 1)]
        assert daily_quality(con, days=1) == [DayQuality(D, 0.9, 1)]
        assert daily_quality(con, days=2, until=D - timedelta(days=1)) == [
            DayQuality(D - timedelta(days=2), pytest.approx(0.6), 2)]
        assert [d.day for d in daily_quality(con, days=60)][0] == D - timedelta(days=40)
        assert daily_quality(con, until=D - timedelta(days=100)) == []
        assert series[0].to_dict() == {"day": "2025-03-08", "mean": pytest.approx(0.6), "n": 2}
        with pytest.raises(ValueError, match="days"):
            daily_quality(con, days=0)
    finally:
        con.close()


def test_daily_quality_without_the_table_or_scores(tmp_path: Path):
    path = tmp_path / "w.duckdb"
    con = warehouse.connect(path)
    try:
        assert daily_quality(con) == []
        warehouse.ensure_table(con, "interaction_quality")
        assert daily_quality(con) == []
    finally:
        con.close()


# -- quality_drop --------------------------------------------------------------------------------


def test_a_drop_beyond_the_threshold_is_reported():
    drop = quality_drop(steady() + [day(0, 0.60)])
    assert isinstance(drop, QualityDrop)
    assert (drop.day, drop.value, drop.window_days) == (D, 0.60, 7)
    assert drop.trailing_mean == pytest.approx(0.70)
    assert drop.rel_drop == pytest.approx(0.1 / 0.7)
    assert drop.to_dict()["day"] == "2025-03-10"
    # the series' order does not matter
    assert quality_drop(list(reversed(steady() + [day(0, 0.60)]))) == drop


def test_a_small_drop_or_a_rise_is_not_reported():
    assert quality_drop(steady() + [day(0, 0.64)]) is None  # 8.6% < 10%
    assert quality_drop(steady() + [day(0, 0.80)]) is None
    assert quality_drop(steady(mean=0.5) + [day(0, 0.375)], threshold=0.25) is None  # = not >
    assert quality_drop(steady() + [day(0, 0.64)], threshold=0.05) is not None


def test_the_window_is_calendar_days_before_the_latest():
    old = [day(-20 - i, 0.9) for i in range(5)]  # outside the 7-day window
    assert quality_drop(old + [day(-1, 0.7), day(-2, 0.7), day(0, 0.6)]) is None  # 2 < 3 days
    drop = quality_drop(old + [day(-1, 0.7), day(-2, 0.7), day(-7, 0.7), day(0, 0.6)])
    assert drop is not None and drop.window_days == 3
    assert drop.trailing_mean == pytest.approx(0.7)
    assert quality_drop(old + [day(-1, 0.7), day(-2, 0.7), day(-8, 0.7), day(0, 0.6)]) is None
    drop = quality_drop(steady(14) + [day(0, 0.6)], window=14)
    assert drop is not None and drop.window_days == 14


def test_days_with_too_few_interactions_are_skipped():
    # the latest day is thin: the latest usable day (yesterday, no drop) is judged instead
    series = steady(8) + [day(0, 0.30, n=5)]
    assert quality_drop(series) is None
    # thin trailing days do not count towards min_days
    series = [day(-1, 0.7), day(-2, 0.7, n=19), day(-3, 0.7, n=3), day(-4, 0.7), day(0, 0.5)]
    assert quality_drop(series) is None
    assert quality_drop(series, min_n=3) is not None
    # a thin day's low mean does not drag the trailing mean
    series = steady(7) + [day(-3, 0.1, n=2)]
    series = [d for d in series if not (d.day == D - timedelta(days=3) and d.n == 100)]
    drop = quality_drop(series + [day(0, 0.6)])
    assert drop is not None and drop.trailing_mean == pytest.approx(0.7)
    assert drop.window_days == 6


def test_too_little_data_gives_no_verdict():
    assert quality_drop([]) is None
    assert quality_drop([day(0, 0.1)]) is None
    assert quality_drop([day(-1, 0.7), day(-2, 0.7), day(0, 0.1)]) is None
    assert quality_drop([day(-1, 0.7), day(-2, 0.7), day(0, 0.1)], min_days=2) is not None
    assert quality_drop([day(-1, 0.0), day(-2, 0.0), day(-3, 0.0), day(0, 0.0)]) is None


@pytest.mark.parametrize("kw,name", [
    ({"window": 0}, "window"), ({"min_days": 0}, "min_days"), ({"min_days": 8}, "min_days"),
    ({"min_n": 0}, "min_n"), ({"threshold": 0.0}, "threshold"), ({"threshold": 1.5}, "threshold"),
])
def test_bad_parameters(kw, name):
    with pytest.raises(ValueError, match=name):
        quality_drop(steady(), **kw)


def test_bad_series():
    with pytest.raises(ValueError, match="2025-03-09 twice"):
        quality_drop([day(-1, 0.7), day(-1, 0.6)])
    with pytest.raises(ValueError, match="nan"):
        quality_drop([day(-1, float("nan"))])

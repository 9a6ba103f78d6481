"""Live quality watch: the daily mean quality score and a drop of the latest day against the
trailing days (what the quality-regression sensor raises an alert for).

Days are landing days: ``interaction_quality.partition_date`` (the day the interactions' file
landed, the partition the quality asset scored). For a live collector it is the day the turns
were served, give or take a flush at midnight; it needs no join with ``interactions`` and is what
a partition re-materialization rewrites as a whole, so a day's figure never mixes two runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import Any

import duckdb

from ml.warehouse import table_exists


@dataclass(frozen=True)
class DayQuality:
    day: date
    mean: float  # mean quality_score of the day's scored interactions
    n: int  # scored interactions (quality_score not NULL)

    def to_dict(self) -> dict[str, Any]:
        return {"day": self.day.isoformat(), "mean": self.mean, "n": self.n}


@dataclass(frozen=True)
class QualityDrop:
    day: date  # the latest day (with enough interactions)
    value: float  # its mean quality
    trailing_mean: float  # the mean of the previous days' means
    rel_drop: float  # (trailing_mean - value) / trailing_mean
    window_days: int  # how many previous days the trailing mean rests on

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["day"] = self.day.isoformat()
        return out


def daily_quality(con: duckdb.DuckDBPyConnection, *, days: int = 30,
                  until: date | None = None) -> list[DayQuality]:
    """The mean ``quality_score`` and scored count per landing day (``partition_date``), oldest
    first, for the ``days`` days ending at ``until`` (inclusive; default: the latest landing day
    in the table, so a warehouse whose data stopped arriving still shows its last days). Days
    without a scored interaction are absent. Empty when ``interaction_quality`` does not exist
    yet."""
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValueError(f"days must be a whole number >= 1, got {days!r}")
    if not table_exists(con, "interaction_quality"):
        return []
    if until is None:
        row = con.execute("SELECT max(partition_date) FROM interaction_quality "
                          "WHERE quality_score IS NOT NULL").fetchone()
        if row is None or row[0] is None:
            return []
        until = row[0]
    first = until - timedelta(days=days - 1)
    rows = con.execute(
        "SELECT partition_date, avg(quality_score), count(quality_score) "
        "FROM interaction_quality WHERE quality_score IS NOT NULL "
        "AND partition_date BETWEEN ? AND ? GROUP BY partition_date ORDER BY partition_date",
        [first, until]).fetchall()
    return [DayQuality(day=d, mean=float(m), n=int(n)) for d, m, n in rows]


def quality_drop(series: Sequence[DayQuality], *, window: int = 7, threshold: float = 0.10,
                 min_days: int = 3, min_n: int = 20) -> QualityDrop | None:
    """The latest day with at least ``min_n`` scored interactions against the trailing mean
    (the plain mean of the daily means) of the previous ``window`` calendar days that have at
    least ``min_n`` each; at least ``min_days`` such days are needed, else no verdict (None).
    A relative drop ``(trailing - latest) / trailing`` above ``threshold`` returns a
    :class:`QualityDrop`; anything else (no drop, a rise, too little data, a trailing mean of 0)
    returns None. The series may come in any order; a day twice is an error."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a whole number >= 1, got {window!r}")
    if isinstance(min_days, bool) or not isinstance(min_days, int) \
            or not 1 <= min_days <= window:
        raise ValueError(f"min_days must be a whole number in [1, window={window}], got "
                         f"{min_days!r}")
    if isinstance(min_n, bool) or not isinstance(min_n, int) or min_n < 1:
        raise ValueError(f"min_n must be a whole number >= 1, got {min_n!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) \
            or not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    seen: set[date] = set()
    for d in series:
        if d.day in seen:
            raise ValueError(f"quality series has {d.day.isoformat()} twice")
        if not math.isfinite(d.mean):
            raise ValueError(f"quality series: the mean of {d.day.isoformat()} is {d.mean!r}")
        seen.add(d.day)
    usable = sorted((d for d in series if d.n >= min_n), key=lambda d: d.day)
    if not usable:
        return None
    latest = usable[-1]
    start = latest.day - timedelta(days=window)
    previous = [d for d in usable[:-1] if d.day >= start]
    if len(previous) < min_days:
        return None
    trailing = sum(d.mean for d in previous) / len(previous)
    if trailing <= 0:
        return None
    rel = (trailing - latest.mean) / trailing
    if rel <= threshold:
        return None
    return QualityDrop(day=latest.day, value=latest.mean, trailing_mean=trailing, rel_drop=rel,
                       window_days=len(previous))


__all__ = ["DayQuality", "QualityDrop", "daily_quality", "quality_drop"]

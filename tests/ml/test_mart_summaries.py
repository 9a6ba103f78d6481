"""ml.mart_summaries on small in-memory mart tables: the window, the LIMITs, pooled figures
(sums of counts, not means of rates), stable keys, and the empty marts."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import duckdb
import pytest

from ml.mart_summaries import (
    experiment_arms_summary,
    markdown_table,
    metric_key,
    model_performance_summary,
    version_label,
)

COUNTS = ("interactions BIGINT, thumbs_given BIGINT, thumbs_up BIGINT, thumbs_up_rate DOUBLE, "
          "ratings_given BIGINT, mean_rating DOUBLE, handoff_signals BIGINT, handoffs BIGINT, "
          "handoff_rate DOUBLE, audited BIGINT, audited_errors BIGINT, "
          "auditor_error_rate DOUBLE, scored BIGINT, mean_quality_score DOUBLE, "
          "first_ts TIMESTAMP, last_ts TIMESTAMP")
LAST = date(2025, 5, 20)


def _rate(a, b):
    return a / b if b else None


def _counts(n, up, given, quality, scored, audited=0, errors=0, handoffs=0, signals=0):
    rate = _rate
    ts = datetime(2025, 5, 1, 12)
    return [n, given, up, rate(up, given), 0, None, signals, handoffs, rate(handoffs, signals),
            audited, errors, rate(errors, audited), scored, quality, ts, ts]


@pytest.fixture()
def con():
    con = duckdb.connect()
    con.execute(f"CREATE TABLE perf (model_name VARCHAR, model_version VARCHAR, day DATE, "
                f"{COUNTS})")
    con.execute(f"CREATE TABLE arms (experiment_id BIGINT, arm VARCHAR, model_name VARCHAR, "
                f"model_version VARCHAR, {COUNTS})")
    yield con
    con.close()


def _perf(con, name, version, day, *counts):
    con.execute(f"INSERT INTO perf VALUES (?, ?, ?, {', '.join('?' * 16)})",
                [name, version, day, *_counts(*counts)])


def _arm(con, experiment, arm, version, *counts):
    con.execute(f"INSERT INTO arms VALUES (?, ?, 'bot', ?, {', '.join('?' * 16)})",
                [experiment, arm, version, *_counts(*counts)])


def test_figures_pool_the_counts_of_the_last_seven_days_of_the_busiest_versions(con):
    # v3: day -1 (10 replies, 9 of 10 thumbs up, quality 0.9 over 10) and day -6 (2 replies,
    # 0 of 2 up, quality 0.3 over 2); day -7 lies outside the 7-day figure window
    _perf(con, "bot", "3", LAST, 10, 9, 10, 0.9, 10, 4, 1, 1, 5)
    _perf(con, "bot", "3", LAST - timedelta(days=6), 2, 0, 2, 0.3, 2)
    _perf(con, "bot", "3", LAST - timedelta(days=7), 100, 0, 100, 0.0, 100)
    _perf(con, "bot", "unknown", LAST, 1, 1, 1, None, 0)
    _perf(con, "a|b", "2", LAST - timedelta(days=13), 1, 0, 0, None, 0)  # in the 14-day table
    _perf(con, "bot", "1", LAST - timedelta(days=14), 50, 0, 0, None, 0)  # outside it

    summary = model_performance_summary(con, "perf", max_versions=2)

    f = summary.figures
    assert f["interactions_7d__bot_v3"] == 12
    assert f["thumbs_up_rate_7d__bot_v3"] == pytest.approx(9 / 12)  # not mean(0.9, 0.0)
    assert f["mean_quality_score_7d__bot_v3"] == pytest.approx((0.9 * 10 + 0.3 * 2) / 12)
    assert f["auditor_error_rate_7d__bot_v3"] == pytest.approx(1 / 4)
    assert f["handoff_rate_7d__bot_v3"] == pytest.approx(1 / 5)
    assert f["interactions_7d__bot_unknown"] == 1
    assert "mean_quality_score_7d__bot_unknown" not in f  # nothing scored: no figure
    assert "auditor_error_rate_7d__bot_unknown" not in f
    assert not any(k.endswith("a_b_v2") for k in f)  # max_versions=2: the two busiest only
    assert f["model_versions"] == 3  # (bot, 3), (bot, unknown), (a|b, 2) in the 14-day window
    assert summary.notes == {"last_day": "2025-05-20"}
    md = summary.markdown
    assert md.startswith("Last 14 days of model_performance (2025-05-07 to 2025-05-20)")
    assert "| 2025-05-07 | a\\|b | 2 | 1 |" in md  # a pipe in a name does not break the table
    assert "2025-05-06" not in md
    assert md.count("\n| 2025-") == 5


def test_the_table_is_cut_at_max_rows_and_says_so(con):
    for d in range(5):
        _perf(con, "bot", "1", LAST - timedelta(days=d), 1, 1, 1, 0.5, 1)
    md = model_performance_summary(con, "perf", max_rows=3).markdown
    assert "; the first 3 rows." in md
    assert md.count("\n| 2025-") == 3 and "| 2025-05-20 |" in md and "| 2025-05-17 |" not in md


def test_experiment_arms_show_the_last_experiments_and_figures_of_the_latest(con):
    for experiment in (1, 2, 3):
        _arm(con, experiment, "control", "1", 10, 5, 10, 0.5, 10)
        _arm(con, experiment, "treatment", "2", 10, 8, 10, 0.8, 10)
    _arm(con, 3, "treatment", "4", 30, 0, 10, None, 0)  # the treatment arm's second version

    summary = experiment_arms_summary(con, "arms", experiments=2)

    assert summary.markdown.startswith("Arms of the last 2 experiments of 3, newest first.")
    assert "| 3 | treatment | 4 | 30 | 0.0% |" in summary.markdown
    assert "| 1 | control |" not in summary.markdown
    f = summary.figures
    assert (f["experiments"], f["experiment_id"]) == (3, 3)
    assert f["interactions__treatment"] == 40
    assert f["thumbs_up_rate__treatment"] == pytest.approx(8 / 20)
    assert f["mean_quality_score__treatment"] == pytest.approx(0.8)  # scored rows only
    assert f["thumbs_up_rate__control"] == pytest.approx(0.5)
    assert "auditor_error_rate__control" not in f


def test_empty_marts_say_so(con):
    perf = model_performance_summary(con, "perf")
    assert perf.figures == {"model_versions": 0} and "No interactions" in perf.markdown
    arms = experiment_arms_summary(con, "arms")
    assert arms.figures == {"experiments": 0}
    assert arms.markdown.startswith("No served experiment traffic yet")


def test_keys_labels_and_markdown():
    assert version_label("support-bot", "12") == "support-bot_v12"
    assert version_label("bot", "unknown") == "bot_unknown"
    assert metric_key("thumbs_up_rate_7d", "my bot/x_v2") == "thumbs_up_rate_7d__my_bot_x_v2"
    table = markdown_table([("a", "A", "rate"), ("b", "B", "text")],
                           [{"a": 0.5, "b": "x"}, {"a": None, "b": None}])
    assert table.splitlines() == ["| A | B |", "|---:|---|", "| 50.0% | x |", "| – | – |"]


@pytest.mark.parametrize("kwargs", [{"days": 0}, {"figure_days": -1}, {"max_rows": 0},
                                    {"max_versions": "5"}])
def test_bad_bounds_are_refused_by_name(con, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        model_performance_summary(con, "perf", **kwargs)

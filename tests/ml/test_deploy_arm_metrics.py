"""ml.deploy.arm_metrics on a real DuckDB warehouse with the registered table layouts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from ml import warehouse
from ml.deploy.arm_metrics import arm_stats, experiment_interaction_count, experiment_tag
from ml.deploy.experiment import compare_all

T0 = datetime(2025, 3, 1, 12, 0, 0)

# (tenant, id, minutes after T0, tags, thumbs, rating, requested_human, quality)
ROWS = [
    ("t1", "a", 0, ["experiment:7", "arm:control"], "up", 5, False, 0.8),
    ("t1", "b", 10, ["experiment:7", "arm:control", "faq"], "down", 2, True, 0.4),
    ("t1", "c", 20, ["experiment:7", "arm:control"], None, None, None, None),
    ("t2", "a", 30, ["experiment:7", "arm:control"], "up", 4, False, 0.7),  # same id, other tenant
    ("t1", "d", 40, ["arm:treatment", "experiment:7"], "up", 5, False, 0.9),
    ("t1", "e", 50, ["experiment:7", "arm:treatment"], "up", None, True, 0.6),
    ("t1", "f", 60, ["experiment:7", "arm:treatment"], "down", 3, None, None),
    ("t1", "g", 70, ["experiment:7", "arm:control", "arm:treatment"], "up", 5, False, 1.0),
    ("t1", "h", 80, ["experiment:7"], "up", 5, False, 1.0),  # no arm
    ("t1", "i", 90, ["experiment:8", "arm:treatment"], "down", 1, True, 0.1),  # other experiment
    ("t1", "j", 100, None, "down", 1, True, 0.1),
    ("t1", "k", 110, ["experiment:70", "arm:treatment"], "down", 1, True, 0.1),  # not 7
]

# (tenant, id, auditor, prompt_version, is_error, minutes after T0)
VERDICTS = [
    ("t1", "a", "rules", "r1", True, 5),
    ("t1", "a", "llm:x/y", "p1", False, 15),  # the latest verdict on a: clean
    ("t1", "b", "rules", "r1", False, 5),
    ("t1", "b", "llm:x/y", "p1", True, 25),  # the latest on b: an error
    ("t2", "a", "rules", "r1", False, 5),
    ("t1", "d", "rules", "r1", True, 45),
    ("t1", "e", "rules", "r1", False, 55),
    ("t1", "e", "llm:x/y", "p1", True, 55),  # a tie: counted as an error
    ("t1", "i", "rules", "r1", True, 95),
]


def build(path: Path, *, quality: bool = True, audits: bool = True) -> None:
    con = warehouse.connect(path)
    try:
        warehouse.ensure_table(con, "interactions")
        con.executemany(
            "INSERT INTO interactions (tenant_id, interaction_id, ts, tags, feedback_thumbs, "
            "feedback_rating, requested_human, partition_date) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(t, i, T0 + timedelta(minutes=m), tags, th, r, h, T0.date())
             for t, i, m, tags, th, r, h, _ in ROWS])
        if quality:
            warehouse.ensure_table(con, "interaction_quality")
            con.executemany(
                "INSERT INTO interaction_quality (tenant_id, interaction_id, quality_score, "
                "partition_date) VALUES (?, ?, ?, ?)",
                [(t, i, q, T0.date()) for t, i, *_, q in ROWS])
        if audits:
            warehouse.ensure_table(con, "audited_errors")
            con.executemany(
                "INSERT INTO audited_errors (tenant_id, interaction_id, auditor, prompt_version, "
                "is_error, audited_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(t, i, a, p, e, T0 + timedelta(minutes=m)) for t, i, a, p, e, m in VERDICTS])
    finally:
        con.close()


@pytest.fixture()
def wh(tmp_path: Path) -> Path:
    path = tmp_path / "warehouse.duckdb"
    build(path)
    return path


def test_arm_stats_counts_every_metric(wh: Path):
    con = warehouse.connect(wh, read_only=True)  # read-only SQL only
    try:
        c, t = arm_stats(con, experiment_id=7, control_version="3", treatment_version="4")
    finally:
        con.close()
    assert (c.arm, c.version, t.arm, t.version) == ("control", "3", "treatment", "4")
    # control: t1/a, t1/b, t1/c, t2/a
    assert c.n == 4
    assert (c.thumbs_up, c.thumbs_n) == (2, 3)
    assert (c.rating_sum, c.rating_sumsq, c.rating_n) == (11.0, 45.0, 3)
    assert (c.handoffs, c.handoff_n) == (1, 3)
    assert (c.errors, c.audited) == (1, 3)  # a: latest clean, b: latest error, t2/a: clean
    assert (c.quality_n, c.quality_sum) == (3, pytest.approx(1.9))
    assert c.quality_sumsq == pytest.approx(0.64 + 0.16 + 0.49)
    # treatment: d, e, f
    assert t.n == 3
    assert (t.thumbs_up, t.thumbs_n) == (2, 3)
    assert (t.rating_sum, t.rating_sumsq, t.rating_n) == (8.0, 34.0, 2)
    assert (t.handoffs, t.handoff_n) == (1, 2)
    assert (t.errors, t.audited) == (2, 2)  # d an error; e a tie, counted as an error
    assert (t.quality_n, t.quality_sum) == (2, pytest.approx(1.5))
    assert t.metric("quality_score")["value"] == pytest.approx(0.75)
    assert set(compare_all(c, t)) == {"thumbs_up_rate", "mean_rating", "handoff_rate",
                                      "error_rate", "quality_score"}


def test_since_filters_by_ts_and_an_aware_since_is_utc(wh: Path):
    con = warehouse.connect(wh, read_only=True)
    try:
        c, t = arm_stats(con, experiment_id=7, control_version="3", treatment_version="4",
                         since=T0 + timedelta(minutes=30))
        assert (c.n, t.n) == (1, 3)  # t2/a at +30 is included
        # 13:55 at UTC+1 is 12:55 UTC: only f (+60) of the treatment, no control
        aware = datetime(2025, 3, 1, 13, 55, tzinfo=timezone(timedelta(hours=1)))
        c, t = arm_stats(con, experiment_id=7, control_version="3", treatment_version="4",
                         since=aware)
        assert (c.n, t.n) == (0, 1) and t.thumbs_n == 1
        c, t = arm_stats(con, experiment_id=7, control_version="3", treatment_version="4",
                         since=datetime(2025, 3, 2, tzinfo=UTC))
        assert (c.n, t.n) == (0, 0)
    finally:
        con.close()


def test_other_experiments_and_missing_tags_are_left_out(wh: Path):
    con = warehouse.connect(wh, read_only=True)
    try:
        c, t = arm_stats(con, experiment_id=8, control_version="1", treatment_version="2")
        assert (c.n, t.n, t.errors, t.audited) == (0, 1, 1, 1)
        c, t = arm_stats(con, experiment_id=9, control_version="1", treatment_version="2")
        assert (c.n, t.n) == (0, 0)
        assert experiment_interaction_count(con, 7) == 9  # every row tagged experiment:7
        assert experiment_interaction_count(con, 8) == 1
        assert experiment_interaction_count(con, 70) == 1
        assert experiment_interaction_count(con, 9) == 0
    finally:
        con.close()


def test_tables_that_do_not_exist_yet_count_as_no_data(tmp_path: Path):
    empty = tmp_path / "empty.duckdb"
    warehouse.connect(empty).close()
    con = warehouse.connect(empty, read_only=True)
    try:
        c, t = arm_stats(con, experiment_id=7, control_version="1", treatment_version="2")
        assert (c.n, t.n, c.version, t.version) == (0, 0, "1", "2")
        assert experiment_interaction_count(con, 7) == 0
    finally:
        con.close()
    only = tmp_path / "only_interactions.duckdb"
    build(only, quality=False, audits=False)
    con = warehouse.connect(only, read_only=True)
    try:
        c, t = arm_stats(con, experiment_id=7, control_version="1", treatment_version="2")
        assert (c.n, c.thumbs_n, c.rating_n, t.n) == (4, 3, 3, 3)
        assert (c.quality_n, c.audited, t.quality_n, t.audited) == (0, 0, 0, 0)
    finally:
        con.close()


def test_experiment_ids_are_checked():
    assert experiment_tag(12) == "experiment:12"
    with pytest.raises(ValueError, match="experiment_id"):
        experiment_tag("12")  # type: ignore[arg-type]

"""The dbt analytics assets on a small hand-made warehouse: real dbt, real DuckDB, real Dagster."""

import json
import os
import shutil
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path

import dagster as dg
import dagster_dbt as dg_dbt
import duckdb
import pytest

from assets.analytics import (
    DBT_PROJECT_DIR,
    dbt_analytics_assets,
    dbt_resource,
    ensure_manifest,
    manifest_is_current,
)
from assets.resources import WAREHOUSE_POOL
from ml import warehouse as wh
from ml.tables import (
    AUDITED_COLUMNS,
    INTERACTION_COLUMNS,
    QUALITY_COLUMNS,
    QUARANTINE_COLUMNS,
    REVIEW_DECISION_COLUMNS,
)
from tests.stores import resources_for, warehouse_target

D1, D2 = date(2025, 1, 1), date(2025, 1, 2)
MARTS = {"fct_interactions", "daily_quality", "feedback_loop_metrics", "error_trends",
         "auditor_agreement", "training_data_growth", "model_comparison", "model_performance",
         "experiment_arms"}
MODELS = MARTS | {"stg_interactions", "stg_quarantined_interactions", "stg_interaction_quality",
                  "int_interactions_enriched", "int_interaction_outcomes", "stg_audited_errors",
                  "stg_review_decisions", "stg_model_evaluations"}


def _interaction(iid: str, tenant: str, day: date, version: str | None, **fields) -> dict:
    return {"interaction_id": iid, "tenant_id": tenant, "session_id": f"s-{iid}", "turn_index": 0,
            "ts": datetime(day.year, day.month, day.day, 12, 0), "model_provider": "local",
            "model_name": "tiny", "model_version": version, "user_message": "q", "response": "a",
            "messages": "[]", "tags": [], "pii_types": [], "source_file": f"{day}.jsonl",
            "partition_date": day, **fields}


def _quality(iid: str, tenant: str, day: date, score: float) -> dict:
    return {"interaction_id": iid, "tenant_id": tenant, "partition_date": day,
            "model_version": "v1", "user_satisfaction": score, "quality_score": score,
            "confidence": 0.5, "dimensions_present": 1, "scorer_version": "test"}


INTERACTIONS = [
    # acme, day 1, v1: thumbs up/down/none/up; latencies 1-4 s; ratings 5 and 2
    _interaction("i1", "acme", D1, "v1", feedback_thumbs="up", feedback_rating=5,
                 latency_ms=1000.0),
    _interaction("i2", "acme", D1, "v1", feedback_thumbs="down", feedback_rating=2,
                 latency_ms=2000.0, requested_human=True),
    _interaction("i3", "acme", D1, "v1", latency_ms=3000.0, abandoned=True,
                 corrected_response="the right answer", correction_agent_id="agent-1"),
    _interaction("i4", "acme", D1, "v1", feedback_thumbs="up", latency_ms=4000.0,
                 requested_human=False),
    # acme, day 1, no model version, no feedback, no latency, not scored
    _interaction("i5", "acme", D1, None),
    # beta, day 2: a comment is feedback too
    _interaction("i6", "beta", D2, "v1", feedback_comment="great", latency_ms=500.0),
]
QUALITY = [_quality("i1", "acme", D1, 0.9), _quality("i2", "acme", D1, 0.3),
           _quality("i3", "acme", D1, 0.4), _quality("i4", "acme", D1, 0.8),
           _quality("i6", "beta", D2, 0.2)]
QUARANTINED = [
    {"source_file": "a.jsonl", "line_no": 7, "partition_date": D1, "interaction_id": "bad-1",
     "reason": "timestamp: Field required",
     "raw": '{"interaction_id": "bad-1", "tenant_id": "acme"}'},
    {"source_file": "a.jsonl", "line_no": 8, "partition_date": D1, "interaction_id": None,
     "reason": "line is not JSON", "raw": "{not json"},
    {"source_file": "b.jsonl", "line_no": 1, "partition_date": D2, "interaction_id": "bad-2",
     "reason": "session_id: Field required", "raw": '{"interaction_id": "bad-2"}'},
]


def _verdict(iid: str, day: date, is_error: bool, category=None, severity=None,
             confidence=0.8, auditor="rules", tenant="acme", in_calibration=False,
             label_weight=None) -> dict:
    return {"interaction_id": iid, "tenant_id": tenant, "partition_date": day, "auditor": auditor,
            "prompt_version": "rules-v1", "is_error": is_error, "category": category,
            "severity": severity, "confidence": confidence, "explanation": "test",
            "signals": [], "answered_by": auditor, "audited_at": datetime(2025, 1, 3, 9, 0),
            "in_calibration": in_calibration, "label_weight": label_weight}


# rules auditor on day 1 (acme): flags i2 (confirmed), i3 (no decision, but a human correction:
# NOT a label, since the rules auditor reads corrections; reported in correction_* instead),
# i4 (dismissed); passes i1 (a "no error found" item a reviewer confirmed) and i5 (unlabeled).
# i1 and i4 (no signal) are in the calibration sample: i4 a flag (weight 1), i1 a clean verdict
# put to review at clean_review_rate 0.2 (weight 5).
# -> raw labels: i2 tp, i4 fp, i1 fn => labeled 3, precision = 1 / 2 (all decided flags)
# -> calibration sample: i4 fp (1), i1 fn (5): weighted TP 0, FP 1, FN 5, TN 0, N 6
#    recall = 0 / (0 + 5) = 0 (raw tp / (tp + fn) would say 1/2)
#    kappa: po = 0 / 6, pe = ((0+1)(0+5) + (5+0)(1+0)) / 36 = 10/36 -> (0 - 10/36) / (26/36) = -5/13
AUDITED = [
    _verdict("i1", D1, False, in_calibration=True, label_weight=5.0),
    _verdict("i2", D1, True, "factual_error", "high", 0.9),
    _verdict("i3", D1, True, "incomplete", "medium", 0.6),
    _verdict("i4", D1, True, "factual_error", "low", 0.5, in_calibration=True, label_weight=1.0),
    _verdict("i5", D1, False),
]


def _event(eid: int, iid: str, action: str, before, after) -> dict:
    return {"event_id": eid, "item_id": eid, "kind": "error", "tenant_id": "acme",
            "interaction_id": iid, "actor": "ann", "action": action, "status_before": before,
            "status_after": after, "note": None, "event_at": datetime(2025, 1, 3, 10, eid),
            "auditor": "rules", "prompt_version": "rules-v1", "category": "factual_error",
            "severity": "high", "source": None}


DECISIONS = [_event(1, "i2", "created", None, "pending"), _event(2, "i2", "decide", "pending",
                                                                  "confirmed"),
             _event(3, "i4", "decide", "pending", "dismissed"),
             _event(4, "i1", "decide", "pending", "confirmed")]


def _create(con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, str],
            rows: list[dict]) -> None:
    cols = ", ".join(f'"{c}" {t}' for c, t in columns.items())
    con.execute(f'CREATE TABLE main."{table}" ({cols})')
    for row in rows:
        unknown = set(row) - set(columns)
        assert not unknown, f"test row for {table} has columns not in ml.schema: {unknown}"
        names = ", ".join(f'"{c}"' for c in row)
        marks = ", ".join("?" for _ in row)
        con.execute(f'INSERT INTO main."{table}" ({names}) VALUES ({marks})', list(row.values()))


def _build_warehouse(target, interactions: list[dict]) -> None:
    con = wh.connect(target)
    try:
        _create(con, "interactions", INTERACTION_COLUMNS, interactions)
        _create(con, "quarantined_interactions", QUARANTINE_COLUMNS, QUARANTINED)
        _create(con, "interaction_quality", QUALITY_COLUMNS, QUALITY)
        _create(con, "audited_errors", AUDITED_COLUMNS, AUDITED)
        _create(con, "review_decisions", REVIEW_DECISION_COLUMNS, DECISIONS)
    finally:
        con.close()


def _query(target, sql: str) -> list[dict]:
    con = wh.connect(target, read_only=True)
    try:
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.close()


def _materialize(learnloop_home: Path, raise_on_error: bool = True):
    return dg.materialize(
        [dbt_analytics_assets],
        resources=resources_for(dbt=dbt_resource),
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=raise_on_error,
    )


def test_asset_graph_wiring():
    specs = dbt_analytics_assets.specs_by_key
    assert {k.to_user_string() for k in specs} == MODELS
    assert all(s.group_name == "analytics" and s.kinds == {"dbt", "duckdb"} for s in specs.values())
    sources = {d.asset_key for s in specs.values() for d in s.deps} - set(specs)
    assert sources == {dg.AssetKey("interactions"), dg.AssetKey("quarantined_interactions"),
                       dg.AssetKey("interaction_quality"), dg.AssetKey("audited_errors"),
                       dg.AssetKey("review_decisions"), dg.AssetKey("candidate_evaluation")}
    assert dbt_analytics_assets.op.pool == WAREHOUSE_POOL
    checked = {c.asset_key.to_user_string() for c in dbt_analytics_assets.check_specs}
    assert MARTS <= checked
    dg.Definitions.validate_loadable(dg.Definitions(
        assets=[dbt_analytics_assets],
        resources=resources_for(dbt=dbt_resource),
    ))


# also on a DuckLake warehouse in every test run (the whole file runs on one with
# LEARNLOOP_TEST_WAREHOUSE=ducklake: tests/lakes.py)
@pytest.mark.parametrize("learnloop_home", ["duckdb", "ducklake"], indirect=True)
def test_dbt_build_computes_marts_and_reports_tests_as_checks(learnloop_home: Path):
    # where Settings() puts it under LEARNLOOP_HOME (or the test's DuckLake)
    warehouse = warehouse_target(learnloop_home)
    _build_warehouse(warehouse, INTERACTIONS)

    result = _materialize(learnloop_home)

    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == MODELS
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == len(list(dbt_analytics_assets.check_specs))
    failed = [e.check_name for e in evaluations if not e.passed]
    assert not failed
    names = {e.check_name for e in evaluations}
    assert "unique_combination_fct_interactions_tenant_id__interaction_id" in names
    assert "relationships_fct_interactions_interaction_id__interaction_id__ref_stg_interactions_" \
        in names
    assert "assert_daily_quality_covers_every_interaction" in names
    row_counts = {e.asset_key.to_user_string(): e.materialization.metadata.get("dagster/row_count")
                  for e in result.get_asset_materialization_events()}
    assert row_counts["fct_interactions"].value == 6
    assert row_counts["daily_quality"].value == 3
    assert row_counts["feedback_loop_metrics"].value == 4
    if isinstance(warehouse, Path):
        # the run left no DuckDB handle open: another process can take the writer lock
        probe = subprocess.run(
            [sys.executable, "-c", "import duckdb, sys; duckdb.connect(sys.argv[1]).close()",
             str(warehouse)], capture_output=True, text=True, timeout=60)
        assert probe.returncode == 0, probe.stderr

    fct = _query(warehouse, "SELECT interaction_id, handoff, has_feedback, latency_s, "
                            "is_low_quality, model_version FROM analytics.fct_interactions "
                            "ORDER BY interaction_id")
    assert [r["interaction_id"] for r in fct] == ["i1", "i2", "i3", "i4", "i5", "i6"]
    assert [r["handoff"] for r in fct] == [False, True, True, False, False, False]
    assert [r["has_feedback"] for r in fct] == [True, True, False, True, False, True]
    assert fct[0]["latency_s"] == pytest.approx(1.0)
    assert [r["is_low_quality"] for r in fct] == [False, True, True, False, None, True]
    assert fct[4]["model_version"] == "unknown"

    daily = {(r["tenant_id"], str(r["day"]), r["model_version"]): r for r in _query(
        warehouse, "SELECT * FROM analytics.daily_quality")}
    assert set(daily) == {("acme", "2025-01-01", "v1"), ("acme", "2025-01-01", "unknown"),
                          ("beta", "2025-01-02", "v1")}
    v1 = daily[("acme", "2025-01-01", "v1")]
    assert v1["interactions"] == 4
    assert v1["thumbs_rated"] == 3
    assert v1["thumbs_up_rate"] == pytest.approx(2 / 3)
    assert v1["mean_rating"] == pytest.approx(3.5)
    assert v1["handoff_rate"] == pytest.approx(0.5)
    assert v1["mean_quality"] == pytest.approx(0.6)
    assert v1["latency_p50_s"] == pytest.approx(2.5)  # interpolated median of 1, 2, 3, 4 s
    assert v1["latency_p95_s"] == pytest.approx(3.85)  # 3 + 0.85 * (4 - 3)
    unknown = daily[("acme", "2025-01-01", "unknown")]
    assert unknown["interactions"] == 1
    assert unknown["thumbs_up_rate"] is None and unknown["mean_quality"] is None
    assert unknown["latency_p50_s"] is None

    loop = {(str(r["day"]), r["tenant_id"]): r for r in _query(
        warehouse, "SELECT * FROM analytics.feedback_loop_metrics")}
    assert set(loop) == {("2025-01-01", "acme"), ("2025-01-01", "unknown"),
                         ("2025-01-02", "default"), ("2025-01-02", "beta")}
    acme = loop[("2025-01-01", "acme")]
    assert (acme["interactions"], acme["quarantined"]) == (5, 1)
    assert acme["feedback_coverage_rate"] == pytest.approx(3 / 5)
    assert acme["correction_rate"] == pytest.approx(1 / 5)
    assert acme["handoff_rate"] == pytest.approx(2 / 5)
    assert acme["abandonment_rate"] == pytest.approx(1 / 5)
    assert acme["quarantine_rate"] == pytest.approx(1 / 6)
    assert acme["scored_interactions"] == 4
    assert acme["low_quality_rate"] == pytest.approx(2 / 4)
    only_rejects = loop[("2025-01-01", "unknown")]
    assert (only_rejects["interactions"], only_rejects["quarantined"]) == (0, 1)
    assert only_rejects["quarantine_rate"] == pytest.approx(1.0)
    assert only_rejects["feedback_coverage_rate"] is None
    beta = loop[("2025-01-02", "beta")]
    assert beta["feedback_coverage_rate"] == pytest.approx(1.0)
    assert beta["low_quality_rate"] == pytest.approx(1.0)
    assert beta["quarantined"] == 0

    trends = {r["category"]: r for r in _query(
        warehouse, "SELECT * FROM analytics.error_trends WHERE tenant_id = 'acme'")}
    assert set(trends) == {"factual_error", "incomplete"}
    assert trends["factual_error"]["errors"] == 2 and trends["factual_error"]["audited"] == 5
    assert trends["factual_error"]["error_rate"] == pytest.approx(2 / 5)
    assert trends["factual_error"]["severe_errors"] == 1
    assert trends["incomplete"]["error_rate"] == pytest.approx(1 / 5)

    (agree,) = _query(warehouse, "SELECT * FROM analytics.auditor_agreement")
    assert (agree["audited"], agree["flagged"], agree["confirmed"], agree["dismissed"]) == (5, 3, 1, 1)
    assert agree["negatives_reviewed"] == 1
    assert (agree["labeled"], agree["tp"], agree["fp"], agree["fn"], agree["tn"]) == (3, 1, 1, 1, 0)
    assert (agree["correction_labeled"], agree["correction_flagged"]) == (1, 1)
    assert agree["precision"] == pytest.approx(0.5)
    assert agree["calibration_labeled"] == 2
    assert (agree["weighted_tp"], agree["weighted_fp"], agree["weighted_fn"],
            agree["weighted_tn"]) == pytest.approx((0, 1, 5, 0))
    assert agree["recall"] == pytest.approx(0.0)
    assert agree["cohens_kappa"] == pytest.approx(-5 / 13)


def test_same_id_in_two_tenants_passes_the_uniqueness_check(learnloop_home: Path):
    """Ids are per tenant: (tenant_id, interaction_id) is the key (issue 8, item 4)."""
    _build_warehouse(warehouse_target(learnloop_home),
                     INTERACTIONS + [dict(INTERACTIONS[0], tenant_id="other")])
    result = _materialize(learnloop_home, raise_on_error=False)
    by_name = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert by_name["unique_combination_stg_interactions_tenant_id__interaction_id"].passed
    assert by_name["unique_combination_fct_interactions_tenant_id__interaction_id"].passed


def test_duplicated_interaction_id_fails_the_uniqueness_check(learnloop_home: Path):
    _build_warehouse(warehouse_target(learnloop_home), INTERACTIONS + [dict(INTERACTIONS[0])])

    result = _materialize(learnloop_home, raise_on_error=False)

    assert not result.success  # dbt build exits non-zero on an error-severity test failure
    by_name = {e.check_name: e for e in result.get_asset_check_evaluations()}
    unique = by_name["unique_combination_stg_interactions_tenant_id__interaction_id"]
    assert unique.asset_key == dg.AssetKey("stg_interactions")
    assert not unique.passed
    assert unique.metadata["dagster_dbt/failed_row_count"].value == 1
    assert by_name["not_null_stg_interactions_interaction_id"].passed
    # dbt skips everything downstream of the failed test: no mart is built on bad data
    # (error_trends reads only the auditor's verdicts, training_data_growth only the review
    # decisions and model_comparison only the model evaluations, not stg_interactions, so they
    # still build)
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "stg_interactions" in materialized
    assert materialized & MARTS == {"error_trends", "training_data_growth", "model_comparison"}


def test_ensure_manifest_parses_a_clean_checkout(tmp_path: Path):
    project_dir = tmp_path / "dbt_project"
    shutil.copytree(DBT_PROJECT_DIR, project_dir,
                    ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    project = dg_dbt.DbtProject(project_dir=project_dir, profiles_dir=project_dir)
    assert not manifest_is_current(project)

    path = ensure_manifest(project)

    assert path == project.manifest_path and path.exists()
    assert manifest_is_current(project)
    manifest = json.loads(path.read_text())
    models = {n["name"] for n in manifest["nodes"].values() if n["resource_type"] == "model"}
    assert models == MODELS
    # an edited model makes the manifest stale again
    model = project_dir / "models" / "marts" / "daily_quality.sql"
    model.write_text(model.read_text() + "\n")
    stat = path.stat()
    os.utime(model, (stat.st_atime, stat.st_mtime + 10))
    assert not manifest_is_current(project)


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def test_dbt_writes_nothing_into_the_source_tree(learnloop_home: Path):
    """dbt's target/ (manifest, partial parse, run artifacts) and its log live under
    $LEARNLOOP_HOME/dbt/target: a build leaves dbt_project/ as it was."""
    from assets.analytics import dbt_project

    _build_warehouse(warehouse_target(learnloop_home), INTERACTIONS)
    before = _tree(DBT_PROJECT_DIR)

    _materialize(learnloop_home)

    assert _tree(DBT_PROJECT_DIR) == before
    assert not dbt_project.manifest_path.is_relative_to(DBT_PROJECT_DIR)
    runs = list((learnloop_home / "dbt" / "target").glob("dbt_analytics-*"))
    assert len(runs) == 1
    assert (runs[0] / "run_results.json").exists() and (runs[0] / "dbt.log").exists()

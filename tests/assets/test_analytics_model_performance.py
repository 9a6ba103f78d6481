"""The model_performance and experiment_arms marts on a hand-made warehouse (real dbt, real
DuckDB, real Dagster): served replies of two model versions in two experiments, with known
feedback, handoff signals, quality scores and auditor verdicts; every rate below is computed by
hand from the rows inserted here. Their materializations carry the latest rows as markdown and
figures per version and per arm."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from assets.analytics import AUTOMATION_CONDITION, dbt_analytics_assets, dbt_resource
from ml import warehouse as wh
from ml.tables import AUDITED_COLUMNS, INTERACTION_COLUMNS, QUALITY_COLUMNS
from tests.stores import resources_for, warehouse_target

D1, D2 = date(2025, 3, 1), date(2025, 3, 2)
MARTS = ("model_performance", "experiment_arms")


def _reply(iid: str, day: date, hour: int, version: str, tags: list[str], *,
           provider: str = "learnloop", thumbs: str | None = None, rating: int | None = None,
           handoff: bool | None = None) -> dict:
    return {"interaction_id": iid, "tenant_id": "acme", "session_id": f"s-{iid}", "turn_index": 0,
            "ts": datetime(day.year, day.month, day.day, hour, 0), "model_provider": provider,
            "model_name": "bot", "model_version": version, "user_message": "q", "response": "a",
            "messages": "[]", "tags": tags, "pii_types": [], "source_file": f"{day}.jsonl",
            "partition_date": day, "feedback_thumbs": thumbs, "feedback_rating": rating,
            "requested_human": handoff}


E7C, E7T = ["experiment:7", "arm:control"], ["experiment:7", "arm:treatment"]
E3C, E3T = ["experiment:3", "arm:control"], ["experiment:3", "arm:treatment"]
INTERACTIONS = [
    # day 1: experiment 3 (control v1, treatment v2) and one v1 reply outside any experiment
    _reply("e1", D1, 9, "1", E3C, thumbs="up"),
    _reply("e2", D1, 10, "2", E3T, thumbs="down"),
    _reply("n1", D1, 11, "1", ["faq"], thumbs="up", handoff=False),
    # day 2: experiment 7, control = v1
    _reply("c1", D2, 8, "1", E7C, thumbs="up", rating=5, handoff=False),
    _reply("c2", D2, 9, "1", E7C, thumbs="down", rating=2, handoff=True),
    _reply("c3", D2, 10, "1", E7C),
    # day 2: experiment 7, treatment = v2
    _reply("t1", D2, 8, "2", E7T, thumbs="up", rating=4, handoff=False),
    _reply("t2", D2, 9, "2", E7T, thumbs="up", rating=5, handoff=False),
    _reply("t3", D2, 10, "2", E7T, thumbs="down", handoff=False),
    _reply("t4", D2, 11, "2", E7T, thumbs="up", handoff=True),
    # imported log of another provider with look-alike tags: a v1 reply, in no experiment
    _reply("i1", D2, 12, "1", E7C, provider="local", thumbs="down"),
    # an experiment tag that is not an integer id: a v2 reply, in no experiment
    _reply("x1", D2, 13, "2", ["experiment:abc", "arm:treatment"]),
]
QUALITY = {"n1": 0.6, "c1": 0.8, "c2": 0.4, "t1": 0.9, "t2": 0.7, "t3": 0.5}


def _verdict(iid: str, day: date, is_error: bool, auditor: str, at_hour: int) -> dict:
    return {"interaction_id": iid, "tenant_id": "acme", "partition_date": day, "auditor": auditor,
            "prompt_version": f"{auditor}-v1", "is_error": is_error,
            "category": "factual_error" if is_error else None,
            "severity": "high" if is_error else None, "confidence": 0.8, "explanation": "test",
            "signals": [], "answered_by": auditor, "audited_at": datetime(2025, 3, 3, at_hour)}


# the latest verdict counts: c1 flagged by the rules, then cleared by the LLM auditor (not an
# error); t3 passed by the rules, then flagged by the LLM auditor (an error)
AUDITED = [
    _verdict("e2", D1, True, "rules", 1),
    _verdict("c1", D2, True, "rules", 1), _verdict("c1", D2, False, "openai", 2),
    _verdict("c2", D2, True, "rules", 1),
    _verdict("t1", D2, False, "rules", 1),
    _verdict("t3", D2, False, "rules", 1), _verdict("t3", D2, True, "openai", 2),
]


def _create(con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, str],
            rows: list[dict]) -> None:
    cols = ", ".join(f'"{c}" {t}' for c, t in columns.items())
    con.execute(f'CREATE TABLE main."{table}" ({cols})')
    for row in rows:
        assert not set(row) - set(columns), set(row) - set(columns)
        con.execute(f'INSERT INTO main."{table}" ({", ".join(row)}) '
                    f'VALUES ({", ".join("?" for _ in row)})', list(row.values()))


def _build_warehouse(path: Path, interactions: list[dict], audited: list[dict]) -> None:
    by_id = {r["interaction_id"]: r for r in interactions}
    quality = [{"interaction_id": iid, "tenant_id": "acme",
                "partition_date": by_id[iid]["partition_date"],
                "model_version": by_id[iid]["model_version"], "quality_score": score,
                "confidence": 0.5, "dimensions_present": 1, "scorer_version": "test"}
               for iid, score in QUALITY.items() if iid in by_id]
    con = wh.connect(path)
    try:
        _create(con, "interactions", INTERACTION_COLUMNS, interactions)
        _create(con, "interaction_quality", QUALITY_COLUMNS, quality)
        if audited:
            _create(con, "audited_errors", AUDITED_COLUMNS, audited)
    finally:
        con.close()  # the other source tables are created empty by the asset


def _materialize(raise_on_error: bool = True, instance: dg.DagsterInstance | None = None,
                 selection: list[dg.AssetKey] | None = None) -> dg.ExecuteInProcessResult:
    return dg.materialize([dbt_analytics_assets], resources=resources_for(dbt=dbt_resource),
                          instance=instance or dg.DagsterInstance.ephemeral(),
                          selection=selection, raise_on_error=raise_on_error)


def _rows(path: Path, table: str) -> list[dict]:
    con = wh.connect(path, read_only=True)
    try:
        cur = con.execute(f"SELECT * FROM analytics.{table}")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


def _metadata(result: dg.ExecuteInProcessResult, name: str) -> dict:
    [mat] = [e.materialization for e in result.get_asset_materialization_events()
             if e.asset_key == dg.AssetKey(name)]
    return {k: v.value for k, v in mat.metadata.items()}


def _checks(result: dg.ExecuteInProcessResult, name: str) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()
            if e.asset_key == dg.AssetKey(name)}


def test_model_performance_and_experiment_arms_from_served_replies(learnloop_home: Path):
    warehouse = warehouse_target(learnloop_home)
    _build_warehouse(warehouse, INTERACTIONS, AUDITED)

    result = _materialize()

    assert result.success
    for mart in MARTS:
        checks = _checks(result, mart)
        assert checks and all(checks.values()), (mart, checks)
    assert "unique_combination_model_performance_model_name__model_version__day" in \
        _checks(result, "model_performance")
    assert "assert_model_performance_covers_every_interaction" in \
        _checks(result, "model_performance")
    assert "accepted_values_experiment_arms_arm__control__treatment" in \
        _checks(result, "experiment_arms")

    perf = {(r["model_name"], r["model_version"], r["day"]): r
            for r in _rows(warehouse, "model_performance")}
    assert set(perf) == {("bot", "1", D1), ("bot", "2", D1), ("bot", "1", D2), ("bot", "2", D2)}
    # v1 on day 2: c1, c2, c3 and the imported i1 (provider 'local' counts here)
    v1 = perf[("bot", "1", D2)]
    assert (v1["interactions"], v1["thumbs_given"], v1["thumbs_up"]) == (4, 3, 1)
    assert v1["thumbs_up_rate"] == pytest.approx(1 / 3)
    assert (v1["ratings_given"], v1["mean_rating"]) == (2, pytest.approx(3.5))
    # requested_human: c1 false, c2 true; c3 and i1 do not report it
    assert (v1["handoff_signals"], v1["handoffs"]) == (2, 1)
    assert v1["handoff_rate"] == pytest.approx(0.5)
    # latest verdicts: c1 cleared, c2 an error
    assert (v1["audited"], v1["audited_errors"]) == (2, 1)
    assert v1["auditor_error_rate"] == pytest.approx(0.5)
    assert (v1["scored"], v1["mean_quality_score"]) == (2, pytest.approx(0.6))
    assert (v1["first_ts"], v1["last_ts"]) == (datetime(2025, 3, 2, 8), datetime(2025, 3, 2, 12))
    # v2 on day 2: t1-t4 and x1 (no feedback, no signal)
    v2 = perf[("bot", "2", D2)]
    assert (v2["interactions"], v2["thumbs_given"], v2["thumbs_up"]) == (5, 4, 3)
    assert v2["thumbs_up_rate"] == pytest.approx(0.75)
    assert v2["mean_rating"] == pytest.approx(4.5)
    assert (v2["handoff_signals"], v2["handoffs"]) == (4, 1)
    assert v2["handoff_rate"] == pytest.approx(0.25)
    assert (v2["audited"], v2["audited_errors"]) == (2, 1)  # t1 clean; t3 flagged last
    assert v2["auditor_error_rate"] == pytest.approx(0.5)
    assert v2["mean_quality_score"] == pytest.approx(0.7)
    v1d1 = perf[("bot", "1", D1)]
    assert (v1d1["interactions"], v1d1["thumbs_up_rate"]) == (2, pytest.approx(1.0))
    assert v1d1["mean_rating"] is None and v1d1["auditor_error_rate"] is None
    assert (v1d1["handoff_signals"], v1d1["handoff_rate"]) == (1, pytest.approx(0.0))
    v2d1 = perf[("bot", "2", D1)]
    assert v2d1["auditor_error_rate"] == pytest.approx(1.0) and v2d1["handoff_rate"] is None

    arms = {(r["experiment_id"], r["arm"], r["model_version"]): r
            for r in _rows(warehouse, "experiment_arms")}
    # neither the imported i1 nor x1 ('experiment:abc') is experiment traffic
    assert set(arms) == {(7, "control", "1"), (7, "treatment", "2"), (3, "control", "1"),
                         (3, "treatment", "2")}
    control, treatment = arms[(7, "control", "1")], arms[(7, "treatment", "2")]
    assert (control["interactions"], treatment["interactions"]) == (3, 4)
    assert control["thumbs_up_rate"] == pytest.approx(0.5)
    assert treatment["thumbs_up_rate"] == pytest.approx(0.75)
    assert (control["mean_rating"], treatment["mean_rating"]) == pytest.approx((3.5, 4.5))
    assert (control["handoff_rate"], treatment["handoff_rate"]) == pytest.approx((0.5, 0.25))
    assert (control["auditor_error_rate"], treatment["auditor_error_rate"]) == \
        pytest.approx((0.5, 0.5))
    assert (control["mean_quality_score"], treatment["mean_quality_score"]) == \
        pytest.approx((0.6, 0.7))
    assert (control["model_name"], control["first_ts"], control["last_ts"]) == \
        ("bot", datetime(2025, 3, 2, 8), datetime(2025, 3, 2, 10))
    assert arms[(3, "treatment", "2")]["auditor_error_rate"] == pytest.approx(1.0)

    meta = _metadata(result, "model_performance")
    assert meta["dagster/row_count"] == 4
    table = meta["latest_rows"]
    assert "Last 14 days of model_performance (2025-03-01 to 2025-03-02)" in table
    assert "| day | model | version | interactions | thumbs up |" in table
    assert "| 2025-03-02 | bot | 2 | 5 | 75.0% | 4 | 4.50 | 2 | 25.0% | 50.0% | 2 | 0.700 |" \
        in table
    assert table.index("| 2025-03-02 | bot | 1 |") < table.index("| 2025-03-01 | bot | 1 |")
    assert meta["last_day"] == "2025-03-02" and meta["model_versions"] == 2
    # the last 7 days pooled per version: v1 = n1, e1 (day 1) + c1-c3, i1 (day 2)
    assert meta["interactions_7d__bot_v1"] == 6
    assert meta["thumbs_up_rate_7d__bot_v1"] == pytest.approx(3 / 5)
    assert meta["handoff_rate_7d__bot_v1"] == pytest.approx(1 / 3)
    assert meta["auditor_error_rate_7d__bot_v1"] == pytest.approx(1 / 2)
    assert meta["mean_quality_score_7d__bot_v1"] == pytest.approx(0.6)
    assert meta["thumbs_up_rate_7d__bot_v2"] == pytest.approx(3 / 5)
    assert meta["auditor_error_rate_7d__bot_v2"] == pytest.approx(2 / 3)
    assert meta["mean_quality_score_7d__bot_v2"] == pytest.approx(0.7)

    meta = _metadata(result, "experiment_arms")
    assert meta["dagster/row_count"] == 4
    table = meta["latest_rows"]
    assert "Arms of the last 2 experiments of 2, newest first" in table
    assert table.index("| 7 | control | 1 | 3 | 50.0% |") < table.index("| 3 | control | 1 |")
    assert (meta["experiments"], meta["experiment_id"]) == (2, 7)
    assert (meta["interactions__control"], meta["interactions__treatment"]) == (3, 4)
    assert meta["thumbs_up_rate__control"] == pytest.approx(0.5)
    assert meta["thumbs_up_rate__treatment"] == pytest.approx(0.75)
    assert meta["mean_quality_score__treatment"] == pytest.approx(0.7)
    assert meta["handoff_rate__treatment"] == pytest.approx(0.25)
    assert meta["auditor_error_rate__control"] == pytest.approx(0.5)


def test_the_run_the_automation_requests_after_new_replies_rebuilds_the_marts(
        learnloop_home: Path):
    """A first full build, then a served reply lands: the automation sensor's evaluation
    requests the models downstream of interactions, and that subset build (its dbt tests riding
    along) brings the new reply into both marts."""
    from orchestration.definitions import defs

    warehouse = warehouse_target(learnloop_home)
    _build_warehouse(warehouse, INTERACTIONS, AUDITED)
    instance = dg.DagsterInstance.ephemeral()
    assert _materialize(instance=instance).success
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert first.total_requested == 0

    con = wh.connect(warehouse)
    try:
        row = _reply("t5", D2, 15, "2", E7T, thumbs="down")
        con.execute(f"INSERT INTO main.interactions ({', '.join(row)}) "
                    f"VALUES ({', '.join('?' for _ in row)})", list(row.values()))
    finally:
        con.close()
    instance.report_runless_asset_event(dg.AssetMaterialization("interactions",
                                                                partition=str(D2)))
    second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    requested = {r.key for r in second.results
                 if isinstance(r.key, dg.AssetKey) and second.get_num_requested(r.key)}
    assert {dg.AssetKey(m) for m in MARTS} <= requested
    assert dg.AssetKey("training_data_growth") not in requested

    result = _materialize(instance=instance, selection=sorted(requested))

    assert result.success
    assert {e.asset_key for e in result.get_asset_materialization_events()} == requested
    assert all(e.passed for e in result.get_asset_check_evaluations())
    treatment = [r for r in _rows(warehouse, "experiment_arms")
                 if (r["experiment_id"], r["arm"]) == (7, "treatment")]
    assert [(r["interactions"], r["thumbs_up_rate"]) for r in treatment] == [(5, 3 / 5)]
    assert _metadata(result, "experiment_arms")["thumbs_up_rate__treatment"] == \
        pytest.approx(3 / 5)
    assert _metadata(result, "model_performance")["interactions_7d__bot_v2"] == 7


def test_the_marts_build_without_served_traffic_or_verdicts(learnloop_home: Path):
    """Imported logs only, no audited_errors table yet: experiment_arms builds empty and says so."""
    warehouse = warehouse_target(learnloop_home)
    imported = [_reply("i1", D1, 9, "1", [], provider="local", thumbs="up"),
                _reply("i2", D1, 10, "1", ["experiment:7", "arm:control"], provider="local")]
    _build_warehouse(warehouse, imported, audited=[])

    result = _materialize()

    assert result.success
    assert all(_checks(result, "experiment_arms").values())
    assert _rows(warehouse, "experiment_arms") == []
    [row] = _rows(warehouse, "model_performance")
    assert (row["interactions"], row["thumbs_up_rate"], row["audited"]) == (2, 1.0, 0)
    assert row["auditor_error_rate"] is None
    meta = _metadata(result, "experiment_arms")
    assert meta["dagster/row_count"] == 0 and meta["experiments"] == 0
    assert meta["latest_rows"].startswith("No served experiment traffic yet")
    assert "experiment_id" not in meta
    meta = _metadata(result, "model_performance")
    assert meta["interactions_7d__bot_v1"] == 2
    assert "auditor_error_rate_7d__bot_v1" not in meta  # nothing audited: no figure, not 0


def test_an_experiment_reply_without_an_arm_fails_the_experiment_arms_test(learnloop_home: Path):
    warehouse = warehouse_target(learnloop_home)
    _build_warehouse(warehouse, INTERACTIONS + [_reply("z1", D2, 14, "2", ["experiment:7"])],
                     AUDITED)

    result = _materialize(raise_on_error=False)

    assert not result.success
    checks = _checks(result, "experiment_arms")
    assert checks["not_null_experiment_arms_arm"] is False
    assert checks["accepted_values_experiment_arms_arm__control__treatment"] is True


def test_the_dbt_models_carry_the_automation_condition():
    specs = dbt_analytics_assets.specs_by_key
    for mart in MARTS:
        assert specs[dg.AssetKey(mart)].automation_condition == AUTOMATION_CONDITION
    assert all(s.automation_condition == AUTOMATION_CONDITION for s in specs.values())

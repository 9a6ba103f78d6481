"""The training_data_growth mart on a hand-made warehouse (real dbt, real DuckDB, real Dagster):
sample decisions per day, tenant, source and category, dense over days, with running totals;
only `decide` events of `sample` items count, each item once (its latest decision)."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import dagster as dg
import pytest

from assets.analytics import ANALYTICS_GROUP, dbt_analytics_assets, dbt_resource
from ml import warehouse as wh
from ml.tables import REVIEW_DECISION_COLUMNS
from tests.stores import resources_for, warehouse_target

D1, D2, D3 = date(2025, 1, 1), date(2025, 1, 2), date(2025, 1, 3)


def _event(eid: int, item: int, day: date, status: str | None, *, kind="sample",
           action="decide", source="retrieval", category="factual_error",
           tenant="acme") -> dict:
    return {"event_id": eid, "item_id": item, "kind": kind, "tenant_id": tenant,
            "interaction_id": f"i{item}", "actor": "ann", "action": action,
            "status_before": "pending", "status_after": status, "note": None,
            "event_at": datetime(day.year, day.month, day.day, 23, 59, eid % 60),
            "auditor": None, "prompt_version": None, "category": category, "severity": None,
            "source": source}


EVENTS = [
    _event(1, 1, D1, "pending", action="created", source="human_agent"),  # not a decision
    _event(2, 1, D1, "approved", source="human_agent"),
    _event(3, 2, D1, "edited", source="human_agent"),
    _event(4, 3, D1, "approved"),  # decided again on day 3: counts as rejected, on day 3
    _event(5, 4, D1, "approved", category="off_topic"),
    _event(6, 9, D1, "confirmed", kind="error"),  # an error decision: not training data
    _event(7, 4, D2, None, action="tag", category="off_topic"),  # a tag: no decision
    _event(8, 5, D3, "approved", source="human_agent"),
    _event(9, 6, D3, "approved", category=None),
    _event(10, 7, D3, "rejected", tenant="beta"),
    _event(11, 3, D3, "rejected"),
]


def _rows(path: Path) -> dict[tuple, dict]:
    con = wh.connect(path, read_only=True)
    try:
        cur = con.execute("SELECT * FROM analytics.training_data_growth")
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()
    return {(r["tenant_id"], r["source"], r["category"], r["day"]): r for r in rows}


def test_training_data_growth_counts_sample_decisions_per_day(learnloop_home: Path):
    warehouse = warehouse_target(learnloop_home)
    con = wh.connect(warehouse)
    try:
        cols = ", ".join(f'"{c}" {t}' for c, t in REVIEW_DECISION_COLUMNS.items())
        con.execute(f"CREATE TABLE main.review_decisions ({cols})")
        for e in EVENTS:
            con.execute(f"INSERT INTO main.review_decisions ({', '.join(e)}) VALUES "
                        f"({', '.join('?' for _ in e)})", list(e.values()))
    finally:
        con.close()  # the other source tables are created empty by the asset

    result = dg.materialize([dbt_analytics_assets], resources=resources_for(dbt=dbt_resource),
                            instance=dg.DagsterInstance.ephemeral())

    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()
              if e.asset_key == dg.AssetKey("training_data_growth")}
    assert checks and all(checks.values())
    assert "unique_combination_training_data_growth_day__tenant_id__source__category" in checks
    assert "assert_training_data_growth_totals_match_decisions" in checks
    rows = _rows(warehouse)
    counts = {e.asset_key.to_user_string(): e.materialization.metadata["dagster/row_count"].value
              for e in result.get_asset_materialization_events()
              if "dagster/row_count" in e.materialization.metadata}
    # (acme, human_agent, factual_error) and (acme, retrieval, off_topic) on days 1-3, the other
    # three groups from day 3 only
    assert counts["training_data_growth"] == len(rows) == 9

    def series(tenant, source, category, field):
        return [rows[(tenant, source, category, d)][field] if (tenant, source, category, d) in rows
                else None for d in (D1, D2, D3)]

    human = ("acme", "human_agent", "factual_error")
    assert series(*human, "approved") == [1, 0, 1]
    assert series(*human, "edited") == [1, 0, 0]
    assert series(*human, "new_approved") == [2, 0, 1]
    assert series(*human, "cumulative_approved") == [2, 2, 3]
    assert series(*human, "approval_rate") == [1.0, None, 1.0]  # no decision on day 2: NULL
    retrieval = ("acme", "retrieval", "factual_error")
    # item 3 counts once: its latest decision (rejected on day 3), not its first approval
    assert series(*retrieval, "new_approved") == [None, None, 0]
    assert series(*retrieval, "rejected") == [None, None, 1]
    assert series(*retrieval, "cumulative_approval_rate") == [None, None, 0.0]
    assert series("acme", "retrieval", "off_topic", "cumulative_approved") == [1, 1, 1]
    assert series("acme", "retrieval", "uncategorized", "approved") == [None, None, 1]
    beta = rows[("beta", "retrieval", "factual_error", D3)]
    assert (beta["rejected"], beta["decided"], beta["approval_rate"]) == (1, 1, 0.0)
    day1 = rows[(*human, D1)]
    assert day1["decided"] == 2 and day1["cumulative_approval_rate"] == pytest.approx(1.0)


def test_training_data_growth_is_an_analytics_asset_fed_by_review_decisions():
    key = dg.AssetKey("training_data_growth")
    spec = dbt_analytics_assets.specs_by_key[key]
    assert spec.group_name == ANALYTICS_GROUP and spec.kinds == {"dbt", "duckdb"}
    upstream = {d.asset_key for d in spec.deps}
    assert upstream == {dg.AssetKey("stg_review_decisions")}
    staging = dbt_analytics_assets.specs_by_key[dg.AssetKey("stg_review_decisions")]
    assert {d.asset_key for d in staging.deps} == {dg.AssetKey("review_decisions")}
    assert any(c.asset_key == key for c in dbt_analytics_assets.check_specs)

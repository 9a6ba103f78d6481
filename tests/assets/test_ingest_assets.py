"""The ingest and quality assets, materialized for real on a small landing zone."""

from __future__ import annotations

import json

import dagster as dg
import duckdb
import polars as pl
import pytest

from assets.ingest import ingest_interactions, raw_interactions, residual_pii
from assets.quality import interaction_quality
from ml.landing import write_landing_file
from orchestration.definitions import defs
from orchestration.resources import LearnloopResource

DAY = "2026-11-03"


def _record(i: int, **kw) -> dict:
    rec = {
        "interaction_id": f"it-{i}",
        "tenant_id": "acme",
        "session_id": f"sess-{i // 2}",
        "turn_index": i % 2,
        "timestamp": f"{DAY}T10:{i:02d}:00Z",
        "messages": [{"role": "user", "content": f"What does order {1000 + i} cost? mail me at "
                                                 f"jo{i}@example.com"}],
        "response": f"Order {1000 + i} costs $19.99.",
        "latency_ms": 900 + i,
        "feedback": {"thumbs": "up" if i % 3 else "down"},
    }
    rec.update(kw)
    return rec


@pytest.fixture()
def landing_day(learnloop_home):
    landing = learnloop_home / "landing"
    good = [_record(i) for i in range(6)]
    bad = [
        "{not json",
        json.dumps(_record(90, feedback={"rating": 9})),
        json.dumps({k: v for k, v in _record(91).items() if k != "interaction_id"}),
    ]
    write_landing_file(landing, DAY, "good", good + [good[0]])  # an exact duplicate line
    write_landing_file(landing, DAY, "mixed", bad + [json.dumps(_record(7))])
    return learnloop_home


def _materialize(home, instance):
    return dg.materialize(
        [raw_interactions, ingest_interactions, interaction_quality],
        partition_key=DAY, instance=instance,
        resources={"learnloop": LearnloopResource(home=str(home))},
    )


def _rows(home, sql):
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert {"raw_interactions", "interactions", "quarantined_interactions",
            "interaction_quality"} <= keys


def test_ingest_chain_quarantines_bad_records_and_keeps_good_ones(landing_day):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("landing_date", [DAY])
        result = _materialize(landing_day, instance)
        assert result.success
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks == {"check_no_residual_pii": True, "check_unique_interaction_ids": True,
                          "check_scores_in_range": True}
    ids = sorted(r[0] for r in _rows(landing_day, "SELECT interaction_id FROM interactions"))
    assert ids == sorted([f"it-{i}" for i in range(6)] + ["it-7"])
    reasons = [r[0] for r in _rows(landing_day,
                                   "SELECT reason FROM quarantined_interactions ORDER BY line_no")]
    assert len(reasons) == 3
    assert any("JSON" in r for r in reasons)
    assert any("rating" in r for r in reasons)
    assert any("interaction_id" in r for r in reasons)
    raw = _rows(landing_day, "SELECT raw FROM quarantined_interactions")
    assert any(r[0] == "{not json" for r in raw)
    # PII scrubbed, session ids hashed
    text = _rows(landing_day, "SELECT user_message, session_id FROM interactions")
    assert all("@example.com" not in t and "[EMAIL]" in t for t, _ in text)
    assert all(not s.startswith("sess-") and len(s) == 64 for _, s in text)
    assert _rows(landing_day, "SELECT count(*) FROM interaction_quality")[0][0] == 7


def test_rematerializing_a_partition_never_duplicates(landing_day):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("landing_date", [DAY])
        assert _materialize(landing_day, instance).success
        first = _rows(landing_day, "SELECT * EXCLUDE (source_file) FROM interactions ORDER BY 1")
        assert _materialize(landing_day, instance).success
        second = _rows(landing_day, "SELECT * EXCLUDE (source_file) FROM interactions ORDER BY 1")
    assert first == second
    assert _rows(landing_day, "SELECT count(*) FROM quarantined_interactions")[0][0] == 3


def test_materialization_metadata_reports_rates(landing_day):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("landing_date", [DAY])
        result = _materialize(landing_day, instance)
        mats = {m.asset_key.to_user_string(): m.metadata
                for m in result.get_asset_materialization_events()
                for m in [m.materialization]}
    assert mats["interactions"]["dagster/row_count"].value == 7
    assert mats["quarantined_interactions"]["dagster/row_count"].value == 3
    assert mats["quarantined_interactions"]["quarantine_rate"].value == pytest.approx(0.3)
    assert mats["raw_interactions"]["files"].value == 2


def test_residual_pii_check_finds_unscrubbed_text():
    frame = pl.DataFrame({"response": ["write to bob@example.org", "fine"],
                          "user_message": ["call +1 415 555 0100", None]})
    found = {r["pii_type"] for r in residual_pii(frame)}
    assert "EMAIL" in found or "[EMAIL]" in found
    assert residual_pii(pl.DataFrame({"response": ["write to [EMAIL]"]})) == []

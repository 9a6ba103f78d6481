"""The quality asset on partitions where nothing, or not everything, can be scored."""

from __future__ import annotations

import dagster as dg
import duckdb
import polars as pl
import pytest

from assets.ingest import ingest_interactions, raw_interactions
from assets.quality import interaction_quality, out_of_range
from ml import warehouse as wh
from ml.ingest import INTERACTION_SCHEMA
from ml.landing import write_landing_file
from ml.quality import score_interactions
from tests.stores import resources_for

DAY = "2026-11-05"


def _materialize(home, instance):
    return dg.materialize(
        [raw_interactions, ingest_interactions, interaction_quality],
        partition_key=DAY, instance=instance,
        resources=resources_for(home),
    )


def _quality_metadata(result) -> dict:
    (mat,) = [m.materialization for m in result.get_asset_materialization_events()
              if m.asset_key.to_user_string() == "interaction_quality"]
    return mat.metadata


def test_partition_where_no_row_can_be_scored(learnloop_home):
    # no feedback, signals, latency, tokens; no content word in "hello" -> every dimension NULL
    rec = {"interaction_id": "h-1", "session_id": "s", "timestamp": f"{DAY}T09:00:00Z",
           "messages": [{"role": "user", "content": "hello"}], "response": "hi there"}
    write_landing_file(learnloop_home / "landing", DAY, "hello", [rec])
    with dg.instance_for_test() as instance:
        result = _materialize(learnloop_home, instance)
        assert result.success
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks["check_scores_in_range"] is True
        meta = _quality_metadata(result)
    assert meta["dagster/row_count"].value == 1
    assert meta["scored_rows"].value == 0
    assert isinstance(meta["mean_quality"], dg.NullMetadataValue)
    assert meta["low_quality_rate"].value == 0.0
    assert meta["coverage/context_relevance"].value == 0.0
    con = duckdb.connect(str(learnloop_home / "warehouse.duckdb"), read_only=True)
    try:
        (row,) = con.execute("SELECT quality_score, user_satisfaction, functional_correctness, "
                             "context_relevance, efficiency FROM interaction_quality").fetchall()
    finally:
        con.close()
    assert row == (None, None, None, None, None)


def test_empty_partition(learnloop_home):
    write_landing_file(learnloop_home / "landing", DAY, "empty", ["{not json"])
    with dg.instance_for_test() as instance:
        result = _materialize(learnloop_home, instance)
        assert result.success
        meta = _quality_metadata(result)
    assert meta["dagster/row_count"].value == 0
    assert isinstance(meta["mean_confidence"], dg.NullMetadataValue)


def test_out_of_range_counts_each_dimension():
    frame = score_interactions(pl.DataFrame({
        "interaction_id": ["a", "b"], "tenant_id": ["t", "t"], "partition_date": [None, None],
        "model_version": [None, None], "user_message": ["refund my order", None],
        "response": ["your order refund is done", None], "latency_ms": [1000.0, None],
        "tokens_completion": [100, None], "feedback_rating": [5, None],
        "feedback_thumbs": [None, None], "accepted": [True, None], "modified": [None, None],
        "abandoned": [None, None], "requested_human": [None, None],
        "completed_action": [True, None], "user_continued": [None, None],
        "time_to_first_use_s": [3.0, None], "corrected_response": [None, None],
        "retrieval": [None, None], "intent": [None, None]},
        schema_overrides={k: v for k, v in INTERACTION_SCHEMA.items()
                          if k not in ("interaction_id",)}, strict=False))
    assert sum(out_of_range(frame).values()) == 0
    broken = frame.with_columns(pl.Series("efficiency", [1.5, None]),
                                pl.Series("context_relevance", [-0.1, None]))
    bad = out_of_range(broken)
    assert bad["efficiency"] == 1 and bad["context_relevance"] == 1
    assert bad["quality_score"] == 0


def test_scores_in_batches_equal_the_whole_partition(learnloop_home, monkeypatch):
    """The asset reads the partition in batches of rows (only the columns the score reads):
    with batches of 7 rows, it writes exactly what scoring the whole partition at once gives,
    on real text (replies repeat, so the per-distinct-text joins meet across batches)."""
    import assets.quality as quality_asset
    from ml.demo.realistic import iter_realistic

    records = [rec for _, rec in iter_realistic(60, 11, start=DAY)]
    records[5]["response"] = records[40]["response"]  # one reply in two batches
    write_landing_file(learnloop_home / "landing", DAY, "real", records)
    monkeypatch.setattr(quality_asset, "SCORE_BATCH_ROWS", 7)
    with dg.instance_for_test() as instance:
        assert _materialize(learnloop_home, instance).success
    con = duckdb.connect(str(learnloop_home / "warehouse.duckdb"), read_only=True)
    try:
        batches = list(wh.iter_partition(con, "interactions", DAY, columns=["interaction_id"],
                                         batch_rows=7))
        every = list(wh.iter_table(con, "interactions", columns=["tenant_id", "response"],
                                   batch_rows=25))
        whole = score_interactions(wh.read_partition(con, "interactions", DAY))
        written = wh.read_partition(con, "interaction_quality", DAY)
    finally:
        con.close()
    assert [b.height for b in batches] == [7] * 8 + [4]
    assert batches[0].columns == ["interaction_id"]
    assert [b.height for b in every] == [25, 25, 10]  # the whole table (one day here)
    assert every[0].columns == ["tenant_id", "response"]
    key = ["tenant_id", "interaction_id"]
    assert written.height == whole.height == 60
    a, b = written.select(whole.columns).sort(key), whole.sort(key)
    assert a.schema == b.schema
    for col in whole.columns:
        if a[col].dtype == pl.Float64:  # the same sums, maybe in another order: last-bit noise
            assert a[col].is_null().equals(b[col].is_null()), col
            assert ((a[col] - b[col]).abs().max() or 0.0) <= 1e-12, col
        else:
            assert a[col].equals(b[col]), col


def test_iter_partition_refuses_unknown_columns_and_empty_batches(learnloop_home):
    con = duckdb.connect(str(learnloop_home / "warehouse.duckdb"))
    try:
        with pytest.raises(ValueError, match=r"'interactions' has no columns \['nope'\]"):
            next(wh.iter_partition(con, "interactions", DAY, columns=["nope"]))
        with pytest.raises(ValueError, match="batch_rows must be >= 1"):
            next(wh.iter_partition(con, "interactions", DAY, batch_rows=0))
        assert list(wh.iter_partition(con, "interactions", DAY)) == []
        with pytest.raises(ValueError, match=r"iter_table: 'interactions' has no columns"):
            wh.iter_table(con, "interactions", columns=["nope"])  # named before any batch
        assert list(wh.iter_table(con, "interactions")) == []
    finally:
        con.close()

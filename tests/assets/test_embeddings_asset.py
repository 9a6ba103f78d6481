"""interaction_embeddings materialized for real (DuckDB warehouse, LanceDB, an ephemeral Dagster
instance): incremental by landing day, the days that did not change are not looked at."""

from __future__ import annotations

import dagster as dg

from assets.embeddings import interaction_embeddings
from ml import embeddings
from ml import warehouse as wh
from tests.stores import resources_for


def _put_day(resources, day: str, ids: list[str]) -> None:
    with resources["warehouse"].get_connection() as con:
        wh.ensure_table(con, "interactions")
        con.execute("DELETE FROM interactions WHERE partition_date = ?::DATE", [day])
        for i in ids:
            con.execute("INSERT INTO interactions (tenant_id, interaction_id, user_message, "
                        "response, partition_date) VALUES ('acme', ?, ?, 'ok', ?::DATE)",
                        [i, f"Where is my order {i}?", day])


def _run(instance, resources, **config) -> dict:
    result = dg.materialize([interaction_embeddings], instance=instance, resources=resources,
                            run_config={"ops": {"interaction_embeddings": {"config": config}}})
    assert result.success
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_only_changed_days_are_embedded(learnloop_home):
    resources = resources_for(learnloop_home)
    _put_day(resources, "2026-03-01", ["a", "b"])
    _put_day(resources, "2026-03-02", ["c"])
    with dg.instance_for_test() as instance:
        first = _run(instance, resources)
        assert (first["added"], first["days_looked_at"], first["dagster/row_count"]) == (3, 2, 3)
        assert first["model"] == embeddings.model_for("question")
        again = _run(instance, resources)
        assert (again["added"], again["days_looked_at"]) == (0, 0)
        # a day grows: only it is looked at
        _put_day(resources, "2026-03-02", ["c", "d"])
        grown = _run(instance, resources)
        assert (grown["added"], grown["already_embedded"], grown["days_looked_at"]) == (1, 1, 1)
        # a day ingested again with the same count (b replaced by e): the instance's event log
        # names it
        _put_day(resources, "2026-03-01", ["a", "e"])
        instance.report_runless_asset_event(
            dg.AssetMaterialization("interactions", partition="2026-03-01"))
        redone = _run(instance, resources)
        assert (redone["added"], redone["removed"], redone["days_looked_at"]) == (1, 1, 1)
        db = resources["vectors"].connect()
        assert embeddings.embedded_ids(embeddings.open_embeddings(db)) == {
            ("acme", i) for i in "acde"}
        # every day on request: nothing to do, nothing re-embedded
        full = _run(instance, resources, recheck_all_days=True)
        assert (full["added"], full["days_looked_at"], full["dagster/row_count"]) == (0, 2, 4)

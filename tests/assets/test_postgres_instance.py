"""A real materialization with the Dagster instance on PostgreSQL (dagster-postgres)."""

import dagster as dg
import psycopg
import pytest

from assets.ingest import ingest_interactions, raw_interactions
from ml.landing import write_landing_file
from tests.stores import resources_for

pytestmark = pytest.mark.postgres


def test_materialize_with_postgres_instance_storage(learnloop_home, pg_database):
    day = "2026-11-05"
    rec = {"interaction_id": "pg-1", "session_id": "s", "timestamp": f"{day}T08:00:00Z",
           "messages": [{"role": "user", "content": "hello"}], "response": "hi there"}
    write_landing_file(learnloop_home / "landing", day, "t", [rec])
    # SQLAlchemy 2.1 defaults postgresql:// to psycopg 3; dagster-postgres speaks psycopg2
    dagster_url = pg_database.replace("postgresql://", "postgresql+psycopg2://", 1)
    overrides = {"storage": {"postgres": {"postgres_url": dagster_url}}}
    with dg.instance_for_test(overrides=overrides) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = dg.materialize([raw_interactions, ingest_interactions], partition_key=day,
                                instance=instance,
                                resources=resources_for(learnloop_home))
        assert result.success
        run_id = result.run_id
        mat = instance.get_latest_materialization_event(dg.AssetKey("interactions"))
        assert mat is not None and mat.asset_materialization.partition == day
    with psycopg.connect(pg_database) as con:
        (status,) = con.execute("SELECT status FROM runs WHERE run_id = %s", (run_id,)).fetchone()
        assert status == "SUCCESS"
        # the day's materialization is stored by partition key (daily partitions: nothing to
        # register before the run)
        (n,) = con.execute("SELECT count(*) FROM event_logs WHERE partition = %s AND "
                           "dagster_event_type = 'ASSET_MATERIALIZATION'", (day,)).fetchone()
        assert n >= 1

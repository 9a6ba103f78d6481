"""Stage `review`: review events copied from the operational store into the warehouse."""

import dagster as dg
import polars as pl

from assets.catalog import catalog
from assets.resources import WAREHOUSE_POOL, OperationalStoreResource, WarehouseResource
from ml import warehouse as wh
from ml.tables import TABLES
from store.repo import review_event_rows

BATCH = 50_000


@dg.asset(
    **catalog("review_decisions", "review"),
    kinds={"duckdb", "sqlite"},
    pool=WAREHOUSE_POOL,
    description="Append-only copy of the review events (decisions, tags, creations) from the "
                "operational store, incremental on the event id.",
)
def review_decisions(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                     store: OperationalStoreResource) -> dg.MaterializeResult:
    copied = 0
    with warehouse.get_connection() as con:
        wh.ensure_table(con, "review_decisions")
        [(cursor,)] = con.execute("SELECT coalesce(max(event_id), 0) FROM review_decisions").fetchall()
        start = cursor
        while True:
            with store.session() as session:
                rows = review_event_rows(session, after_id=cursor, limit=BATCH)
            if not rows:
                break
            frame = pl.DataFrame(rows, schema=TABLES["review_decisions"].polars_schema())
            # an upsert on event_id, not a plain append: two runs copying at once (a DuckLake
            # warehouse takes concurrent writers) still leave each event once
            wh.upsert_rows(con, "review_decisions", frame)
            copied += len(rows)
            cursor = rows[-1]["event_id"]
        [(total,)] = con.execute("SELECT count(*) FROM review_decisions").fetchall()
        decided = con.execute(
            "SELECT kind, status_after, count(*) FROM review_decisions WHERE action = 'decide' "
            "GROUP BY ALL ORDER BY ALL").fetchall()
    context.log.info(f"copied {copied} review events after event {start}")
    return dg.MaterializeResult(metadata={
        "copied": copied, "dagster/row_count": total, "last_event_id": cursor,
        "decisions": dg.MetadataValue.json([{"kind": k, "status": s, "n": n} for k, s, n in decided]),
    })

"""Stage `review`: review events copied from the operational store into the warehouse."""

import dagster as dg
import polars as pl

from assets.resources import WAREHOUSE_POOL, OperationalStoreResource, WarehouseResource
from ml import warehouse as wh
from store.repo import review_event_rows

REVIEW_DECISION_COLUMNS: dict[str, str] = {
    "event_id": "BIGINT",
    "item_id": "BIGINT",
    "kind": "VARCHAR",  # error | sample
    "tenant_id": "VARCHAR",
    "interaction_id": "VARCHAR",
    "actor": "VARCHAR",
    "action": "VARCHAR",  # created | decide | tag
    "status_before": "VARCHAR",
    "status_after": "VARCHAR",
    "note": "VARCHAR",
    "event_at": "TIMESTAMP",
    "auditor": "VARCHAR",
    "prompt_version": "VARCHAR",
    "category": "VARCHAR",
    "severity": "VARCHAR",
    "source": "VARCHAR",
}
BATCH = 50_000


def _schema() -> dict[str, pl.DataType]:
    types = {"BIGINT": pl.Int64, "VARCHAR": pl.Utf8, "TIMESTAMP": pl.Datetime("us")}
    return {c: types[t] for c, t in REVIEW_DECISION_COLUMNS.items()}


@dg.asset(
    group_name="review",
    kinds={"duckdb", "sqlite"},
    pool=WAREHOUSE_POOL,
    description="Append-only copy of the review events (decisions, tags, creations) from the "
                "operational store, incremental on the event id.",
)
def review_decisions(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                     store: OperationalStoreResource) -> dg.MaterializeResult:
    copied = 0
    with warehouse.get_connection() as con:
        wh.ensure_table(con, "review_decisions", REVIEW_DECISION_COLUMNS)
        [(cursor,)] = con.execute("SELECT coalesce(max(event_id), 0) FROM review_decisions").fetchall()
        start = cursor
        while True:
            with store.session() as session:
                rows = review_event_rows(session, after_id=cursor, limit=BATCH)
            if not rows:
                break
            frame = pl.DataFrame(rows, schema=_schema())
            con.register("_incoming", frame.to_arrow())
            con.execute("INSERT INTO review_decisions SELECT * FROM _incoming")
            con.unregister("_incoming")
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

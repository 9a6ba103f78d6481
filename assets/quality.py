"""Stage `quality`: the multi-dimensional interaction quality score (seed 003)."""


import dagster as dg
import polars as pl

from assets.catalog import catalog
from assets.partitions import landing_date_partitions
from assets.resources import WAREHOUSE_POOL, WarehouseResource
from ml import warehouse as wh
from ml.quality import MEASURED_DIMENSIONS, SCORING_INPUTS, score_interactions

SCORE_COLUMNS = ("quality_score", "confidence", *MEASURED_DIMENSIONS)
SCORE_BATCH_ROWS = 100_000  # interactions read and scored at a time: memory holds one batch


def _mean(s: pl.Series) -> dg.MetadataValue:
    """Mean of the non-NULL values; a null metadata value when there are none (an empty
    partition, or one where no row can be scored)."""
    m = s.mean()
    return dg.MetadataValue.null() if m is None else dg.MetadataValue.float(float(m))


def _rate(mask: pl.Series, total: int) -> float:
    return float(mask.fill_null(False).sum()) / total if total else 0.0


def out_of_range(scores: pl.DataFrame) -> dict[str, int]:
    """Per score column (overall score, confidence, each dimension): values outside [0, 1]
    (NULL means 'not measurable' and is allowed)."""
    return {c: int(((scores[c] < 0) | (scores[c] > 1)).fill_null(False).sum())
            for c in SCORE_COLUMNS}


@dg.asset(
    deps=["interactions"],
    partitions_def=landing_date_partitions,
    **catalog("interaction_quality", "quality"),
    kinds={"duckdb", "polars"},
    pool=WAREHOUSE_POOL,
    check_specs=[dg.AssetCheckSpec("check_scores_in_range", asset="interaction_quality",
                                   description="Every score, dimension and confidence lies in "
                                               "[0, 1] (or is NULL: not measurable).")],
    description="Per-interaction quality: user satisfaction, functional correctness, context "
                "relevance, efficiency; weights renormalized over the dimensions present; a "
                "confidence per score.",
)
def interaction_quality(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    day = context.partition_key
    with warehouse.get_connection() as con:
        # only the columns the score reads, a batch of rows at a time (a row's score depends on
        # that row alone): a day's messages and retrieval JSON are never all in memory at once
        parts = [score_interactions(batch) for batch in wh.iter_partition(
            con, "interactions", day, columns=SCORING_INPUTS, batch_rows=SCORE_BATCH_ROWS)]
        scores = pl.concat(parts) if parts else score_interactions(
            wh.read_partition(con, "interactions", day))
        wh.replace_partition(con, "interaction_quality", day, scores)
    n = scores.height
    q = scores["quality_score"]
    bad = out_of_range(scores)
    yield dg.MaterializeResult(metadata={
        "dagster/row_count": n,
        "scored_rows": int(q.is_not_null().sum()),
        "mean_quality": _mean(q),
        "mean_confidence": _mean(scores["confidence"]),
        "low_quality_rate": _rate(q < 0.5, n),
        **{f"coverage/{d}": _rate(scores[d].is_not_null(), n) for d in MEASURED_DIMENSIONS},
    })
    yield dg.AssetCheckResult(passed=sum(bad.values()) == 0,
                              metadata={"out_of_range": sum(bad.values()),
                                        "by_column": dg.MetadataValue.json(bad)})

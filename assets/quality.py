"""Stage `quality`: the multi-dimensional interaction quality score (seed 003)."""


import dagster as dg

from assets.partitions import landing_date_partitions
from ml import warehouse
from ml.quality import score_interactions
from orchestration.resources import WAREHOUSE_POOL, LearnloopResource


@dg.asset(
    deps=["interactions"],
    partitions_def=landing_date_partitions,
    group_name="quality",
    kinds={"duckdb", "polars"},
    pool=WAREHOUSE_POOL,
    check_specs=[dg.AssetCheckSpec("check_scores_in_range", asset="interaction_quality",
                                   description="Every score and confidence lies in [0, 1].")],
    description="Per-interaction quality: user satisfaction, functional correctness, context "
                "relevance, efficiency; weights renormalized over the dimensions present; a "
                "confidence per score.",
)
def interaction_quality(context: dg.AssetExecutionContext, learnloop: LearnloopResource):
    day = context.partition_key
    with learnloop.warehouse() as con:
        interactions = warehouse.read_partition(con, "interactions", day)
        scores = score_interactions(interactions)
        warehouse.replace_partition(con, "interaction_quality", day, scores)
    q = scores["quality_score"]
    conf = scores["confidence"]
    out_of_range = int(((q < 0) | (q > 1) | (conf < 0) | (conf > 1)).sum()) if scores.height else 0
    dims = ["user_satisfaction", "functional_correctness", "context_relevance", "efficiency"]
    yield dg.MaterializeResult(metadata={
        "dagster/row_count": scores.height,
        "mean_quality": float(q.mean()) if scores.height else 0.0,
        "mean_confidence": float(conf.mean()) if scores.height else 0.0,
        "low_quality_rate": float((q < 0.5).mean()) if scores.height else 0.0,
        **{f"coverage/{d}": float(scores[d].is_not_null().mean()) if scores.height else 0.0
           for d in dims},
    })
    yield dg.AssetCheckResult(passed=out_of_range == 0, metadata={"out_of_range": out_of_range})

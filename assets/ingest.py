"""Stage `ingest`: landing zone -> raw_interactions -> interactions + quarantined_interactions."""


import hashlib
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import polars as pl

from assets.partitions import landing_date_partitions
from ml import landing, warehouse
from ml.ingest import ingest_files
from ml.pii import scrub_frame
from orchestration.resources import WAREHOUSE_POOL, LearnloopResource

TEXT_COLUMNS = ["user_message", "response", "corrected_response", "feedback_comment", "messages"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def residual_pii(frame: pl.DataFrame) -> list[dict]:
    """PII the scrubber still finds in the text columns of ``frame``: [{pii_type, count}]."""
    cols = [c for c in TEXT_COLUMNS if c in frame.columns]
    if not frame.height or not cols:
        return []
    text = frame.select(cols).with_columns(pl.col(c).fill_null("") for c in cols)
    _, types = scrub_frame(text, cols)
    leftover = types.explode().drop_nulls()
    if not leftover.len():
        return []
    return (leftover.alias("pii_type").value_counts(name="count").sort("pii_type").to_dicts())


@dg.asset(
    partitions_def=landing_date_partitions,
    group_name="ingest",
    kinds={"duckdb", "file"},
    pool=WAREHOUSE_POOL,
    description="The landing-zone files of one day, registered with their size and checksum.",
)
def raw_interactions(context: dg.AssetExecutionContext,
                     learnloop: LearnloopResource) -> dg.MaterializeResult:
    day = context.partition_key
    settings = learnloop.settings()
    files = landing.list_files(settings.landing, day)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    frame = pl.DataFrame(
        {
            "partition_date": [datetime.fromisoformat(day).date()] * len(files),
            "path": [str(p) for p in files],
            "size_bytes": [p.stat().st_size for p in files],
            "sha256": [_sha256(p) for p in files],
            "registered_at": [now] * len(files),
        },
        schema={"partition_date": pl.Date, "path": pl.Utf8, "size_bytes": pl.Int64,
                "sha256": pl.Utf8, "registered_at": pl.Datetime("us")},
    )
    with learnloop.warehouse() as con:
        warehouse.replace_partition(con, "raw_files", day, frame)
    context.log.info(f"{len(files)} landing files for {day}")
    return dg.MaterializeResult(metadata={
        "files": len(files),
        "bytes": int(frame["size_bytes"].sum() or 0),
        "landing_dir": str(landing.partition_dir(settings.landing, day)),
    })


@dg.multi_asset(
    specs=[
        dg.AssetSpec("interactions", group_name="ingest", kinds={"duckdb", "polars"},
                     deps=["raw_interactions"], partitions_def=landing_date_partitions,
                     description="Validated, de-duplicated, PII-scrubbed interactions "
                                 "(session ids keyed-hashed)."),
        dg.AssetSpec("quarantined_interactions", group_name="ingest", kinds={"duckdb"},
                     deps=["raw_interactions"], partitions_def=landing_date_partitions,
                     description="Records that failed validation, with the reason and raw text."),
    ],
    check_specs=[
        dg.AssetCheckSpec("check_no_residual_pii", asset="interactions",
                          description="No placeholder-free PII pattern remains in the text columns."),
        dg.AssetCheckSpec("check_unique_interaction_ids", asset="interactions",
                          description="interaction_id is unique within the partition."),
    ],
    partitions_def=landing_date_partitions,
    pool=WAREHOUSE_POOL,
)
def ingest_interactions(context: dg.AssetExecutionContext, learnloop: LearnloopResource):
    day = context.partition_key
    settings = learnloop.settings()
    with learnloop.warehouse() as con:
        warehouse.ensure_table(con, "raw_files")
        paths = [Path(r[0]) for r in con.execute(
            "SELECT path FROM raw_files WHERE partition_date = ?::DATE ORDER BY path", [day]
        ).fetchall()]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"landing files registered for {day} are gone: {missing[:5]}")
    context.log.info(f"ingesting {len(paths)} files for {day}")
    result = ingest_files(paths, day, settings.hash_key.get_secret_value().encode())
    good, bad = result.interactions, result.quarantined
    with learnloop.warehouse() as con:
        warehouse.replace_partition(con, "interactions", day, good)
        warehouse.replace_partition(con, "quarantined_interactions", day, bad)

    # checks run on what was written: re-scrubbing scrubbed text must find nothing new
    leftover_counts = residual_pii(good)
    n_leftover = sum(r["count"] for r in leftover_counts)
    n_unique = good["interaction_id"].n_unique() if good.height else 0
    total = good.height + bad.height
    reasons = (bad.group_by("reason").len().sort("len", descending=True).head(10).to_dicts()
               if bad.height else [])
    stats = {k: v for k, v in result.stats.items() if isinstance(v, (int, float, str))}
    yield dg.MaterializeResult(asset_key="interactions", metadata={
        "dagster/row_count": good.height,
        "accepted_rate": round(good.height / total, 4) if total else 0.0,
        "tenants": good["tenant_id"].n_unique() if good.height else 0,
        "pii_scrubbed_rows": int((good["pii_types"].list.len() > 0).sum()) if good.height else 0,
        **{f"stats/{k}": v for k, v in stats.items()},
    })
    yield dg.MaterializeResult(asset_key="quarantined_interactions", metadata={
        "dagster/row_count": bad.height,
        "quarantine_rate": round(bad.height / total, 4) if total else 0.0,
        "top_reasons": dg.MetadataValue.json(reasons),
    })
    yield dg.AssetCheckResult(
        asset_key="interactions", check_name="check_no_residual_pii",
        passed=n_leftover == 0,
        metadata={"residual_matches": n_leftover,
                  "by_type": dg.MetadataValue.json(leftover_counts)},
    )
    yield dg.AssetCheckResult(
        asset_key="interactions", check_name="check_unique_interaction_ids",
        passed=n_unique == good.height, metadata={"rows": good.height, "unique_ids": n_unique},
    )

"""Stage `ingest`: landing zone -> raw_interactions -> interactions + quarantined_interactions."""


from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl

from assets.catalog import catalog
from assets.partitions import landing_date_partitions
from assets.resources import (
    WAREHOUSE_POOL,
    LandingZoneResource,
    WarehouseResource,
    session_hash_key,
)
from ml import landing, retention
from ml import warehouse as wh
from ml.ingest import (
    QUARANTINE_KEY,
    IngestResult,
    drop_cross_partition_duplicates,
    drop_quarantine_copies,
    ingest_files,
)
from ml.pii import residual_pii_in_table
from ml.tables import TABLES

# metadata of each `interactions` materialization: the landing files it read (``ml.landing.
# fingerprint``); the landing sensor and `learnloop run` skip days ingested with the same files
LANDING_FINGERPRINT = "landing_fingerprint"


def residual_pii(con, table: str, day: str) -> list[dict]:
    """PII left in one partition of a warehouse table, over its free-text columns (the
    registry's ``free_text``: ids, hashes, enums and paths are not text, and a UUID is no phone
    number): [{column, pii_type, values}] (``ml.pii.residual_pii_in_table``)."""
    free_text = TABLES[table].free_text
    if not free_text:
        raise ValueError(f"table {table!r} declares no free-text columns to check for PII")
    return residual_pii_in_table(con, table, "partition_date = ?::DATE", [day],
                                 columns=free_text)


def _earlier_copies(con, good: pl.DataFrame, day: str) -> pl.DataFrame:
    """Rows of other partitions of ``interactions`` with a (tenant_id, interaction_id) of
    ``good``."""
    wh.ensure_table(con, "interactions")
    con.register("_ids", good.select("tenant_id", "interaction_id").to_arrow())
    try:
        return wh.query(
            con, "SELECT i.* FROM interactions i SEMI JOIN _ids USING (tenant_id, interaction_id) "
                 "WHERE i.partition_date <> ?::DATE", [day])
    finally:
        con.unregister("_ids")


def _quarantined_elsewhere(con, bad: pl.DataFrame, day: str) -> pl.Series:
    """The ``quarantine_key`` values of ``bad`` that other partitions of
    ``quarantined_interactions`` already hold."""
    wh.ensure_table(con, "quarantined_interactions")
    if bad.height == 0:
        return pl.Series(QUARANTINE_KEY, [], dtype=pl.String)
    con.register("_qkeys", bad.select(QUARANTINE_KEY).to_arrow())
    try:
        return wh.query(
            con, "SELECT DISTINCT q.quarantine_key FROM quarantined_interactions q "
                 "SEMI JOIN _qkeys USING (quarantine_key) WHERE q.partition_date <> ?::DATE",
            [day]).get_column(QUARANTINE_KEY)
    finally:
        con.unregister("_qkeys")


def _with_logical_source_files(result: IngestResult, paths: list[Path], refs: list[str],
                               landing_zone: LandingZoneResource) -> IngestResult:
    """Rows named by their file's ref (``paths``: the local files read, a staging copy of each
    object on object storage), and archived files by their landing ref
    (``ml.retention.logical_ref``), so re-ingesting an archived day writes the same rows."""
    store, archive = landing_zone.store(), landing_zone.archive_store()
    names = {str(p): retention.logical_ref(r, store, archive)
             for p, r in zip(paths, refs, strict=True)}
    names = {k: v for k, v in names.items() if k != v}
    if not names:
        return result

    def rename(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(pl.col("source_file").replace(names)) if frame.height \
            else frame

    return IngestResult(rename(result.interactions), rename(result.quarantined), result.stats,
                        result.positions)


def _owner(ref: str, store, archive):
    """The store holding ``ref``: the archive (checked first: on a bucket it lies below the
    landing prefix) or the landing zone."""
    return archive if archive.owns(ref) else store


@contextmanager
def _staged(refs: list[str], store, archive) -> Iterator[list[Path]]:
    """Local files of ``refs`` for the time of the context (``LandingStore.staged``: the files
    themselves in a folder, temporary copies of objects, removed after)."""
    if store.is_local and archive.is_local:
        yield [Path(r) for r in refs]
        return
    with ExitStack() as stack:
        yield [stack.enter_context(_owner(r, store, archive).staged([r]))[0] for r in refs]


@dg.asset(
    partitions_def=landing_date_partitions,
    **catalog("raw_interactions", "ingest"),
    kinds={"duckdb", "file"},
    pool=WAREHOUSE_POOL,
    description="The landing-zone files of one day, registered with their size and checksum.",
)
def raw_interactions(context: dg.AssetExecutionContext, landing_zone: LandingZoneResource,
                     warehouse: WarehouseResource) -> dg.MaterializeResult:
    day = context.partition_key
    store, archive = landing_zone.store(), landing_zone.archive_store()
    # the day's files: landing and archive (archiving is not deleting, ml.retention)
    files = retention.day_entries(store, archive, day)
    with warehouse.get_connection() as con:
        wh.ensure_table(con, "raw_files")
        registered = [r[0] for r in con.execute(
            "SELECT path FROM raw_files WHERE partition_date = ?::DATE", [day]).fetchall()]
    gone = retention.missing_files(registered, [f.ref for f in files])
    if gone:
        raise dg.Failure(description=retention.gone_files_message(day, gone, archive),
                         metadata={"gone_files": dg.MetadataValue.json(gone)})
    now = datetime.now(UTC).replace(tzinfo=None)
    frame = pl.DataFrame(
        {
            "partition_date": [datetime.fromisoformat(day).date()] * len(files),
            "path": [f.ref for f in files],
            "size_bytes": [f.size for f in files],
            # streamed from the bucket on object storage (nothing written locally)
            "sha256": [_owner(f.ref, store, archive).sha256(f.ref) for f in files],
            "registered_at": [now] * len(files),
        },
        schema=TABLES["raw_files"].polars_schema(),
    )
    with warehouse.get_connection() as con:
        wh.replace_partition(con, "raw_files", day, frame)
    context.log.info(f"{len(files)} landing files for {day}")
    return dg.MaterializeResult(metadata={
        "files": len(files),
        "bytes": int(frame["size_bytes"].sum() or 0),
        "landing_dir": store.day_url(day),
        "archived_files": sum(1 for f in files if archive.owns(f.ref)),
    })


@dg.multi_asset(
    specs=[
        dg.AssetSpec("interactions", **catalog("interactions", "ingest"),
                     kinds={"duckdb", "polars"},
                     deps=["raw_interactions"], partitions_def=landing_date_partitions,
                     description="Validated, de-duplicated, PII-scrubbed interactions "
                                 "(session ids keyed-hashed)."),
        dg.AssetSpec("quarantined_interactions", **catalog("quarantined_interactions", "ingest"),
                     kinds={"duckdb"},
                     deps=["raw_interactions"], partitions_def=landing_date_partitions,
                     description="Records that failed validation, with the reason and raw text."),
    ],
    check_specs=[
        dg.AssetCheckSpec("check_no_residual_pii", asset="interactions", blocking=True,
                          description="No PII remains in any text column of the written "
                                      "partition (re-read from the warehouse), judged by a "
                                      "detector independent of the scrubber (Presidio's "
                                      "pattern recognizers); blocking: downstream stops."),
        dg.AssetCheckSpec("check_no_residual_pii_in_quarantine",
                          asset="quarantined_interactions", blocking=True,
                          description="No PII remains in the written quarantine rows "
                                      "(the same independent detector); blocking."),
        dg.AssetCheckSpec("check_unique_interaction_ids", asset="interactions",
                          description="(tenant_id, interaction_id) is unique within the "
                                      "partition and appears in no other partition."),
    ],
    partitions_def=landing_date_partitions,
    pool=WAREHOUSE_POOL,
)
def ingest_interactions(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                        landing_zone: LandingZoneResource):
    day = context.partition_key
    store, archive = landing_zone.store(), landing_zone.archive_store()
    with warehouse.get_connection() as con:
        wh.ensure_table(con, "raw_files")
        # by file name: the same order whether a file is in the landing folder or archived
        refs = sorted((r[0] for r in con.execute(
            "SELECT path FROM raw_files WHERE partition_date = ?::DATE", [day]).fetchall()),
            key=lambda r: (Path(r).name, r))
    local = store.is_local and archive.is_local
    if local:
        missing = [r for r in refs if not Path(r).exists()]
    else:  # one listing per store, no object read
        present = {e.ref: e for e in retention.day_entries(store, archive, day)}
        missing = [r for r in refs if r not in present]
    if missing:
        raise FileNotFoundError(f"landing files registered for {day} are gone: {missing[:5]}")
    context.log.info(f"ingesting {len(refs)} files for {day}")
    # on object storage: a local copy of each object while the day is ingested, removed after
    with _staged(refs, store, archive) as paths:
        result = ingest_files(paths, day, session_hash_key())
        if result.stats.get("worker_failures"):
            context.log.warning(f"ingest worker processes failed, ran in-process: "
                                f"{result.stats.get('worker_failure')}")
        result = _with_logical_source_files(result, paths, refs, landing_zone)
        fingerprint = (landing.fingerprint(paths) if local
                       else store.fingerprint([present[r] for r in refs]))
        with warehouse.get_connection() as con:
            # ids another partition already holds: exact copies dropped, others quarantined
            result = drop_cross_partition_duplicates(
                result, _earlier_copies(con, result.interactions, day), paths)
            good = result.interactions
            # a rejected record already quarantined (this day or another) is not quarantined again
            bad, copies = drop_quarantine_copies(
                result.quarantined, _quarantined_elsewhere(con, result.quarantined, day))
            result.stats.update(copies, quarantined=bad.height)
            wh.replace_partition(con, "interactions", day, good)
            wh.replace_partition(con, "quarantined_interactions", day, bad)
            # the checks read what was written
            leftover = residual_pii(con, "interactions", day)
            leftover_q = residual_pii(con, "quarantined_interactions", day)
            rows, n_unique, elsewhere = con.execute(
                "SELECT count(*), count(DISTINCT (tenant_id, interaction_id)), count(*) FILTER "
                "(WHERE (tenant_id, interaction_id) IN (SELECT (tenant_id, interaction_id) FROM "
                "interactions WHERE partition_date <> ?::DATE)) FROM interactions "
                "WHERE partition_date = ?::DATE", [day, day]
            ).fetchone()
    if result.stats["cross_partition_duplicates"] or result.stats["cross_partition_conflicts"]:
        context.log.info(f"ids already in other partitions: "
                         f"{result.stats['cross_partition_duplicates']} exact copies dropped, "
                         f"{result.stats['cross_partition_conflicts']} conflicts quarantined")
    n_leftover = sum(r["values"] for r in leftover)
    n_leftover_q = sum(r["values"] for r in leftover_q)
    total = good.height + bad.height
    reasons = (bad.group_by("reason").len().sort("len", descending=True).head(10).to_dicts()
               if bad.height else [])
    stats = {k: v for k, v in result.stats.items() if isinstance(v, (int, float, str))}
    yield dg.MaterializeResult(asset_key="interactions", metadata={
        "dagster/row_count": good.height,
        "accepted_rate": round(good.height / total, 4) if total else 0.0,
        "tenants": good["tenant_id"].n_unique() if good.height else 0,
        "pii_scrubbed_rows": int((good["pii_types"].list.len() > 0).sum()) if good.height else 0,
        LANDING_FINGERPRINT: fingerprint,
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
        metadata={"residual_values": n_leftover,
                  "by_column": dg.MetadataValue.json(leftover)},
    )
    yield dg.AssetCheckResult(
        asset_key="quarantined_interactions", check_name="check_no_residual_pii_in_quarantine",
        passed=n_leftover_q == 0,
        metadata={"residual_values": n_leftover_q,
                  "by_column": dg.MetadataValue.json(leftover_q)},
    )
    yield dg.AssetCheckResult(
        asset_key="interactions", check_name="check_unique_interaction_ids",
        passed=n_unique == rows and elsewhere == 0,
        metadata={"rows": rows, "unique_ids": n_unique, "ids_in_other_partitions": elsewhere},
    )

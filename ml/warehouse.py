"""The warehouse: append-only analytics tables written by Dagster runs.

Tables are created from the column layouts of the registry ``ml.tables``. Partitioned tables are rewritten one
partition at a time inside a transaction (delete the partition's rows, insert the new ones), so
re-materializing a partition gives the same rows, never duplicates.

Two kinds of warehouse, one API: a DuckDB file (the embedded default; one writer at a time, so
Dagster serializes writers through the ``warehouse`` pool) or a DuckLake (``ml.lake.Lake``: a
PostgreSQL catalog and Parquet data files, written by several processes and machines at once).
:func:`connect` takes either and returns a DuckDB connection whose unqualified names are the
warehouse's tables, so every helper below works on both.

Concurrent writers of a lake. DuckLake commits optimistically and detects conflicts per table: a
commit fails when another transaction committed a delete from, or a change of, a table this one
inserted into. A writer that deleted nothing (its partition was still empty) would not conflict
with another writer of the same partition, and both inserts would land; so :func:`write_frame`
also stamps the table (``COMMENT ON TABLE``, a change of the table) in its transaction: any two
concurrent writes of one table conflict, the loser's transaction is rolled back, and it is run
again on the new snapshot (:data:`CONFLICT_RETRIES` times with backoff), deleting what the winner
wrote. Different partitions therefore all land, the same partition ends with the rows of the last
writer, never duplicates, and a writer that keeps losing fails loudly (:class:`WriteConflict`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import duckdb
import polars as pl
import pyarrow as pa

from ml.config import Settings
from ml.lake import Lake, lake_exists, open_lake
from ml.tables import table as registered

Target = Path | str | Lake
"""A warehouse: the path of a DuckDB file, or a :class:`~ml.lake.Lake`."""

CONFLICT_RETRIES = 12
"""Attempts of a write that keeps losing commit races before :class:`WriteConflict`."""
_BACKOFF_S = (0.05, 2.0)  # first wait, longest wait (doubling, with full jitter)

T = TypeVar("T")


class WriteConflict(RuntimeError):
    """A write lost every commit race to concurrent writers of the same table."""


def connect(target: Target, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A connection to the warehouse ``target``: a DuckDB file (created, with its folder, on the
    first read-write connection) or a DuckLake (attached as ``lake`` and in use)."""
    config = Settings().warehouse_duckdb_config()  # LEARNLOOP_WAREHOUSE_MEMORY_LIMIT
    if isinstance(target, Lake):
        return open_lake(target, read_only=read_only, config=config)
    if not read_only:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    return duckdb.connect(str(target), read_only=read_only, config=config)


def exists(target: Target) -> bool:
    """Whether the warehouse exists (a reader has nothing to read before the first write): the
    DuckDB file, or the lake's catalog."""
    if isinstance(target, Lake):
        return lake_exists(target)
    return Path(target).exists()


def landing_day_range(target: Target) -> tuple[str, str] | None:
    """("YYYY-MM-DD", "YYYY-MM-DD"): the first and last landing day of the interactions in the
    warehouse ``target`` (read-only), None when it holds none yet."""
    if not exists(target):
        return None
    con = connect(target, read_only=True)
    try:
        if not table_exists(con, "interactions"):
            return None
        first, last = con.execute(
            "SELECT strftime(min(partition_date), '%Y-%m-%d'), "
            "strftime(max(partition_date), '%Y-%m-%d') FROM interactions").fetchone()
    finally:
        con.close()
    return (first, last) if first is not None else None


def describe(target: Target) -> str:
    """The warehouse for messages and metadata (a lake's password redacted)."""
    return str(target)


def is_lake(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether ``con``'s current database is a DuckLake."""
    row = con.execute("SELECT type FROM duckdb_databases() WHERE database_name = "
                      "current_database()").fetchone()
    return bool(row) and row[0] == "ducklake"


def _is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.TransactionException) and "conflict" in str(exc).lower()


def retry_conflicts(action: Callable[[], T], what: str, attempts: int | None = None) -> T:
    """Run ``action`` (one whole transaction, rolled back when it fails) until it commits;
    rerun it after a commit conflict, with backoff, up to ``attempts`` times
    (:data:`CONFLICT_RETRIES`); then raise :class:`WriteConflict` naming ``what``."""
    attempts = attempts or CONFLICT_RETRIES
    first, longest = _BACKOFF_S
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except duckdb.TransactionException as exc:
            if not _is_conflict(exc):
                raise
            if attempt == attempts:
                raise WriteConflict(
                    f"{what}: lost {attempts} commit races to concurrent writers of the same "
                    f"table; last conflict: {' '.join(str(exc).split())[:300]}") from exc
            time.sleep(random.uniform(0, min(longest, first * 2 ** (attempt - 1))))
    raise AssertionError("unreachable")


def rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back the open transaction; a failed COMMIT has already ended it."""
    try:
        con.execute("ROLLBACK")
    except duckdb.TransactionException as exc:
        if "no transaction is active" not in str(exc):
            raise


def ensure_table(con: duckdb.DuckDBPyConnection, name: str,
                 columns: dict[str, str] | None = None) -> None:
    """Create table ``name`` with ``columns`` (default: its registered layout, ``ml.tables``) if
    it does not exist; add to an existing table the columns it lacks (``ALTER TABLE ... ADD
    COLUMN IF NOT EXISTS``, NULL in its old rows), so a warehouse written by an older version
    keeps working. New columns go last: add them at the end of a layout, since inserts match
    columns by position."""
    columns = columns or registered(name).types
    retry_conflicts(lambda: _ensure_table(con, name, columns), f"creating table {name!r}")


def ensure_readable(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """For a reader (a read-only connection): when table ``name`` does not exist yet, an empty
    TEMP table of its registered layout stands in for it, so a query reads no rows from it
    instead of failing; nothing is written to the warehouse."""
    if not table_exists(con, name):
        cols = ", ".join(f'"{c}" {t}' for c, t in registered(name).types.items())
        con.execute(f'CREATE TEMP TABLE IF NOT EXISTS "{name}" ({cols})')


def _ensure_table(con: duckdb.DuckDBPyConnection, name: str, columns: dict[str, str]) -> None:
    have = {r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? AND "
        "table_schema = current_schema() AND table_catalog = current_database()",
        [name]).fetchall()}
    if not have:
        cols = ", ".join(f'"{c}" {t}' for c, t in columns.items())
        con.execute(f'CREATE TABLE IF NOT EXISTS "{name}" ({cols})')
        return
    for col, typ in columns.items():  # nothing to add: no write (works read-only)
        if col not in have:
            con.execute(f'ALTER TABLE "{name}" ADD COLUMN IF NOT EXISTS "{col}" {typ}')


def _incoming(columns: dict[str, str], table: str, frame: pl.DataFrame):
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"frame for table {table!r} lacks columns {missing}")
    # newest compat level: strings stay Arrow string views (no copy of every text into
    # large_string buffers); DuckDB reads views directly
    return frame.select(list(columns)).to_arrow(compat_level=pl.CompatLevel.newest())


def write_frame(con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame, *,
                delete_where: str, params: list | None = None,
                columns: dict[str, str] | None = None) -> int:
    """In one transaction: delete the rows of ``table`` matching ``delete_where`` (which may refer
    to the incoming rows as ``_incoming``), then insert ``frame``. Returns rows written.

    On a lake the transaction also stamps the table, and is rerun when a concurrent writer of
    the same table committed first (module docstring: "Concurrent writers of a lake")."""
    columns = columns or registered(table).types
    ensure_table(con, table, columns)
    arrow = _incoming(columns, table, frame)
    stamp = is_lake(con)

    def attempt() -> None:
        con.execute("BEGIN TRANSACTION")
        try:
            if stamp:
                con.execute(f'COMMENT ON TABLE "{table}" IS \'learnloop write\'')
            con.register("_incoming", arrow)
            con.execute(f'DELETE FROM "{table}" WHERE {delete_where}', params or [])
            con.execute(f'INSERT INTO "{table}" SELECT * FROM _incoming')
            con.unregister("_incoming")
            con.execute("COMMIT")
        except BaseException:
            rollback(con)
            raise

    retry_conflicts(attempt, f"writing {frame.height} rows to {table!r}")
    return frame.height


def replace_partition(con: duckdb.DuckDBPyConnection, table: str, partition_date: str,
                      frame: pl.DataFrame) -> int:
    """Atomically replace one partition's rows of ``table`` with ``frame``; return rows written."""
    return write_frame(con, table, frame, delete_where="partition_date = ?::DATE",
                       params=[partition_date])


def replace_table(con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame,
                  columns: dict[str, str] | None = None) -> int:
    """Make ``frame`` the whole content of ``table`` (atomically)."""
    return write_frame(con, table, frame, delete_where="true", columns=columns)


def upsert_rows(con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame,
                keys: list[str] | tuple[str, ...] | None = None,
                columns: dict[str, str] | None = None) -> int:
    """Replace the rows of ``table`` whose ``keys`` (default: the table's registered key) match a
    row of ``frame``, then insert it."""
    keys = keys or registered(table).key
    if frame.height == 0:
        ensure_table(con, table, columns)
        return 0
    match = " AND ".join(f'"{table}"."{k}" IS NOT DISTINCT FROM i."{k}"' for k in keys)
    return write_frame(con, table, frame, columns=columns,
                       delete_where=f"EXISTS (SELECT 1 FROM _incoming i WHERE {match})")


def query(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pl.DataFrame:
    """Run ``sql`` and return the result as a Polars frame (empty results keep their columns)."""
    rel = con.sql(sql, params=params) if params else con.sql(sql)
    if rel is None:
        raise ValueError(f"query returned no result set: {sql[:80]}")
    out = pl.from_arrow(rel.to_arrow_table())
    if not isinstance(out, pl.DataFrame):
        raise TypeError(f"query returned {type(out).__name__}, expected a table: {sql[:80]}")
    return out


def iter_partition(con: duckdb.DuckDBPyConnection, table: str, partition_date: str, *,
                   columns: Sequence[str] | None = None, batch_rows: int = 100_000
                   ) -> Iterator[pl.DataFrame]:
    """One partition's rows of ``table`` (only ``columns``, default all) as frames of at most
    ``batch_rows`` rows, streamed from DuckDB: memory holds one batch, not the partition."""
    return _iter_rows(con, table, "WHERE partition_date = ?::DATE", [partition_date], columns,
                      batch_rows, "iter_partition")


def iter_table(con: duckdb.DuckDBPyConnection, table: str, *,
               columns: Sequence[str] | None = None, batch_rows: int = 100_000
               ) -> Iterator[pl.DataFrame]:
    """Every row of ``table`` (only ``columns``, default all) as frames of at most
    ``batch_rows`` rows, streamed from DuckDB: memory holds one batch, not the table."""
    return _iter_rows(con, table, "", [], columns, batch_rows, "iter_table")


def _iter_rows(con: duckdb.DuckDBPyConnection, table: str, where: str, params: list,
               columns: Sequence[str] | None, batch_rows: int, caller: str
               ) -> Iterator[pl.DataFrame]:
    # checked before the first batch is asked for (a generator would check only then)
    if batch_rows < 1:
        raise ValueError(f"{caller}: batch_rows must be >= 1, got {batch_rows}")
    ensure_table(con, table)
    known = registered(table).types
    unknown = [c for c in columns or () if c not in known]
    if unknown:
        raise ValueError(f"{caller}: {table!r} has no columns {unknown}")
    cols = ", ".join(f'"{c}"' for c in columns) if columns else "*"
    rel = con.sql(f'SELECT {cols} FROM "{table}" {where}', params=params)
    return _frames(rel.to_arrow_reader(batch_rows), table, caller)


def _frames(reader, table: str, caller: str) -> Iterator[pl.DataFrame]:
    for batch in reader:
        if batch.num_rows:
            frame = pl.from_arrow(batch)
            if not isinstance(frame, pl.DataFrame):
                raise TypeError(f"{caller}: a batch of {table!r} read as "
                                f"{type(frame).__name__}, expected a table")
            yield frame


def read_partition(con: duckdb.DuckDBPyConnection, table: str, partition_date: str) -> pl.DataFrame:
    ensure_table(con, table)
    return query(con, f'SELECT * FROM "{table}" WHERE partition_date = ?::DATE', [partition_date])


def table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether the current database (the warehouse) has a table ``name`` (any schema)."""
    rows = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ? "
        "AND table_catalog = current_database()", [name]).fetchall()
    return bool(rows[0][0])


def table_count(target: Target, table: str) -> int:
    """Rows in ``table`` (0 when the warehouse or the table does not exist yet)."""
    if not exists(target):
        return 0
    con = connect(target, read_only=True)
    try:
        if not table_exists(con, table):
            return 0
        return int(con.execute(f'SELECT count(*) FROM "{table}"').fetchall()[0][0])
    finally:
        con.close()


def key_table(keys) -> pa.Table:
    """(tenant_id, interaction_id) pairs as an Arrow table to register and join ``USING
    (tenant_id, interaction_id)``: what identifies an interaction (ids are per tenant)."""
    return pl.DataFrame(list(keys), schema={"tenant_id": pl.String, "interaction_id": pl.String},
                        orient="row").to_arrow()


def read_interactions(con: duckdb.DuckDBPyConnection,
                      keys: list[tuple[str, str]]) -> pl.DataFrame:
    """Every column of the interactions ``keys`` ((tenant_id, interaction_id): ids are per
    tenant), in time order, with their quality score."""
    ensure_table(con, "interactions")
    ensure_table(con, "interaction_quality")
    con.register("_ids", key_table(keys))
    try:
        return query(
            con,
            "SELECT i.*, q.quality_score FROM interactions i "
            "SEMI JOIN _ids USING (tenant_id, interaction_id) "
            "LEFT JOIN interaction_quality q USING (tenant_id, interaction_id) "
            "ORDER BY i.ts, i.tenant_id, i.interaction_id"
        )
    finally:
        con.unregister("_ids")


def read_intents(con: duckdb.DuckDBPyConnection,
                 keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(tenant_id, interaction_id) -> ``intent`` of the interactions ``keys`` that have one."""
    ensure_table(con, "interactions")
    con.register("_ids", key_table(keys))
    try:
        rows = con.execute("SELECT tenant_id, interaction_id, intent FROM interactions "
                           "SEMI JOIN _ids USING (tenant_id, interaction_id) "
                           "WHERE intent IS NOT NULL").fetchall()
    finally:
        con.unregister("_ids")
    return {(t, i): intent for t, i, intent in rows}


def read_sample_facts(con: duckdb.DuckDBPyConnection,
                      keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
    """(tenant_id, interaction_id) -> the facts a sample item keeps of its interaction, for the
    interactions ``keys`` in the warehouse: ``quality`` (``interaction_quality.quality_score``,
    None when unscored), ``intent`` and ``interaction_at`` (``ts``, naive UTC)."""
    if not keys:
        return {}
    ensure_table(con, "interactions")
    ensure_table(con, "interaction_quality")
    con.register("_ids", key_table(keys))
    try:
        rows = con.execute("SELECT i.tenant_id, i.interaction_id, q.quality_score, i.intent, i.ts "
                           "FROM interactions i SEMI JOIN _ids USING (tenant_id, interaction_id) "
                           "LEFT JOIN interaction_quality q USING (tenant_id, interaction_id)"
                           ).fetchall()
    finally:
        con.unregister("_ids")
    return {(t, i): {"quality": q, "intent": intent, "interaction_at": ts}
            for t, i, q, intent, ts in rows}


def read_human_corrections(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Every interaction a human agent corrected (``corrected_response`` set), in time order."""
    ensure_table(con, "interactions")
    return query(con, "SELECT * FROM interactions WHERE corrected_response IS NOT NULL "
                      "ORDER BY ts, interaction_id")


GOOD_INTERACTION_COLUMNS = ("tenant_id", "interaction_id", "session_id", "ts", "messages",
                            "user_message", "response", "intent", "feedback_thumbs",
                            "feedback_rating", "quality_score")


def read_good_interactions(con: duckdb.DuckDBPyConnection, *, min_quality: float,
                           exclude: list[tuple[str, str]] | None = None) -> pl.DataFrame:
    """Historical interactions whose reply was good (replay against forgetting, retention sets):
    a thumbs-up or a rating of 4-5 with no thumbs-down, or a quality score of at least
    ``min_quality``; never a reply a human agent corrected, an empty reply, or one of ``exclude``
    ((tenant_id, interaction_id): e.g. interactions flagged as errors). Ordered by tenant and id,
    so the same warehouse gives the same rows."""
    ensure_table(con, "interactions")
    ensure_table(con, "interaction_quality")
    cols = ", ".join(f"i.{c}" for c in GOOD_INTERACTION_COLUMNS if c != "quality_score")
    sql = (f"SELECT {cols}, q.quality_score FROM interactions i "
           "LEFT JOIN interaction_quality q USING (tenant_id, interaction_id) "
           "WHERE i.corrected_response IS NULL AND length(trim(coalesce(i.response, ''))) > 0 "
           "AND coalesce(i.feedback_thumbs, '') <> 'down' "
           "AND (i.feedback_thumbs = 'up' OR i.feedback_rating >= 4 OR q.quality_score >= ?)")
    if exclude:
        con.register("_excluded", key_table(exclude))
        sql += " AND NOT EXISTS (SELECT 1 FROM _excluded x WHERE x.tenant_id = i.tenant_id " \
               "AND x.interaction_id = i.interaction_id)"
    try:
        return query(con, sql + " ORDER BY i.tenant_id, i.interaction_id", [min_quality])
    finally:
        if exclude:
            con.unregister("_excluded")

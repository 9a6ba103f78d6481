"""The warehouse reads and writes of the audit and teaching stages beyond plain table writes
(``ml.warehouse``, layouts from ``ml.tables``): each run's candidates, the selection's input, the
reference population of the rules auditor, and the queries of the stages' asset checks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import date, datetime

import duckdb
import polars as pl

from ml import warehouse
from ml.audit.rules import ConsensusCounts, RuleThresholds


# ---- audit_candidates: each run's selection, tagged with the run id ---------------------------------
def ensure_candidates_table(con: duckdb.DuckDBPyConnection) -> None:
    """``audit_candidates`` with every column of ``CANDIDATE_COLUMNS`` (a warehouse created before
    ``run_id`` existed gets the column; its old rows have run_id NULL and are pruned)."""
    warehouse.ensure_table(con, "audit_candidates")


def write_run_candidates(con: duckdb.DuckDBPyConnection, run_id: str, candidates: pl.DataFrame, *,
                         prune_before: datetime) -> int:
    """Replace this run's rows of ``audit_candidates`` with ``candidates`` (one transaction);
    other runs' rows stay unless selected before ``prune_before`` (or untagged)."""
    ensure_candidates_table(con)
    return warehouse.write_frame(
        con, "audit_candidates", candidates,
        delete_where="run_id = ? OR run_id IS NULL OR selected_at < ?",
        params=[run_id, prune_before])


def read_run_candidates(con: duckdb.DuckDBPyConnection, run_id: str) -> pl.DataFrame:
    """The candidates the run ``run_id`` selected (and only those)."""
    ensure_candidates_table(con)
    return warehouse.query(con, "SELECT * FROM audit_candidates WHERE run_id = ? "
                      "ORDER BY selected_at, interaction_id", [run_id])


# ---- reads of the interactions the audit works on ---------------------------------------------------
_SELECTION_INPUT = ("interaction_id", "tenant_id", "session_id", "ts", "partition_date",
                    "feedback_thumbs", "feedback_rating", "requested_human", "corrected_response",
                    "conversation_rating")


def read_interactions_for_selection(con: duckdb.DuckDBPyConnection,
                                    days: tuple[date, date] | None = None) -> pl.DataFrame:
    """The columns candidate selection reads, with each interaction's quality score (of the
    landing days ``days`` = (first, last) only, when given)."""
    warehouse.ensure_table(con, "interactions")  # adds columns a newer registry has
    warehouse.ensure_table(con, "interaction_quality")
    cols = ", ".join(f"i.{c}" for c in _SELECTION_INPUT)
    return warehouse.query(
        con,
        f"SELECT {cols}, q.quality_score FROM interactions i "
        "LEFT JOIN interaction_quality q USING (tenant_id, interaction_id) "
        + ("WHERE i.partition_date BETWEEN ? AND ? " if days is not None else "")
        + "ORDER BY i.ts, i.tenant_id, i.interaction_id",
        list(days) if days is not None else None,
    )


# the inputs of the scheduled selection's decision (besides its settings): a change of any
# (late feedback, a quality score computed or recomputed) makes a passed-over interaction new again
PASSED_OVER = "audit_passed_over"
_INPUTS_HASH = ("(hash(i.feedback_thumbs, i.feedback_rating, i.requested_human, "
                "i.corrected_response IS NULL, i.conversation_rating, q.quality_score) >> 1)"
                "::BIGINT")
# the scheduled selection's new work: no verdict of the auditor and prompt version, and not
# passed over by the selection with the same inputs, unless a failed attempt is to be retried
_NEW_WORK = (
    "FROM interactions i LEFT JOIN interaction_quality q USING (tenant_id, interaction_id) "
    "WHERE NOT EXISTS (SELECT 1 FROM audited_errors a WHERE a.tenant_id = i.tenant_id "
    "  AND a.interaction_id = i.interaction_id AND a.auditor = ? "
    "  AND a.prompt_version = ?) "
    f"AND (NOT EXISTS (SELECT 1 FROM {PASSED_OVER} p WHERE p.selection = ? "
    "  AND p.tenant_id = i.tenant_id AND p.interaction_id = i.interaction_id "
    f"  AND p.inputs_hash = {_INPUTS_HASH}) "
    "  OR EXISTS (SELECT 1 FROM _retry r WHERE r.tenant_id = i.tenant_id "
    "  AND r.interaction_id = i.interaction_id)) ")


def _new_work(con: duckdb.DuckDBPyConnection, select: str, tail: str, params: list,
              retry_keys: Sequence[tuple[str, str]], *, read_only: bool = False) -> pl.DataFrame:
    for name in ("interactions", "interaction_quality", "audited_errors", PASSED_OVER):
        (warehouse.ensure_readable if read_only else warehouse.ensure_table)(con, name)
    con.register("_retry", warehouse.key_table(retry_keys))
    try:
        return warehouse.query(con, f"SELECT {select} {_NEW_WORK} {tail}", params)
    finally:
        con.unregister("_retry")


def read_selection_pool(con: duckdb.DuckDBPyConnection, *, auditor: str, prompt_version: str,
                        selection: str, retry_keys: Sequence[tuple[str, str]] = (),
                        days: tuple[date, date] | None = None) -> pl.DataFrame:
    """The scheduled selection's input (the columns of :func:`read_interactions_for_selection`
    and ``inputs_hash``): the interactions without a verdict of ``auditor`` and
    ``prompt_version`` in ``audited_errors`` that the selection ``selection`` has not passed over
    with the same inputs (:func:`write_passed_over`), plus ``retry_keys`` ((tenant_id,
    interaction_id) of failed attempts); of the landing days ``days`` = (first, last) only,
    when given (a partition, or a range of them, of the audit). Anti-joins in DuckDB: what
    reaches Python is the new work, not the history."""
    cols = ", ".join(f"i.{c}" for c in _SELECTION_INPUT)
    return _new_work(
        con, f"{cols}, q.quality_score, {_INPUTS_HASH} AS inputs_hash",
        ("AND i.partition_date BETWEEN ? AND ? " if days is not None else "")
        + "ORDER BY i.ts, i.tenant_id, i.interaction_id",
        [auditor, prompt_version, selection] + (list(days) if days is not None else []),
        retry_keys)


def new_work_by_day(con: duckdb.DuckDBPyConnection, *, auditor: str, prompt_version: str,
                    selection: str, retry_keys: Sequence[tuple[str, str]] = ()
                    ) -> dict[str, int]:
    """Landing day ("YYYY-MM-DD") -> interactions of that day in the scheduled selection's input
    (:func:`read_selection_pool`): the days a partitioned audit has work on. One grouped scan
    with the same anti-joins; days with none are absent. Writes nothing (a sensor reads it on a
    read-only connection; tables not created yet read as empty)."""
    frame = _new_work(con, "strftime(i.partition_date, '%Y-%m-%d') AS day, count(*) AS n",
                      "AND i.partition_date IS NOT NULL GROUP BY 1 ORDER BY 1",
                      [auditor, prompt_version, selection], retry_keys, read_only=True)
    return {d: int(n) for d, n in frame.iter_rows()}


def write_passed_over(con: duckdb.DuckDBPyConnection, selection: str, pool: pl.DataFrame,
                      keep: pl.DataFrame, *, now: datetime) -> int:
    """Record the rows of ``pool`` (:func:`read_selection_pool`) not in ``keep`` (the
    candidates, and the interactions with a failed attempt) as passed over by ``selection``
    with their ``inputs_hash``; returns how many."""
    key = ["tenant_id", "interaction_id"]
    passed = pool.select(*key, "inputs_hash")
    if keep.height:
        passed = passed.join(keep.select(key).cast(pl.String), on=key, how="anti")
    frame = passed.select(pl.lit(selection).alias("selection"), *key, "inputs_hash",
                          pl.lit(now, dtype=pl.Datetime("us")).alias("seen_at"))
    return warehouse.upsert_rows(con, PASSED_OVER, frame)


def interaction_chunks(con: duckdb.DuckDBPyConnection, keys: Sequence[tuple[str, str]],
                       chunk: int) -> Iterator[tuple[int, pl.DataFrame]]:
    """Every column of the interactions ``keys`` with their quality score, ``chunk`` keys per
    query (one scan of ``interactions`` per chunk, not per audit batch): yields (offset of the
    chunk's first key, rows) with ``_pos``, the key's position in ``keys`` (a key not in the
    warehouse has no row)."""
    if chunk < 1:
        raise ValueError(f"interaction_chunks: chunk must be at least 1, got {chunk}")
    warehouse.ensure_table(con, "interactions")
    warehouse.ensure_table(con, "interaction_quality")
    for start in range(0, len(keys), chunk):
        part = keys[start:start + chunk]
        ids = pl.DataFrame(list(part), schema={"tenant_id": pl.String,
                                               "interaction_id": pl.String}, orient="row")
        ids = ids.with_row_index("_pos", offset=start).with_columns(pl.col("_pos").cast(pl.Int64))
        con.register("_keys", ids.to_arrow())
        try:
            yield start, warehouse.query(
                con,
                "SELECT i.*, q.quality_score, k._pos FROM interactions i "
                "JOIN _keys k USING (tenant_id, interaction_id) "
                "LEFT JOIN interaction_quality q USING (tenant_id, interaction_id) "
                "ORDER BY k._pos")
        finally:
            con.unregister("_keys")


def rows_of_batch(rows: pl.DataFrame, start: int, stop: int) -> pl.DataFrame:
    """The rows of :func:`interaction_chunks` whose key is at positions [start, stop), in time
    order (as ``ml.warehouse.read_interactions`` returns them), without ``_pos``."""
    return (rows.filter((pl.col("_pos") >= start) & (pl.col("_pos") < stop)).drop("_pos")
            .sort("ts", "tenant_id", "interaction_id", nulls_last=True, maintain_order=True))


REFERENCE_COLUMNS = ("tenant_id", "user_message", "response")


def reference_consensus(con: duckdb.DuckDBPyConnection, thresholds: RuleThresholds, *,
                        batch_rows: int = 200_000) -> tuple[pl.DataFrame, int]:
    """The rules auditor's consensus over every interaction of the warehouse (the population a
    reply is compared with: ``ml.audit.rules.ConsensusCounts``), read ``batch_rows`` rows at a
    time: memory holds one batch of texts and the hashed counts, not the history's replies.
    Returns (consensus frame, interactions counted)."""
    counts = ConsensusCounts()
    for batch in warehouse.iter_table(con, "interactions", columns=REFERENCE_COLUMNS,
                                      batch_rows=batch_rows):
        counts.add(batch)
    return counts.consensus(thresholds), counts.rows


# ---- the asset checks' queries: each returns problem -> rows with it (0 everywhere = passed) ---
def _count(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> int:
    return int(con.execute(sql, params or []).fetchone()[0])


def candidate_problems(con: duckdb.DuckDBPyConnection, reasons: Sequence[str]) -> dict[str, int]:
    """``audit_candidates``: rows with no reason or a reason not in ``reasons``, and interactions
    selected twice by one run."""
    ensure_candidates_table(con)
    known = list(reasons)
    return {
        "no_reason": _count(con, "SELECT count(*) FROM audit_candidates "
                                 "WHERE reasons IS NULL OR len(reasons) = 0"),
        "unknown_reason": _count(con, "SELECT count(*) FROM audit_candidates "
                                      "WHERE NOT list_has_all(?, reasons)", [known]),
        "selected_twice_by_a_run": _count(con, "SELECT count(*) FROM (SELECT run_id, tenant_id, "
                                               "interaction_id FROM audit_candidates GROUP BY ALL "
                                               "HAVING count(*) > 1)"),
    }


def verdict_problems(con: duckdb.DuckDBPyConnection, categories: Sequence[str],
                     severities: Sequence[str]) -> dict[str, int]:
    """``audited_errors``: an error without a known category and severity, a clean verdict with
    either, a confidence outside [0, 1], a verdict twice for one (interaction, auditor, prompt)."""
    warehouse.ensure_table(con, "audited_errors")
    return {
        "error_without_known_category": _count(
            con, "SELECT count(*) FROM audited_errors WHERE is_error AND "
                 "(category IS NULL OR NOT list_contains(?, category))", [list(categories)]),
        "error_without_known_severity": _count(
            con, "SELECT count(*) FROM audited_errors WHERE is_error AND "
                 "(severity IS NULL OR NOT list_contains(?, severity))", [list(severities)]),
        "clean_verdict_with_category_or_severity": _count(
            con, "SELECT count(*) FROM audited_errors WHERE NOT is_error AND "
                 "(category IS NOT NULL OR severity IS NOT NULL)"),
        "is_error_missing": _count(con, "SELECT count(*) FROM audited_errors WHERE is_error IS NULL"),
        "confidence_out_of_range": _count(
            con, "SELECT count(*) FROM audited_errors WHERE confidence < 0 OR confidence > 1 "
                 "OR confidence IS NULL"),
        "duplicate_verdicts": _count(
            con, "SELECT count(*) FROM (SELECT tenant_id, interaction_id, auditor, prompt_version "
                 "FROM audited_errors GROUP BY ALL HAVING count(*) > 1)"),
    }


def preference_problems(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """``preference_pairs``: an empty chosen or rejected reply, a pair whose two replies are the
    same, a sample item in two pairs."""
    warehouse.ensure_table(con, "preference_pairs")
    return {
        "empty_reply": _count(con, "SELECT count(*) FROM preference_pairs WHERE "
                                   "coalesce(trim(chosen), '') = '' OR rejected IS NULL"),
        "chosen_equals_rejected": _count(con, "SELECT count(*) FROM preference_pairs "
                                              "WHERE trim(chosen) = trim(rejected)"),
        "sample_item_twice": _count(con, "SELECT count(*) FROM (SELECT sample_item_id FROM "
                                         "preference_pairs GROUP BY 1 HAVING count(*) > 1)"),
    }

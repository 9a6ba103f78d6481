"""Warehouse tables of the audit and teaching stages, and the two ways they are written.

* ``replace_table``: the whole table is the current state (``audit_candidates``,
  ``preference_pairs``); rewritten in one transaction.
* ``upsert_rows``: rows keyed by columns (``audited_errors`` on interaction_id, auditor,
  prompt_version); a re-audit replaces its rows, never duplicates them.

Also the reads the audit makes: each run's candidates, the selection's input, the reference
population of the rules auditor.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import duckdb
import polars as pl

from ml import warehouse
from ml.audit.candidates import CANDIDATE_COLUMNS
from ml.audit.taxonomy import AUDITED_COLUMNS

PREFERENCE_COLUMNS: dict[str, str] = {
    "sample_item_id": "BIGINT",
    "error_item_id": "BIGINT",
    "interaction_id": "VARCHAR",
    "tenant_id": "VARCHAR",
    "prompt": "VARCHAR",  # the last user message
    "messages": "VARCHAR",  # JSON list of {role, content}: the context of the reply
    "chosen": "VARCHAR",  # the approved / edited reply
    "rejected": "VARCHAR",  # the assistant's original reply
    "source": "VARCHAR",  # who proposed the chosen reply: human_agent | retrieval | llm:<p>
    "status": "VARCHAR",  # approved | edited
    "category": "VARCHAR",
    "decided_by": "VARCHAR",
    "decided_at": "TIMESTAMP",
}

AUDIT_TABLES: dict[str, dict[str, str]] = {
    "audit_candidates": CANDIDATE_COLUMNS,
    "audited_errors": AUDITED_COLUMNS,
    "preference_pairs": PREFERENCE_COLUMNS,
}


def ensure(con: duckdb.DuckDBPyConnection, name: str) -> None:
    warehouse.ensure_table(con, name, AUDIT_TABLES[name])


def replace_table(con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame) -> int:
    """Make ``frame`` the whole content of table ``name`` (atomically)."""
    return warehouse.replace_table(con, name, frame, AUDIT_TABLES[name])


def upsert_rows(con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame,
                keys: Sequence[str]) -> int:
    """Replace the rows of ``name`` whose ``keys`` match a row of ``frame``, then insert ``frame``."""
    return warehouse.upsert_rows(con, name, frame, tuple(keys), AUDIT_TABLES[name])


table_exists = warehouse.table_exists
query = warehouse.query


# ---- audit_candidates: each run's selection, tagged with the run id ---------------------------------
def ensure_candidates_table(con: duckdb.DuckDBPyConnection) -> None:
    """``audit_candidates`` with every column of ``CANDIDATE_COLUMNS`` (a warehouse created before
    ``run_id`` existed gets the column; its old rows have run_id NULL and are pruned)."""
    ensure(con, "audit_candidates")


def write_run_candidates(con: duckdb.DuckDBPyConnection, run_id: str, candidates: pl.DataFrame, *,
                         prune_before: datetime) -> int:
    """Replace this run's rows of ``audit_candidates`` with ``candidates`` (one transaction);
    other runs' rows stay unless selected before ``prune_before`` (or untagged)."""
    ensure_candidates_table(con)
    return warehouse.write_frame(
        con, "audit_candidates", candidates, columns=AUDIT_TABLES["audit_candidates"],
        delete_where="run_id = ? OR run_id IS NULL OR selected_at < ?",
        params=[run_id, prune_before])


def read_run_candidates(con: duckdb.DuckDBPyConnection, run_id: str) -> pl.DataFrame:
    """The candidates the run ``run_id`` selected (and only those)."""
    ensure_candidates_table(con)
    return query(con, "SELECT * FROM audit_candidates WHERE run_id = ? "
                      "ORDER BY selected_at, interaction_id", [run_id])


# ---- reads of the interactions the audit works on ---------------------------------------------------
_SELECTION_INPUT = ("interaction_id", "tenant_id", "session_id", "ts", "partition_date",
                    "feedback_thumbs", "feedback_rating", "requested_human", "corrected_response")


def read_interactions_for_selection(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """The columns candidate selection reads, with each interaction's quality score."""
    warehouse.ensure_table(con, "interactions")
    warehouse.ensure_table(con, "interaction_quality")
    cols = ", ".join(f"i.{c}" for c in _SELECTION_INPUT)
    return query(
        con,
        f"SELECT {cols}, q.quality_score FROM interactions i "
        "LEFT JOIN interaction_quality q USING (interaction_id) ORDER BY i.ts, i.interaction_id"
    )


def read_reference_population(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """(tenant_id, user_message, response) of every interaction: the population the rules
    auditor's consensus signals compare a reply with."""
    warehouse.ensure_table(con, "interactions")
    return query(con, "SELECT tenant_id, user_message, response FROM interactions")
